"""Accumulator-constrained quantization (de Bruin et al. 2020; A2Q): python training/search_accumulator.py --config configs/acc16_demo.yaml [--resume]

Loads the float baseline (the config's `baseline`, default runs/baseline/model.pt), solves per-layer input and
weight bit widths for a P-bit accumulator with qcnn.search.accumulator (the `search:` section,
AccumulatorSearchConfig; the config's `quant:` section is the base: uniform symmetric weights, activation
method), installs them with the L1 constraint (every layer's weight quantizer gets accumulator_bits = P),
calibrates and fine-tunes with qcnn.retrain.run (the `retrain:` section says how long; selection on the
validation split), checks the bound on the fine-tuned integers, evaluates the float and the quantized model on
the test split once, at the end, exports runs/<name>/model.qcnn (each conv/linear node declares
accumulator_bits; the exporter re-proves the bound) and runs it with the integer engine on the test split.

Writes runs/<name>/{config.yaml (the resolved run config, its quant section the plan's), plan.json (with the
`search:` section), summary.json, model.pt, model.qcnn, rounds.jsonl, accuracy.png, histogram.png} and prints the
table. training/deploy.py --run runs/<name> rebuilds the model from config.yaml and model.pt. The fine-tuning
writes runs/<name>/checkpoint.pt after each epoch; --resume continues an interrupted one (the search, deterministic,
is solved again).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


import torch

import qcnn
from qcnn import atomic, config as qconfig, engine, models, retrain
from qcnn.data import build_loaders
from qcnn.search.accumulator_search import (AccumulatorPlan, AccumulatorSearchConfig, accumulator,
                                           accumulator_report, base_quant_config)

from .retrain import load_baseline
from .train import add_resume_options, check_resume_options, run_script

OVERFLOW_CHECK_IMAGES = 200


def check_base_quant(cfg: qconfig.RunConfig, search_cfg: AccumulatorSearchConfig) -> None:
    if cfg.quant is not None:
        base_quant_config(cfg.quant)


def engine_check(path: Path, test_loader) -> dict:
    """Runs the exported file with the integer engine on the test split's pixels (accuracy, F1) and, in the
    engine's checked path, counts accumulations outside the declared widths on the first test images."""
    pixels, labels = test_loader.images.unsqueeze(1), test_loader.labels
    runtime = qcnn.load(path)
    pred = torch.cat([runtime(chunk) for chunk in pixels.split(1000)]).argmax(1)
    checked = qcnn.load(path, count_overflows=True)
    sample = pixels[:OVERFLOW_CHECK_IMAGES]
    return {"engine_test_acc": 100.0 * float((pred == labels).double().mean()),
            "engine_test_f1": engine.macro_f1(pred, labels),
            "overflow_check_images": int(sample.shape[0]), "overflows": int(checked.count_overflows(sample))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="YAML config: a run config plus a `search:` section")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    add_resume_options(p)
    args = p.parse_args(argv)
    check_resume_options(p, args)
    cfg, search_cfg = qconfig.load_with_search(args.config, AccumulatorSearchConfig, check=check_base_quant)
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    engine.seed_everything(cfg.training.seed)
    splits = build_loaders(cfg.data)
    float_model, source = load_baseline(cfg, "search_accumulator.py")
    model = models.create(cfg.model.name, **cfg.model.kwargs)
    model.load_state_dict(float_model.state_dict())
    float_val = engine.evaluate(float_model, splits.val)

    plan = accumulator(model, quant=cfg.quant, **search_cfg.to_dict())
    print(plan.table(), flush=True)
    cfg = cfg.replace(quant=plan.quant_config())
    plan.apply(model)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    # retrain.run writes config.yaml, a plain run config (deploy.py reads it); `search` is in plan.json
    atomic.write_file(run_dir / "plan.json", json.dumps({**plan.to_dict(), "search": search_cfg.to_dict()}, indent=2))

    t0 = time.perf_counter()
    result = retrain.run(model, cfg, splits.train, splits.val, resume=args.resume,
                         stop_after_epochs=args.stop_after_epochs, progress=not args.no_progress)
    retrain_seconds = time.perf_counter() - t0
    if not result["finished"]:
        return {"finished": False}
    model.eval()
    bound_check = accumulator_report(model)
    if not all(row["holds"] for row in bound_check):
        raise RuntimeError(f"search_accumulator.py: the accumulator bound fails after fine-tuning: {bound_check}")
    rounds = result["rounds"]
    best = rounds[result["best_round"]]

    # The test split, once, after every choice is made.
    float_test, test = engine.evaluate(float_model, splits.test), engine.evaluate(model, splits.test)

    engine.atomic_save(model.state_dict(), run_dir / "model.pt")
    report = qcnn.export(model, run_dir / "model.qcnn", verbose=False)
    deployed = engine_check(run_dir / "model.qcnn", splits.test)
    summary = {
        "name": cfg.name, "kind": "accumulator", "model": cfg.model.name, "model_kwargs": cfg.model.kwargs,
        "baseline": str(source), "search": search_cfg.to_dict(), "acc_bits": plan.acc_bits,
        "bits": {name: {"act_bits": bx, "weight_bits": bw} for name, (bx, bw) in plan.bits.items()},
        "float_val_acc": float_val["acc"], "float_val_f1": float_val["f1"],
        "val_acc": best["val_acc"], "val_f1": best["val_f1"], "rounds": len(rounds), "best_round": result["best_round"],
        "float_test_acc": float_test["acc"], "float_test_f1": float_test["f1"],
        "test_acc": test["acc"], "test_f1": test["f1"],
        "test_acc_drop_points": float_test["acc"] - test["acc"],
        **deployed, "file_bytes": report.file_bytes,
        "bound_check": bound_check, "layers": [layer.to_dict() for layer in plan.layers], "table": plan.table(),
        "retrain_seconds": retrain_seconds, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "qcnn": qcnn.__version__,
    }
    atomic.write_file(run_dir / "summary.json", json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"[{cfg.name}] -> {run_dir}", flush=True)
    return summary


def format_summary(s: dict) -> str:
    return "\n".join([
        f"P = {s['acc_bits']}: val {s['val_acc']:.2f}% (float {s['float_val_acc']:.2f}%)",
        f"test (read once): float {s['float_test_acc']:.2f}% (F1 {s['float_test_f1']:.2f}) -> quantized "
        f"{s['test_acc']:.2f}% (F1 {s['test_f1']:.2f}), {s['test_acc_drop_points']:.2f} points",
        f"integer engine: test {s['engine_test_acc']:.2f}% (F1 {s['engine_test_f1']:.2f}); "
        f"{s['overflows']} accumulator overflows on {s['overflow_check_images']} test images; "
        f"fine-tuning {s['retrain_seconds']:.0f} s",
    ])


def load_plan(path: Path) -> AccumulatorPlan:
    """The plan a run wrote (runs/<name>/plan.json)."""
    doc = json.loads(Path(path).read_text())
    doc.pop("search", None)
    return AccumulatorPlan.from_dict(doc)


if __name__ == "__main__":
    run_script(main)
