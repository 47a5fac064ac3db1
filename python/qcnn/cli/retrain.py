"""Quantize a float model and retrain it: python training/retrain.py --config configs/w3_kmeans.yaml [--resume].

Loads the float baseline (cfg.baseline, default runs/baseline/model.pt), applies qcnn.quantize_ with cfg.quant,
runs Ji et al.'s loop (qcnn.retrain.run) and writes runs/<name>/{config.yaml, rounds.jsonl, accuracy.png,
histogram.png, model.pt, summary.json}. The test set is evaluated once, at the end. Runs under
`torchrun --nproc_per_node=N` (DistributedDataParallel; rank 0 writes the files).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path


import torch

import qcnn
from qcnn import atomic, config as qconfig, engine, models, retrain
from qcnn.data import build_loaders

from . import train as train_script


def baseline_path(cfg: qconfig.RunConfig) -> Path:
    return Path(cfg.baseline) if cfg.baseline else Path(cfg.out_dir) / "baseline" / "model.pt"


def load_baseline(cfg: qconfig.RunConfig, script: str) -> tuple[torch.nn.Module, Path]:
    """The config's float model with the baseline's weights (on the CPU) and the file they came from; a missing
    baseline stops `script` with a message that says how to make one."""
    source = baseline_path(cfg)
    if not source.is_file():
        raise SystemExit(f"{script}: float baseline {source} not found; train it with training/train.py "
                         "or set 'baseline' in the config")
    check_baseline_split(cfg, source, script)
    model = models.create(cfg.model.name, **cfg.model.kwargs)
    try:  # a hostile or truncated file raises anything from the unpickler
        state = torch.load(source, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:
        raise SystemExit(f"{script}: float baseline {source} is not a state dict of model {cfg.model.name!r} "
                         f"({engine.describe_load_error(err)})") from err
    return model, source


def check_baseline_split(cfg: qconfig.RunConfig, source: Path, script: str) -> None:
    """Stops `script` when the baseline's run (its config.yaml beside model.pt, where there is one) drew its
    validation split differently: the validation images, on which every selection is made, would then include
    images the baseline was trained on. Safe: the same data.seed and a data.val_size no larger than the
    baseline's (train_val_indices takes the first val_size of one permutation)."""
    saved_path = source.parent / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = qconfig.DataConfig.from_dict(qconfig.read_mapping(saved_path).get("data"), "data")
    except qconfig.ConfigError as err:
        raise SystemExit(f"{script}: cannot read the float baseline's config {saved_path}: {err}") from err
    if saved.seed != cfg.data.seed or cfg.data.val_size > saved.val_size:
        raise SystemExit(f"{script}: the float baseline {source} was trained with data.val_size={saved.val_size}, "
                         f"data.seed={saved.seed} ({saved_path}); this config's data.val_size={cfg.data.val_size}, "
                         f"data.seed={cfg.data.seed} would validate on images the baseline was trained on. Use "
                         "the baseline's seed and a val_size no larger than its own, or retrain the baseline")


def main(argv=None, cfg: qconfig.RunConfig | None = None) -> dict:
    args = train_script.parse_args(argv, __doc__)
    cfg = cfg or qconfig.load(args.config)
    if cfg.quant is None:
        raise SystemExit(f"retrain.py: {args.config}: the config has no 'quant' section")
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    rank, world, device = engine.setup_distributed(args.device)
    engine.seed_everything(cfg.training.seed)
    splits = build_loaders(cfg.data, rank, world)
    model, source = load_baseline(cfg, "retrain.py")
    model.to(device)
    float_val = engine.evaluate(model, splits.val)
    float_model = copy.deepcopy(model)
    qcnn.quantize_(model, cfg.quant)
    run_dir = cfg.run_dir
    t0 = time.perf_counter()
    result = retrain.run(model, cfg, splits.train, splits.val, resume=args.resume,
                         stop_after_epochs=args.stop_after_epochs, progress=not args.no_progress)
    if not result["finished"]:
        return {"finished": False}
    test = engine.evaluate(model, splits.test)
    folded_test = engine.evaluate(qcnn.fold_batchnorm(model), splits.test)
    float_scores = engine.evaluate(float_model, splits.test)  # the same test images as the quantized model's
    float_test, float_test_f1 = float_scores["acc"], float_scores["f1"]
    rounds = result["rounds"]
    summary = {
        "name": cfg.name, "kind": "quantized", "model": cfg.model.name, "baseline": str(source),
        "quant": cfg.quant.to_dict(), "incremental": cfg.retrain.incremental,
        "rounds": len(rounds), "best_round": result["best_round"],
        "float_val_acc": float_val["acc"], "float_val_f1": float_val["f1"],
        "float_test_acc": float_test, "float_test_f1": float_test_f1,
        "val_acc": rounds[result["best_round"]]["val_acc"], "val_f1": rounds[result["best_round"]]["val_f1"],
        "quant_test_acc": test["acc"], "quant_test_f1": test["f1"], "test_acc": test["acc"], "test_f1": test["f1"],
        "folded_test_acc": folded_test["acc"], "folded_test_f1": folded_test["f1"],
        "round_table": [{k: r[k] for k in ("round", "val_acc_before", "val_f1_before", "val_acc", "val_f1",
                                           "val_loss", "change_fraction")}
                        for r in rounds],
        "retrain_seconds": time.perf_counter() - t0, "world_size": world, "torch": torch.__version__,
    }
    if engine.is_main():
        engine.atomic_save(model.state_dict(), run_dir / "model.pt")
        atomic.write_file(run_dir / "summary.json", json.dumps(summary, indent=2))
        print(format_rounds(rounds))
        print(f"[{cfg.name}] float test acc {float_test:.2f}%, "
              f"quantized test acc {test['acc']:.2f}% (F1 {test['f1']:.2f}; BN folded: {folded_test['acc']:.2f}%) "
              f"-> {run_dir}", flush=True)
    return summary


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_rounds(rounds: list[dict]) -> str:
    lines = ["| round | val acc after refit | val F1 after refit | val acc after retraining | val F1 after retraining "
             "| val loss | cluster change |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rounds:
        change = "-" if r["change_fraction"] is None else f"{r['change_fraction']:.4f}"
        lines.append(f"| {r['round']} | {r['val_acc_before']:.2f} | {_pct(r.get('val_f1_before'))} | "
                     f"{r['val_acc']:.2f} | "
                     f"{_pct(r.get('val_f1'))} | {r['val_loss']:.4f} | {change} |")
    return "\n".join(lines)


if __name__ == "__main__":
    train_script.run_script(main)
