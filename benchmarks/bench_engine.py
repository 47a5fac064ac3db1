"""qcnn's integer inference engine against the best int8 CPU engines, on the demo float baseline.

The float baseline of `make demo` (VGGSmall, width 24, runs/demo_baseline; trained here as make demo trains it
when missing) is quantized post-training, without retraining, by qcnn (W4 k-means codebooks, W8 uniform, binary
weights with 2-bit activations; exported to .qcnn, run by qcnn.load and by build/qcnn-infer), by onnxruntime
(static QDQ int8 from an fp32 ONNX export) and by torch.ao (FX graph mode, x86 backend), every one calibrated on
the same 512 training images. onnxruntime fp32 and torch fp32 eager are the float references. All engines take
the uint8 test images (the float ones normalise them in their graph, as the .qcnn file does).

Rows: seconds per image (batch 256 over the test images: 1 / throughput; batch 1 over a few hundred images:
latency) at 1 and 2 threads, with test accuracy; ratio = anchor_s / qcnn_s, the anchor being onnxruntime int8
(onnxruntime fp32 for the rows that force a kernel path with QCNN_ISA). Extra tables: the anchors, the goals,
and per conv layer at batch 256: qcnn's profile against torch's fp32 and torch.ao's int8 convolution.

  python benchmarks/bench_engine.py [--json PATH] [--quick] [--repeats N] [--infer PATH]
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import qcnn
from common import parser, report, time_call
from qcnn import config as qconfig, data, models
from qcnn import quantize as qz

from qcnn.cli import demo as demo_script  # make demo's baseline step
from qcnn.cli import train as train_script

ROOT = Path(__file__).resolve().parent.parent

BASELINE_CONFIG = ROOT / "configs" / "baseline.yaml"
DEFAULT_INFER = demo_script.deploy_script.DEFAULT_INFER
BATCH = 256
THREADS = (1, 2)
CALIB_IMAGES = 512
LATENCY_IMAGES = 300
# A warm-up run longer than this is the measurement itself (the scalar path over 10,000 images).
SLOW_RUN_S = 20.0
PEAK_SECONDS = 0.5

W8_QUANT = {
    "weight": {"kind": "uniform", "bits": 8, "granularity": "channel"},
    "act": {"bits": 8, "method": "lsq"},
    "input_act": {"bits": 8, "signed": True, "method": "lsq"},
    "calibration_batches": 4,
}
SCHEMES = {
    "W4": lambda: qconfig.load(ROOT / "configs" / "w4_kmeans.yaml").quant,
    "W8": lambda: qconfig.QuantConfig.from_dict(W8_QUANT, _path="quant"),
    "binary-A2": lambda: qconfig.load(ROOT / "configs" / "binary_a2.yaml").quant,
}
ORT_INT8, ORT_FP32, TORCHAO_INT8, TORCH_FP32 = "onnxruntime int8", "onnxruntime fp32", "torch.ao x86 int8", "torch fp32"
LOAD, INFER = "qcnn.load", "qcnn-infer"


# ------------------------------------------------------------------------------------------------ inputs
def baseline_dir(quick: bool, tmp: Path) -> Path:
    """runs/demo_baseline, trained by make demo's baseline step when missing or stale. --quick trains
    make demo --quick's tiny baseline in `tmp` instead (it only has to prove that every code path runs)."""
    cfg = qconfig.load(BASELINE_CONFIG)
    cfg = cfg.replace(name="demo_baseline", training=cfg.training.replace(epochs=demo_script.DEMO_BASELINE_EPOCHS))
    with contextlib.chdir(ROOT):  # the run directory is relative, as in make demo
        if demo_script.baseline_matches(cfg):
            return ROOT / cfg.run_dir
        if quick:
            cfg = demo_script.quick(cfg).replace(out_dir=str(tmp))
            print(f"note: {ROOT / 'runs/demo_baseline'} is missing; --quick trains make demo --quick's tiny "
                  f"baseline (width {cfg.model.kwargs['width']}) in {tmp}", flush=True)
        else:
            print(f"{ROOT / cfg.run_dir} is missing or stale: training it as make demo does", flush=True)
        train_script.main(["--config", str(BASELINE_CONFIG)], cfg=cfg)
        return ROOT / cfg.run_dir


def load_float(run_dir: Path) -> tuple[nn.Module, qconfig.RunConfig]:
    cfg = qconfig.load(run_dir / "config.yaml")
    model = models.create(cfg.model.name, **cfg.model.kwargs)
    model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
    return model.eval(), cfg


