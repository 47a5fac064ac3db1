"""Goyal et al.'s fixed-point bit-width search: python training/search_fixed_point.py --config configs/fxp_demo.yaml

Loads the float baseline (the config's `baseline`, default runs/baseline/model.pt), folds BatchNorm into the convs,
runs qcnn.search.fixed_point on the validation split with the config's `search:` section (FixedPointSearchConfig;
the rest of the file is a RunConfig), applies the plan, evaluates the float and the quantized model on the test
split once, at the end, and writes runs/<name>/{config.yaml, plan.json, summary.json, model.pt}. Prints the
per-layer table. model.pt is the state dict of plan.apply(qcnn.fold_batchnorm(model)): rebuild that model, then
load it.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path


import torch
import yaml

import qcnn
from qcnn import atomic, config as qconfig, engine
from qcnn.data import build_loaders
from qcnn.search.fixed_point_search import FixedPointPlan, FixedPointSearchConfig, fixed_point

from .retrain import load_baseline
from .train import run_script


def relative_drop(reference: float, value: float) -> float:
    return (reference - value) / reference if reference else float("nan")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="YAML config: a run config plus a `search:` section")
    p.add_argument("--quiet", action="store_true", help="no per-layer progress lines")
    args = p.parse_args(argv)
    cfg, search_cfg = qconfig.load_with_search(args.config, FixedPointSearchConfig)
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    engine.seed_everything(cfg.training.seed)
    splits = build_loaders(cfg.data)
    model, source = load_baseline(cfg, "search_fixed_point.py")
    folded = qcnn.fold_batchnorm(model)
    run_dir = cfg.run_dir  # made before the search, so that an unwritable out_dir costs no search time
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(run_dir)
    atomic.write_file(run_dir / "config.yaml", yaml.safe_dump({**cfg.to_dict(), "search": search_cfg.to_dict()},
                                                              sort_keys=False))

    t0 = time.perf_counter()
    plan = fixed_point(folded, splits.val, log=None if args.quiet else print, **search_cfg.to_dict())
    search_seconds = time.perf_counter() - t0
    quantized = plan.apply(copy.deepcopy(folded))
    float_val, val = engine.evaluate(folded, splits.val), engine.evaluate(quantized, splits.val)

    # The test split, once, after every choice is made.
    float_test, test = engine.evaluate(folded, splits.test), engine.evaluate(quantized, splits.test)

    input_shape = tuple(next(iter(splits.val))[0].shape[1:])
    costs = qcnn.analysis.cost(quantized, input_shape).total
    plan_costs = plan.cost()
    stats = plan.stats
    summary = {
        "name": cfg.name, "kind": "fixed_point", "model": cfg.model.name, "model_kwargs": cfg.model.kwargs,
        "baseline": str(source), "search": search_cfg.to_dict(),
        "float_val_acc": float_val["acc"], "val_acc": val["acc"],
        "val_relative_drop": relative_drop(float_val["acc"], val["acc"]),
        "float_test_acc": float_test["acc"], "test_acc": test["acc"],
        "test_relative_drop": relative_drop(float_test["acc"], test["acc"]),
        "float_val_f1": float_val.get("f1"), "val_f1": val.get("f1"),
        "float_test_f1": float_test.get("f1"), "test_f1": test.get("f1"),
        "search_val_images": stats["val_images"], "search_val_acc": stats["val_acc_quantized"],
        "start_bits": stats["start_bits"],
        "memory_bits": costs["memory_bits"], "int8_memory_bits": costs["int8_memory_bits"],
        "memory_saved_vs_int8_pct": costs["memory_saved_vs_int8_pct"],
        "mult_cost": costs["goyal_mult_cost"], "int8_mult_cost": costs["int8_mult_cost"],
        "mult_cost_saved_vs_int8_pct": costs["mult_cost_saved_vs_int8_pct"],
        "bops": costs["bops"], "speedup_vs_int8": costs["speedup_vs_int8"],
        "plan_cost": plan_costs,
        "search_seconds": search_seconds, "candidates_evaluated": stats["candidates_evaluated"],
        "candidates_stopped_early": stats["candidates_stopped_early"],
        "evaluations_from_prefix_cache": stats["evaluations_from_prefix_cache"], "prefix_cache": stats["prefix_cache"],
        "threads": torch.get_num_threads(), "torch": torch.__version__, "qcnn": qcnn.__version__,
        "layers": [layer.to_dict() for layer in plan.layers],
    }
    atomic.write_file(run_dir / "plan.json", json.dumps(plan.to_dict(), indent=2))
    atomic.write_file(run_dir / "summary.json", json.dumps(summary, indent=2))
    engine.atomic_save(quantized.state_dict(), run_dir / "model.pt")
    print(plan.table())
    print(format_summary(summary))
    print(f"[{cfg.name}] -> {run_dir}", flush=True)
    return summary


def format_summary(s: dict) -> str:
    return "\n".join([
        f"val  (search split, {s['search_val_images']} images): float {s['float_val_acc']:.2f}% -> fixed point "
        f"{s['val_acc']:.2f}% ({100 * s['val_relative_drop']:.2f}% relative loss)",
        f"test (read once): float {s['float_test_acc']:.2f}% -> fixed point {s['test_acc']:.2f}% "
        f"({100 * s['test_relative_drop']:.2f}% relative loss)",
        f"memory {s['memory_bits']} bits vs {s['int8_memory_bits']} at 8 bits ({s['memory_saved_vs_int8_pct']:.1f}% "
        f"saved); multiplication cost {s['mult_cost']} vs {s['int8_mult_cost']} "
        f"({s['mult_cost_saved_vs_int8_pct']:.1f}% saved)",
        f"search {s['search_seconds']:.1f} s on {s['threads']} threads, {s['candidates_evaluated']} candidates "
        f"({s['candidates_stopped_early']} stopped early, {s['evaluations_from_prefix_cache']} from the prefix cache), "
        f"start {s['start_bits']} bits",
    ])


def load_plan(path: Path) -> FixedPointPlan:
    """The plan a run wrote (runs/<name>/plan.json)."""
    return FixedPointPlan.from_dict(json.loads(Path(path).read_text()))


if __name__ == "__main__":
    run_script(main)
