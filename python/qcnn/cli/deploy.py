"""Deploy a retrained or fixed-point-searched run: export runs/<name>/model.qcnn (and a Huffman-coded copy),
run it on the test set with qcnn.load (the C++ integer engine through qcnn._C) and with build/qcnn-infer (the
same engine, no Python), compare both with the fake-quant PyTorch model (top-1 agreement and accuracy) and
with each other (the logits must be bit-identical: `logits_identical`). Writes runs/<name>/deploy.json.

python training/deploy.py --run runs/w3_kmeans [--infer build/qcnn-infer] [--threads N] [--images N]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import qcnn
from qcnn import atomic, config as qconfig, data, engine, models
from qcnn.exporter import ExportReport, to_graph
from qcnn.exporter.runtime import MAX_THREADS
from qcnn.search import fixed_point_search
from . import REPO_ROOT as ROOT
from .train import run_script

DEFAULT_INFER = ROOT / "build" / "qcnn-infer"
FORMAT_KEYS = ("frac_bits", "format_bits")  # the fixed-point quantizers' state dict entries (and format_frac_bits)


def load_quantized(run_dir: Path) -> tuple[torch.nn.Module, qconfig.RunConfig]:
    """The quantized model of a run (its resolved config.yaml and model.pt), in eval mode: a retrained run
    (config.yaml's quant section) or a fixed-point search run (plan.json applied to the BN-folded float net)."""
    plan_path = run_dir / "plan.json"
    try:
        plan_doc = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    except (OSError, ValueError) as err:
        raise ValueError(f"{plan_path}: cannot read the run's plan ({err})") from err
    fixed_point = isinstance(plan_doc, dict) and plan_doc.get("format") == fixed_point_search.PLAN_FORMAT
    if fixed_point:
        cfg, _ = qconfig.load_with_search(run_dir / "config.yaml", fixed_point_search.FixedPointSearchConfig)
        plan = fixed_point_search.FixedPointPlan.from_dict(plan_doc)
        model = plan.apply(qcnn.fold_batchnorm(models.create(cfg.model.name, **cfg.model.kwargs)))
    else:
        try:
            cfg = qconfig.load(run_dir / "config.yaml")
        except qconfig.ConfigError as err:
            if err.key_path != "search":
                raise
            raise ValueError(f"{plan_path}: not a fixed-point plan (format {fixed_point_search.PLAN_FORMAT!r}), "
                             f"but {run_dir / 'config.yaml'} is a fixed-point search's config") from None
        if cfg.quant is None:
            raise ValueError(f"{run_dir / 'config.yaml'}: the run has no 'quant' section and no fixed-point plan; "
                             "only quantized runs deploy")
        model = models.create(cfg.model.name, **cfg.model.kwargs)
        qcnn.quantize_(model, cfg.quant)
    # model.pt holds a fixed-point plan's formats too: a plan.json edited since the search cannot be deployed
    planned = {key: value.clone() for key, value in model.state_dict().items()
               if fixed_point and key.endswith(FORMAT_KEYS)}
    try:  # a hostile or truncated file raises anything from the unpickler
        model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
    except Exception as err:
        raise ValueError(f"{run_dir / 'model.pt'}: not a state dict of the run's quantized {cfg.model.name!r} "
                         f"({engine.describe_load_error(err)})") from None
    loaded = model.state_dict()
    for key, value in planned.items():
        if not torch.equal(loaded[key], value):
            raise ValueError(f"{plan_path} and {run_dir / 'model.pt'} disagree: {key} is {value.item()} in the "
                             f"plan, {loaded[key].item()} in model.pt")
    data.set_input_spec(model, data.FASHION_MNIST_INPUT)  # what a run config's data section reads
    return model.eval(), cfg


def run_infer(infer: Path, model_path: Path, data_path: str, limit: int | None, threads: int | None) -> tuple[dict, torch.Tensor]:
    """Runs qcnn-infer on the test set; returns its JSON report and its logits [images, classes]."""
    images, labels = (data.find_idx(data_path, stem) for stem in data.IDX_FILES["test"])
    with tempfile.TemporaryDirectory() as tmp:
        logits_path = Path(tmp) / "logits.npy"
        cmd = [str(infer), str(model_path), "--images", str(images), "--labels", str(labels),
               "--logits", str(logits_path)]
        if limit is not None:
            cmd += ["--limit", str(limit)]
        if threads:
            cmd += ["--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        logits = torch.from_numpy(np.load(logits_path))
    return report, logits


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return 100.0 * float((a == b).float().mean())


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((pred == labels).float().mean())


def deploy(run_dir: Path, infer: Path | None = DEFAULT_INFER, threads: int | None = None,
           verbose: bool = True, images_limit: int | None = None) -> dict:
    """images_limit: the first N test images only (default: the config's test_subset, else all)."""
    atomic.remove_stale_temps(run_dir)
    model, cfg = load_quantized(run_dir)
    images, labels = data.load_fashion_mnist(cfg.data.path, "test")
    limit = images_limit if images_limit is not None else cfg.data.test_subset
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    pixels = images.unsqueeze(1)

    packed: ExportReport = qcnn.export(model, run_dir / "model.qcnn", verbose=verbose)
    huffman: ExportReport = qcnn.export(model, run_dir / "model.huffman.qcnn", entropy_coding=True, verbose=verbose)
    graph = to_graph(model)
    with torch.no_grad():
        fake_pred = torch.cat([model(graph.normalize(chunk)).argmax(1) for chunk in pixels.split(1000)])
    runtime = qcnn.load(run_dir / "model.qcnn", threads=threads or 0)
    t0 = time.perf_counter()
    load_logits = torch.cat([runtime(chunk) for chunk in pixels.split(1000)])
    load_seconds = time.perf_counter() - t0
    load_pred = load_logits.argmax(1)
    result = {
        "run": str(run_dir), "images": int(labels.numel()),
        "float32_bytes": packed.float32_bytes,
        "file_bytes_packed": packed.file_bytes, "ratio_packed": packed.ratio,
        "file_bytes_huffman": huffman.file_bytes, "ratio_huffman": huffman.ratio,
        "fake_quant_test_acc": accuracy(fake_pred, labels),
        "fake_quant_test_f1": engine.macro_f1(fake_pred, labels),
        "load_test_acc": accuracy(load_pred, labels), "load_test_f1": engine.macro_f1(load_pred, labels),
        "load_agreement": agreement(load_pred, fake_pred),
        "load_images_per_second": labels.numel() / load_seconds,
    }
    if infer is not None:
        if not Path(infer).is_file():
            raise FileNotFoundError(f"qcnn-infer not found at {infer}; build it with `make setup` (or pass --infer)")
        report, infer_logits = run_infer(Path(infer), run_dir / "model.qcnn", cfg.data.path, limit, threads)
        if infer_logits.shape != load_logits.shape:
            raise RuntimeError(f"qcnn-infer returned logits of shape {list(infer_logits.shape)}, qcnn.load "
                               f"{list(load_logits.shape)}")
        infer_pred = infer_logits.argmax(1)
        result.update(infer_test_acc=accuracy(infer_pred, labels),
                      infer_test_f1=engine.macro_f1(infer_pred, labels),
                      infer_agreement=agreement(infer_pred, fake_pred),
                      infer_images_per_second=report["images_per_second"], infer_threads=report["threads"],
                      infer_agreement_with_load=agreement(infer_pred, load_pred),
                      logits_identical=bool(np.array_equal(infer_logits.numpy(), load_logits.numpy())))
    result.update(onnx_agreement(model, run_dir, graph, pixels, fake_pred, load_pred, labels, cfg.data.path))
    atomic.write_file(run_dir / "deploy.json", json.dumps(result, indent=2))
    if verbose:
        print(format_deploy(result))
    return result


# Training images the calibrated ONNX export takes its 8-bit grids of wide values from (never test images).
ONNX_CALIBRATION_IMAGES = 256


def onnx_agreement(model: torch.nn.Module, run_dir: Path, graph, pixels: torch.Tensor, fake_pred: torch.Tensor,
                   load_pred: torch.Tensor, labels: torch.Tensor, data_path: str) -> dict:
    """The model's two ONNX exports in onnxruntime's default session: model.onnx (exact: values past 8 bits stay
    float) and model.calibrated.onnx (every layer on integer kernels, grids from the first ONNX_CALIBRATION_IMAGES
    training images under data_path); test accuracy, agreement with the fake-quant model and with the engine
    (qcnn.load). {} without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    calibration = data.load_fashion_mnist(data_path, "train")[0][:ONNX_CALIBRATION_IMAGES].unsqueeze(1)
    result = {}
    for key, name, images in (("onnx", "model.onnx", None), ("onnx_calibrated", "model.calibrated.onnx", calibration)):
        path = qcnn.export_onnx(model, run_dir / name, calibration=images)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        pred = torch.cat([torch.from_numpy(session.run(None, {"input": graph.normalize(chunk).numpy()})[0]).argmax(1)
                          for chunk in pixels.split(1000)])
        result.update({f"{key}_test_acc": accuracy(pred, labels), f"{key}_agreement": agreement(pred, fake_pred),
                       f"{key}_agreement_with_load": agreement(pred, load_pred)})
    return result


def _f1_note(r: dict, runtime: str) -> str:
    value = r.get(f"{runtime}_test_f1")  # absent in an older deploy.json
    return "" if value is None else f" (F1 {value:.2f})"


def format_deploy(r: dict) -> str:
    lines = [f"export: {r['file_bytes_packed']} bytes packed ({r['ratio_packed']:.2f}x smaller than the "
             f"{r['float32_bytes']}-byte float32 model), {r['file_bytes_huffman']} bytes Huffman-coded "
             f"({r['ratio_huffman']:.2f}x)",
             f"fake-quant PyTorch model    test acc {r['fake_quant_test_acc']:.2f}%{_f1_note(r, 'fake_quant')}",
             f"qcnn.load (integer engine)  test acc {r['load_test_acc']:.2f}%{_f1_note(r, 'load')}, "
             f"agreement {r['load_agreement']:.2f}%, "
             f"{r['load_images_per_second']:.0f} images/s"]
    if "infer_test_acc" in r:
        lines.append(f"qcnn-infer (integer engine) test acc {r['infer_test_acc']:.2f}%{_f1_note(r, 'infer')}, "
                     f"agreement {r['infer_agreement']:.2f}%, {r['infer_images_per_second']:.0f} images/s")
        lines.append(f"logits of qcnn.load and qcnn-infer bit-identical: {str(r['logits_identical']).lower()}")
    for key, label in (("onnx", "ONNX in onnxruntime (exact)"), ("onnx_calibrated", "ONNX, calibrated (integer)")):
        if f"{key}_test_acc" in r:
            with_load = r.get(f"{key}_agreement_with_load")  # absent in an older deploy.json
            lines.append(f"{label:28s} test acc {r[f'{key}_test_acc']:.2f}%, agreement {r[f'{key}_agreement']:.2f}%"
                         + ("" if with_load is None else f", with qcnn.load {with_load:.2f}%"))
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="run directory with config.yaml and model.pt")
    p.add_argument("--infer", type=Path, default=DEFAULT_INFER, help="the qcnn-infer binary")
    p.add_argument("--no-infer", action="store_true", help="skip qcnn-infer")
    p.add_argument("--threads", type=int, default=None, help="engine threads of both runs (default: all cores)")
    p.add_argument("--images", type=int, default=None,
                   help="run on the first N test images (default: the config's test_subset, else all 10,000)")
    args = p.parse_args(argv)
    if args.images is not None and args.images < 1:
        p.error(f"--images must be >= 1, got {args.images}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        p.error(f"--threads must be in [1, {MAX_THREADS}], got {args.threads}")
    for name in ("config.yaml", "model.pt"):
        if not (args.run / name).is_file():
            raise SystemExit(f"deploy.py: {args.run / name} not found; is {args.run} a finished retraining run?")
    return deploy(args.run, None if args.no_infer else args.infer, args.threads, images_limit=args.images)


if __name__ == "__main__":
    run_script(main)
