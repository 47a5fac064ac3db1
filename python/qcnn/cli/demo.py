"""make demo: a float baseline (configs/baseline.yaml cut to 3 epochs, as runs/demo_baseline; reused when it
matches), then the quantize-retrain loop with 4-bit k-means weights and 8-bit activations (configs/w4_kmeans.yaml,
as runs/demo); prints float vs quantized test accuracy and the per-round table; then exports runs/demo/model.qcnn,
prints its size against float32 and runs it with the integer engine, through qcnn.load and build/qcnn-infer, on
the test set (training/deploy.py: both must give bit-identical logits); writes runs/demo/summary.json.

The 3-epoch baseline keeps a fresh machine's make demo (set-up included) under 15 minutes on 2 cores; the
results in docs/RESULTS.md come from the same configs with the 12-epoch baseline (python training/train.py ...).

--quick: a few hundred images, a narrow net and one epoch per stage, under a temporary --out-dir (for tests).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from qcnn import atomic, config as qconfig
from . import REPO_ROOT as ROOT
from . import deploy as deploy_script
from . import retrain as retrain_script
from . import train as train_script


def quick(cfg: qconfig.RunConfig) -> qconfig.RunConfig:
    data = cfg.data.replace(train_subset=512, val_subset=256, test_subset=256, batch_size=64)
    model = cfg.model.replace(kwargs={**cfg.model.kwargs, "width": 8})
    training = cfg.training.replace(epochs=1)
    retrain = cfg.retrain.replace(max_rounds=2, min_rounds=1)
    return cfg.replace(data=data, model=model, training=training, retrain=retrain)


DEMO_BASELINE_EPOCHS = 3


def baseline_matches(cfg: qconfig.RunConfig) -> bool:
    run_dir = cfg.run_dir
    if not (run_dir / "model.pt").is_file() or not (run_dir / "summary.json").is_file():
        return False
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except OSError:
        return False
    return saved == cfg.to_dict()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny subset run (tests)")
    p.add_argument("--out-dir", default=None, help="runs directory (default: runs)")
    p.add_argument("--baseline-config", type=Path, default=ROOT / "configs" / "baseline.yaml")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "w4_kmeans.yaml")
    p.add_argument("--infer", type=Path, default=deploy_script.DEFAULT_INFER, help="the qcnn-infer binary")
    args = p.parse_args(argv)
    base_cfg, demo_cfg = qconfig.load(args.baseline_config), qconfig.load(args.config)
    base_cfg = base_cfg.replace(name="demo_baseline", training=base_cfg.training.replace(epochs=DEMO_BASELINE_EPOCHS))
    demo_cfg = demo_cfg.replace(name="demo")
    if args.quick:
        base_cfg, demo_cfg = quick(base_cfg), quick(demo_cfg)
    if args.out_dir:
        base_cfg, demo_cfg = base_cfg.replace(out_dir=args.out_dir), demo_cfg.replace(out_dir=args.out_dir)
    demo_cfg = demo_cfg.replace(baseline=str(base_cfg.run_dir / "model.pt"))
    t0 = time.perf_counter()
    if baseline_matches(base_cfg):
        print(f"demo: reusing the float baseline in {base_cfg.run_dir}", flush=True)
    else:
        train_script.main(["--config", str(args.baseline_config), "--no-progress", "--resume"], cfg=base_cfg)
    base_summary = json.loads((base_cfg.run_dir / "summary.json").read_text())
    summary = retrain_script.main(["--config", str(args.config), "--no-progress", "--resume"], cfg=demo_cfg)
    summary["float_test_acc"] = base_summary["test_acc"]
    print()
    summary["deploy"] = deploy_script.deploy(demo_cfg.run_dir, args.infer, verbose=False)
    summary["demo_seconds"] = time.perf_counter() - t0
    atomic.write_file(demo_cfg.run_dir / "summary.json", json.dumps(summary, indent=2))
    print()
    print(retrain_script.format_rounds(summary["round_table"]))
    print(f"\nfloat test accuracy     {summary['float_test_acc']:.2f}%")
    print(f"quantized test accuracy {summary['quant_test_acc']:.2f}%  "
          f"(4-bit k-means weights, 8-bit activations; {summary['rounds']} rounds; "
          f"difference {summary['quant_test_acc'] - summary['float_test_acc']:+.2f} points)")
    print(deploy_script.format_deploy(summary["deploy"]))
    print(f"demo total {summary['demo_seconds']:.0f}s -> {demo_cfg.run_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    train_script.run_script(main)