def calibration_set(cfg: qconfig.RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The first CALIB_IMAGES images of the training split (the validation split carved out as in training)."""
    images, labels = data.load_fashion_mnist(cfg.data.path, "train")
    train_idx, _ = data.train_val_indices(images.shape[0], cfg.data.val_size, cfg.data.seed)
    idx = train_idx[:CALIB_IMAGES]
    return images[idx], labels[idx]


class PixelNet(nn.Module):
    """uint8 pixels -> logits: the float model behind the normalisation the .qcnn file applies to its input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels.float() / 255.0 - data.FASHION_MEAN) / data.FASHION_STD)


# ----------------------------------------------------------------------------------------------- anchors
def export_onnx_fp32(net: PixelNet, path: Path) -> Path:
    example = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}}, opset_version=17)
    return path


def quantize_onnx_int8(fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    """onnxruntime's static QDQ quantization (after its recommended pre-processing), MinMax-calibrated."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": b.numpy()} for b in calib.split(BATCH)])

        def get_next(self):
            return next(self.batches, None)

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def ort_runner(path: Path, threads: int, input_name: str = "pixels"):
    import onnxruntime as ort

    options = ort.SessionOptions()  # graph optimizations: ORT_ENABLE_ALL, the default
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {input_name: x})[0], lambda t: t.numpy()


def torchao_int8(net: PixelNet, calib: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        prepared = prepare_fx(copy.deepcopy(net).eval(), get_default_qconfig_mapping("x86"), (calib[:1],))
        with torch.no_grad():
            for batch in calib.split(BATCH):
                prepared(batch)
        return convert_fx(prepared)


def torch_runner(module: nn.Module):
    """The caller sets torch's threads (torch.set_num_threads) before running it."""
    def run(x):
        with torch.inference_mode():
            return module(x)
    return run, lambda t: t


# ------------------------------------------------------------------------------------------------- qcnn
def quantize_post_training(float_model: nn.Module, quant: qconfig.QuantConfig, calib: tuple) -> nn.Module:
    """`quant` applied as the retraining loop's round 0 does it (fit the weight quantizers, then calibrate the
    activations with the weights quantized), with no retraining."""
    model = copy.deepcopy(float_model)
    qcnn.quantize_(model, quant)
    qz.refit_weights(model)
    images, labels = calib
    loader = data.TensorLoader(images, labels, batch_size=max(1, CALIB_IMAGES // quant.calibration_batches))
    qz.calibrate_activations(model, loader, len(loader))
    data.set_input_spec(model, loader.input_spec)
    return model.eval()


@contextlib.contextmanager
def isa_env(isa: str | None):
    """QCNN_ISA set to `isa` (None: unset, the engine's own choice) for what loads a model inside the block."""
    saved = os.environ.pop("QCNN_ISA", None)
    if isa is not None:
        os.environ["QCNN_ISA"] = isa
    try:
        yield
    finally:
        os.environ.pop("QCNN_ISA", None)
        if saved is not None:
            os.environ["QCNN_ISA"] = saved


def qcnn_load_runner(path: Path, threads: int, isa: str | None):
    with isa_env(isa):  # the engine chooses its kernels at load
        model = qcnn.load(path, threads=threads)
    return model, (lambda t: t), model.isa


# ----------------------------------------------------------------------------------------------- timing
def measure(run_once, repeats: int, seconds_of=lambda result, wall: wall):
    """(median seconds, warm-up result, timed runs): a warm-up run, then `repeats` timed runs, each timed by
    time.perf_counter (or by what seconds_of reads from its result); a warm-up longer than SLOW_RUN_S is the
    measurement itself."""
    def once():
        t0 = time.perf_counter()
        result = run_once()
        return seconds_of(result, time.perf_counter() - t0), result

    first_s, first = once()
    if first_s > SLOW_RUN_S:
        return first_s, first, 1
    return statistics.median(once()[0] for _ in range(repeats)), first, repeats


def measure_inprocess(run, native, images: torch.Tensor, labels: torch.Tensor, batch: int, repeats: int) -> dict:
    batches = [native(b) for b in images.split(batch)]

    def one_pass():
        return [run(b) for b in batches]

    seconds, logits, timed = measure(one_pass, repeats)
    pred = torch.cat([torch.as_tensor(np.asarray(out)).argmax(1) for out in logits])
    return {"s_per_image": seconds / images.shape[0], "acc": accuracy(pred, labels), "repeats": timed}


def measure_infer(infer: Path, model_path: Path, idx: tuple[Path, Path], batch: int, threads: int,
                  isa: str | None, repeats: int) -> dict:
    """qcnn-infer in its own process, timed by itself (model load and process start excluded)."""
    cmd = [str(infer), str(model_path), "--images", str(idx[0]), "--labels", str(idx[1]), "--batch", str(batch),
           "--threads", str(threads)]
    with isa_env(isa):
        env = dict(os.environ)

    def run_once():
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    seconds, first, timed = measure(run_once, repeats, lambda result, wall: result["seconds"])
    return {"s_per_image": seconds / first["images"], "acc": 100.0 * first["accuracy"], "repeats": timed,
            "isa": first["isa"]}


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((pred == labels).float().mean())


# -------------------------------------------------------------------------------------------- per layer
def conv_inputs(module: nn.Module, convs: list[str], pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named submodule receives when `module` runs `pixels`."""
    seen = {}
    handles = [module.get_submodule(name).register_forward_pre_hook(
        lambda mod, args, name=name: seen.__setitem__(name, args[0])) for name in convs]
    with torch.inference_mode():
        module(pixels)
    for h in handles:
        h.remove()
    return seen


def layer_table(float_model: nn.Module, net: PixelNet, ao_model: nn.Module, qcnn_files: dict[str, Path],
                pixels: torch.Tensor, repeats: int, peak_seconds: float) -> tuple[list[dict], str]:
    """Per conv of the net and thread count: qcnn's profile of each scheme, torch's fp32 nn.Conv2d and torch.ao's
    quantized conv (with its fused ReLU) on inputs of the same shape, and the share of the int8 peak each reaches."""
    convs = [name for name, m in float_model.named_modules() if isinstance(m, nn.Conv2d)]
    float_in = conv_inputs(net, [f"model.{c}" for c in convs], pixels)
    ao_in = conv_inputs(ao_model, [f"model.{c}" for c in convs], pixels)
    peak_fn = getattr(torch.ops.qcnn, "int8_peak_gmacs", None)
    note = "" if peak_fn else "torch.ops.qcnn.int8_peak_gmacs is not in this build: the peak columns are left out"
    n = pixels.shape[0]
    rows = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        peak = peak_fn(peak_seconds, threads) if peak_fn else None
        profiles, macs = {}, None
        for scheme, path in qcnn_files.items():
            with isa_env(None):
                model = qcnn.load(path, threads=threads)
            model.profile(pixels)  # warm-up
            runs = [[p for p in model.profile(pixels) if p.op == "conv2d"] for _ in range(repeats)]
            if len(runs[0]) != len(convs):
                raise RuntimeError(f"{path}: the profile has {len(runs[0])} conv2d nodes, the net {len(convs)} convs")
            macs = [p.macs_per_image for p in runs[0]]
            profiles[scheme] = [statistics.median(p.seconds for p in layer) for layer in zip(*runs)]
        for i, name in enumerate(convs):
            conv, x = float_model.get_submodule(name), float_in[f"model.{name}"]
            ao_conv, xq = ao_model.get_submodule(f"model.{name}"), ao_in[f"model.{name}"]
            with torch.inference_mode():
                fp32_s = time_call(lambda: conv(x), repeats)
                ao_s = time_call(lambda: ao_conv(xq), repeats)
            r = {"layer": name, "shape": f"{conv.in_channels}->{conv.out_channels} {x.shape[2]}x{x.shape[3]}",
                 "threads": threads, "macs_per_image": macs[i], "torch_fp32_s": fp32_s, "torch_ao_int8_s": ao_s}
            r.update({f"qcnn_{scheme}_s": seconds[i] for scheme, seconds in profiles.items()})
            if peak is not None:
                r["int8_peak_gmacs"] = peak
                r["torch_ao_int8_peak_frac"] = macs[i] * n / ao_s / 1e9 / peak
                r.update({f"qcnn_{scheme}_peak_frac": macs[i] * n / seconds[i] / 1e9 / peak
                          for scheme, seconds in profiles.items()})
            rows.append(r)
    return rows, note


# ------------------------------------------------------------------------------------------------ goals
def goal_table(qcnn_res: dict, anchors: dict) -> list[dict]:
    """Each goal per scheme: (goal, setting, target, value per scheme and whether it is met)."""
    def speed(a, b):
        return a["s_per_image"] / b["s_per_image"]

    goals = [("qcnn-infer / onnxruntime int8 speed", "batch 256, 2 threads", ">= 1.2", 1.2, True,
              lambda s: speed(anchors[ORT_INT8, BATCH, 2], qcnn_res[s, INFER, None, BATCH, 2]))]
    for t in THREADS:
        goals.append(("qcnn-infer / onnxruntime int8 latency", f"batch 1, {t} thread(s)", "<= 1", 1.0, False,
                      lambda s, t=t: speed(qcnn_res[s, INFER, None, 1, t], anchors[ORT_INT8, 1, t])))
    for b in (BATCH, 1):
        for t in THREADS:
            goals.append(("qcnn.load / qcnn-infer speed", f"batch {b}, {t} thread(s)", ">= 0.8", 0.8, True,
                          lambda s, b=b, t=t: speed(qcnn_res[s, INFER, None, b, t], qcnn_res[s, LOAD, None, b, t])))
    for t in THREADS:
        goals.append(("qcnn-infer QCNN_ISA=avx2 / onnxruntime fp32 speed", f"batch 256, {t} thread(s)", ">= 1", 1.0,
                      True, lambda s, t=t: speed(anchors[ORT_FP32, BATCH, t], qcnn_res[s, INFER, "avx2", BATCH, t])))
    rows = []
    for goal, setting, target, bound, at_least, value in goals:
        r = {"goal": goal, "setting": setting, "target": target}
        for scheme in SCHEMES:
            v = value(scheme)
            r[scheme] = v
            r[f"{scheme} status"] = "met" if (v >= bound if at_least else v <= bound) else "missed"
        rows.append(r)
    return rows


# ------------------------------------------------------------------------------------------------- main
def build_engines(float_model: nn.Module, calib: tuple, tmp: Path) -> tuple[dict, dict[str, Path], PixelNet, nn.Module]:
    """(anchor builders: name -> threads -> (run, native), .qcnn file per scheme, the float PixelNet, torch.ao's)."""
    calib_pixels = calib[0].unsqueeze(1)
    net = PixelNet(float_model).eval()
    fp32_onnx = export_onnx_fp32(net, tmp / "fp32.onnx")
    int8_onnx = quantize_onnx_int8(fp32_onnx, tmp / "int8.onnx", calib_pixels)
    ao_model = torchao_int8(net, calib_pixels)
    anchors = {ORT_INT8: lambda t: ort_runner(int8_onnx, t), ORT_FP32: lambda t: ort_runner(fp32_onnx, t),
               TORCHAO_INT8: lambda t: torch_runner(ao_model), TORCH_FP32: lambda t: torch_runner(net)}
    qcnn_files = {}
    for scheme, quant in SCHEMES.items():
        qcnn_files[scheme] = tmp / f"{scheme}.qcnn"
        qcnn.export(quantize_post_training(float_model, quant(), calib), qcnn_files[scheme], verbose=False)
    return anchors, qcnn_files, net, ao_model


def run_cases(anchor_builders: dict, qcnn_files: dict[str, Path], sets: dict, idx: dict, infer: Path,
              repeats: int) -> tuple[dict, dict]:
    """Measures every case: anchors keyed (engine, batch, threads), qcnn keyed (scheme, runner, isa, batch, threads)."""
    # (kind, engine or scheme, runner, isa, threads, batches); batch 256 first: its run gives the accuracy.
    cases = [("anchor", name, None, None, t, (BATCH, 1)) for name in anchor_builders for t in THREADS]
    cases += [("qcnn", scheme, runner, isa, t, (BATCH, 1)) for scheme in SCHEMES for runner in (LOAD, INFER)
              for isa in (None, "avx2") for t in THREADS]
    cases += [("qcnn", scheme, runner, "scalar", 2, (BATCH,)) for scheme in SCHEMES for runner in (LOAD, INFER)]
    anchors, qcnn_res = {}, {}
    for kind, name, runner, isa, threads, batches in tqdm(cases, desc="cases", unit="case"):
        torch.set_num_threads(threads)
        store = anchors if kind == "anchor" else qcnn_res
        key = (lambda b: (name, b, threads)) if kind == "anchor" else (lambda b: (name, runner, isa, b, threads))
        chosen_isa = None
        if kind == "anchor":
            run, native = anchor_builders[name](threads)
        elif runner == LOAD:
            run, native, chosen_isa = qcnn_load_runner(qcnn_files[name], threads, isa)
        for b in batches:
            if kind == "qcnn" and runner == INFER:
                res = measure_infer(infer, qcnn_files[name], idx[b], b, threads, isa, repeats)
            else:
                res = measure_inprocess(run, native, *sets[b], b, repeats)
                if chosen_isa is not None:
                    res["isa"] = chosen_isa
            if b != BATCH:  # the accuracy is that of the whole test set, from the batch-256 run
                res["acc"] = store[key(BATCH)]["acc"]
            store[key(b)] = res
    return anchors, qcnn_res


def engine_rows(qcnn_res: dict, anchors: dict) -> list[dict]:
    rows = []
    for (scheme, runner, isa, b, threads), res in qcnn_res.items():
        anchor = ORT_INT8 if isa is None else ORT_FP32
        ref, ao = anchors[anchor, b, threads], anchors[TORCHAO_INT8, b, threads]
        rows.append({"case": f"{scheme} {runner}{'' if isa is None else f' QCNN_ISA={isa}'} batch {b} t{threads}",
                     "qcnn_s": res["s_per_image"], "anchor": anchor, "anchor_s": ref["s_per_image"],
                     "ratio": ref["s_per_image"] / res["s_per_image"], "vs_torch_ao_int8": ao["s_per_image"] /
                     res["s_per_image"], "images_per_s": 1.0 / res["s_per_image"], "acc": res["acc"],
                     "anchor_acc": ref["acc"], "isa": res["isa"], "repeats": res["repeats"], "scheme": scheme,
                     "runner": runner, "batch": b, "threads": threads})
    return rows


def anchor_rows(anchors: dict) -> list[dict]:
    return [{"engine": name, "batch": b, "threads": t, "s_per_image": res["s_per_image"],
             "images_per_s": 1.0 / res["s_per_image"], "acc": res["acc"], "repeats": res["repeats"]}
            for (name, b, t), res in anchors.items()]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="512 test images, 16 for latency, one timed run per case: proves every code path runs")
    p.add_argument("--infer", type=Path, default=DEFAULT_INFER, help="the qcnn-infer binary")
    args = p.parse_args()
    repeats = 1 if args.quick else args.repeats
    load_at_start = os.getloadavg()  # the ratios hold only on a quiet machine
    if not args.infer.is_file():
        raise SystemExit(f"bench_engine: {args.infer} not found; build it with `make setup`")
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp_name:
        tmp = Path(tmp_name)
        float_model, cfg = load_float(baseline_dir(args.quick, tmp))
        calib = calibration_set(cfg)
        images, labels = data.load_fashion_mnist(cfg.data.path, "test")
        n_test, n_latency = (512, 16) if args.quick else (images.shape[0], LATENCY_IMAGES)
        images, labels = images[:n_test].unsqueeze(1), labels[:n_test]
        sets = {BATCH: (images, labels), 1: (images[:n_latency], labels[:n_latency])}
        idx = {b: (data.write_idx(tmp / f"images-{b}.idx", x.numpy()),
                   data.write_idx(tmp / f"labels-{b}.idx", y.numpy()))
               for b, (x, y) in sets.items()}
        print("building the engines: onnxruntime, torch.ao, qcnn (post-training quantization, export)", flush=True)
        anchor_builders, qcnn_files, net, ao_model = build_engines(float_model, calib, tmp)
        anchors, qcnn_res = run_cases(anchor_builders, qcnn_files, sets, idx, args.infer, repeats)
        print("per-layer profile at batch 256", flush=True)
        layers, layer_note = layer_table(float_model, net, ao_model, qcnn_files, images[:BATCH], repeats,
                                         0.05 if args.quick else PEAK_SECONDS)
    settings = {"quick": args.quick, "test_images": n_test, "latency_images": n_latency,
                "calibration_images": CALIB_IMAGES, "batch": BATCH, "threads": list(THREADS), "repeats": repeats,
                "slow_run_s": SLOW_RUN_S, "baseline": str(cfg.run_dir),
                "model": {"name": cfg.model.name, **cfg.model.kwargs}, "load_average_at_start": load_at_start}
    if layer_note:
        settings["note"] = layer_note
    report("engine", engine_rows(qcnn_res, anchors), args.json,
           {"anchors": anchor_rows(anchors), "layers": layers, "goals": goal_table(qcnn_res, anchors),
            "settings": settings})
    if layer_note:
        print(f"\nnote: {layer_note}")


if __name__ == "__main__":
    main()
