"""Train the float baseline: python training/train.py --config configs/baseline.yaml [--resume].

Writes runs/<name>/{config.yaml, model.pt, summary.json, epochs.jsonl, checkpoint.pt}. Runs under
`torchrun --nproc_per_node=N` with DistributedDataParallel as well (rank 0 writes the files).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


import torch

import qcnn
from qcnn import atomic, config as qconfig, engine, models
from qcnn.data import NUM_CLASSES, build_loaders
from qcnn.retrain import train_float


def add_resume_options(p: argparse.ArgumentParser) -> None:
    """--resume and --stop-after-epochs: every script that trains through qcnn.retrain (and so can leave an
    unfinished checkpoint) takes them; check_resume_options checks them."""
    p.add_argument("--resume", action="store_true", help="continue from runs/<name>/checkpoint.pt")
    p.add_argument("--stop-after-epochs", type=int, default=None,
                   help="stop (as if killed) after this many epochs; for testing --resume")


def check_resume_options(p: argparse.ArgumentParser, args) -> None:
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        p.error(f"--stop-after-epochs must be >= 1, got {args.stop_after_epochs}")


def parse_args(argv=None, description: str = __doc__):
    """The command line of train.py and retrain.py."""
    p = argparse.ArgumentParser(description=description.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="YAML run config")
    add_resume_options(p)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: this process's GPU when CUDA is available, else the CPU")
    args = p.parse_args(argv)
    check_resume_options(p, args)
    return args


def run_script(main) -> None:
    """A training script's command line: a bad config, file or argument, or a file it cannot write (a full disk:
    qcnn.atomic.WriteError), stops it with one line that names it (exit status 2), not a traceback."""
    try:
        main()
    except (qconfig.ConfigError, ValueError, OSError) as err:
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def check_model_fits(model: torch.nn.Module, cfg: qconfig.RunConfig, spec, device) -> None:
    """The config's model runs on the data's images and gives one logit per class (a config error otherwise,
    before any training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *spec.shape, device=device))
    except Exception as err:
        raise qconfig.ConfigError("model", f"{cfg.model.name!r} with kwargs {cfg.model.kwargs} cannot run on the "
                                  f"data's {list(spec.shape)} images: {str(err).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (2, NUM_CLASSES):
        raise qconfig.ConfigError("model.kwargs.num_classes", f"the model gives outputs of shape "
                                  f"{list(out.shape[1:])} per image; the data has {NUM_CLASSES} classes")


def main(argv=None, cfg: qconfig.RunConfig | None = None) -> dict:
    args = parse_args(argv)
    cfg = cfg or qconfig.load(args.config)
    if cfg.quant is not None:  # recorded, it would make the float run look quantized to deploy.py
        print(f"train.py: {args.config}: trains the float model; its 'quant' section is for retrain.py and is "
              "left out of this run", file=sys.stderr)
        cfg = cfg.replace(quant=None)
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    rank, world, device = engine.setup_distributed(args.device)
    engine.seed_everything(cfg.training.seed)
    splits = build_loaders(cfg.data, rank, world)
    model = models.create(cfg.model.name, **cfg.model.kwargs).to(device)
    check_model_fits(model, cfg, splits.train.input_spec, device)
    run_dir = cfg.run_dir
    t0 = time.perf_counter()
    result = train_float(model, cfg, splits.train, splits.val, resume=args.resume,
                         stop_after_epochs=args.stop_after_epochs, progress=not args.no_progress)
    if not result["finished"]:
        return {"finished": False}
    val = engine.evaluate(model, splits.val)
    test = engine.evaluate(model, splits.test)
    summary = {
        "name": cfg.name, "kind": "float", "model": cfg.model.name, "model_kwargs": cfg.model.kwargs,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": cfg.training.epochs, "val_acc": val["acc"], "val_f1": val["f1"], "test_acc": test["acc"],
        "test_f1": test["f1"], "float_test_acc": test["acc"], "float_test_f1": test["f1"],
        "train_seconds": time.perf_counter() - t0, "world_size": world,
        "torch": torch.__version__, "qcnn": qcnn.__version__,
    }
    if engine.is_main():
        engine.atomic_save(model.state_dict(), run_dir / "model.pt")
        atomic.write_file(run_dir / "summary.json", json.dumps(summary, indent=2))
        print(f"[{cfg.name}] float model: val acc {val['acc']:.2f}% (F1 {val['f1']:.2f}), test acc {test['acc']:.2f}% "
              f"(F1 {test['f1']:.2f}) -> {run_dir}", flush=True)
    return summary


if __name__ == "__main__":
    run_script(main)
