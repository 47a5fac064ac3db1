"""Where a refit of Ji et al.'s loop loses accuracy: python training/refit_probe.py --run runs/refit_warm.

Starts from the run's kept state (runs/<name>/model.pt, after that round's retraining) and measures validation
accuracy after the next refit: of every layer at once (the next round's "val acc after refit"), of each layer
alone, and of each of those followed by BatchNorm re-estimation over --bn-batches training batches
(retrain.bn_batches). Also the RMS drift of each layer's latent weights from the values it computes with.
Validation split only; writes runs/<name>/refit_probe.json (rendered by training/results.py).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path


import torch
from tqdm import tqdm

from qcnn import atomic, engine, quantize as qz
from qcnn.data import build_loaders

from .deploy import load_quantized
from .train import run_script


def probe(run_dir: Path, bn_batches: int = 16, progress: bool = True) -> dict:
    model, cfg = load_quantized(run_dir)
    engine.seed_everything(cfg.training.seed)
    splits = build_loaders(cfg.data)
    val = lambda m: engine.evaluate(m, splits.val)["acc"]  # noqa: E731

    def refit(names) -> tuple[torch.nn.Module, float | None]:
        trial = copy.deepcopy(model)
        return trial, qz.refit_weights(trial, layers=names)["change_fraction"]

    def after_bn(trial) -> float:
        qz.reestimate_batchnorm(trial, splits.train, bn_batches)
        return val(trial.eval())

    layers = {n: l for n, l in qz.quant_layers(model).items() if l.weight_quant is not None}
    cases = [("all layers", list(layers))] + [(n, [n]) for n in layers]
    rows = []
    for label, names in tqdm(cases, desc="refit probe", disable=not progress):
        trial, change = refit(names)
        rows.append({"refit": label, "change_fraction": change, "val_acc": val(trial.eval()),
                     "val_acc_bn": after_bn(trial)})
    drift = {}
    with torch.no_grad():
        for name, layer in layers.items():
            w = layer.weight.detach()
            q = layer.weight_quant(w)
            drift[name] = {"weights_per_channel": w[0].numel(), "levels": 2 ** cfg.quant.weight.bits,
                           "rms_latent_minus_quantized": float((w - q).pow(2).mean().sqrt()),
                           "rms_weight": float(w.pow(2).mean().sqrt())}
    kept = copy.deepcopy(model)
    result = {"run": run_dir.name, "bn_batches": bn_batches, "kept_val_acc": val(model),
              "kept_val_acc_bn": after_bn(kept), "rows": rows, "drift": drift}
    atomic.write_file(run_dir / "refit_probe.json", json.dumps(result, indent=1))
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a retraining run directory (runs/<name>)")
    parser.add_argument("--bn-batches", type=int, default=16, help="training batches for BatchNorm re-estimation")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.bn_batches < 1:
        parser.error(f"--bn-batches must be >= 1, got {args.bn_batches}")
    for needed in ("config.yaml", "model.pt"):
        if not (args.run / needed).is_file():
            parser.error(f"--run {args.run}: {needed} not found (a finished training/retrain.py run has it)")
    result = probe(args.run, args.bn_batches, progress=not args.no_progress)
    for row in result["rows"]:
        print(f"refit {row['refit']}: val {row['val_acc']:.2f}, with BN re-estimation {row['val_acc_bn']:.2f}")
    return result


if __name__ == "__main__":
    run_script(main)
