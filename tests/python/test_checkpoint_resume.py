"""--resume checks every field of a checkpoint before training (one line naming the field), every file qcnn
writes is written atomically (a full disk leaves the old file and no temporary, and says which file), a killed
writer's temporaries go at the next start, and every script that can leave a checkpoint resumes it with the
option its message suggests."""
from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qcnn
from qcnn import atomic, config as qconfig, engine, models, retrain
from qcnn.data import Splits, TensorLoader

from training_scripts import TRAINING, load_training_script

ROOT = Path(__file__).resolve().parents[2]
QUANT = {"weight": {"kind": "codebook", "bits": 2, "method": "kmeans", "granularity": "channel"},
         "act": {"bits": 4}, "calibration_batches": 1}


def _splits() -> Splits:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (256, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(256) % 10
    return Splits(train=TensorLoader(images[:128], labels[:128], 64, shuffle=True, seed=0),
                  val=TensorLoader(images[128:192], labels[128:192], 64),
                  test=TensorLoader(images[192:], labels[192:], 64))


def _cfg(out_dir, name: str, quant: bool) -> qconfig.RunConfig:
    doc = {"name": name, "out_dir": str(out_dir), "model": {"name": "vgg_small", "kwargs": {"width": 4}},
           "training": {"epochs": 3, "lr": 0.05}}
    if quant:
        doc.update(quant=QUANT, retrain={"max_rounds": 2, "min_rounds": 2, "epochs_per_round": 2, "lr": 0.01})
    return qconfig.from_dict(doc)


def _model(cfg: qconfig.RunConfig) -> torch.nn.Module:
    model = models.create(cfg.model.name, **cfg.model.kwargs)
    if cfg.quant is not None:
        qcnn.quantize_(model, cfg.quant)
    return model


def _train(cfg, splits, model=None, **kwargs):
    loop = retrain.run if cfg.quant is not None else retrain.train_float
    return loop(model or _model(cfg), cfg, splits.train, splits.val, progress=False, **kwargs)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Checkpoints of real runs: 'float' after epoch 1 of 3, 'mid_round' after epoch 1 of retraining round 0,
    'boundary' after round 0 (round 1 not started)."""
    out = tmp_path_factory.mktemp("base")
    splits = _splits()
    engine.seed_everything(0)
    checkpoints = {}
    float_cfg, quant_cfg = _cfg(out, "float", False), _cfg(out, "quant", True)
    assert not _train(float_cfg, splits, stop_after_epochs=1)["finished"]
    checkpoints["float"] = engine.load_checkpoint(out / "float" / retrain.CHECKPOINT)
    assert not _train(quant_cfg, splits, stop_after_epochs=1)["finished"]
    checkpoints["mid_round"] = engine.load_checkpoint(out / "quant" / retrain.CHECKPOINT)
    assert not _train(quant_cfg, splits, resume=True, stop_after_epochs=1)["finished"]
    checkpoints["boundary"] = engine.load_checkpoint(out / "quant" / retrain.CHECKPOINT)
    assert checkpoints["boundary"]["loop"]["round"] == 1 and checkpoints["boundary"]["loop"]["best_round"] == 0
    return {"splits": splits, "checkpoints": checkpoints,
            "cfg": {"float": float_cfg, "mid_round": quant_cfg, "boundary": quant_cfg}}


def _at(ckpt, keys):
    for key in keys[:-1]:
        ckpt = ckpt[key]
    return ckpt, keys[-1]


def put(*keys_and_value):
    *keys, value = keys_and_value

    def edit(ckpt):
        parent, key = _at(ckpt, keys)
        parent[key] = value(parent[key]) if callable(value) else value
    return edit


def drop(*keys):
    def edit(ckpt):
        parent, key = _at(ckpt, keys)
        del parent[key]
    return edit


def _numpy_pos(pos):
    return put("rng", "numpy", lambda s: (s[0], s[1], pos, s[3], s[4]))


def _first_param(ckpt):
    return next(iter(ckpt["model"]))


def _nan_weight(ckpt):
    ckpt["model"][_first_param(ckpt)] = torch.full_like(ckpt["model"][_first_param(ckpt)], float("nan"))


def _wrong_best_model(ckpt):
    ckpt["best_model"][_first_param(ckpt)] = torch.zeros(3)


NAN = float("nan")
EDITS = [
    # the loop state of a float run
    ("float", put("loop", "epoch", -10 ** 9), r"loop.epoch = -1000000000 is outside \[0, 3\]"),
    ("float", put("loop", "epoch", 10 ** 9), r"loop.epoch = 1000000000 is outside \[0, 3\]"),
    ("float", put("loop", "epoch", "1"), r"loop.epoch must be an integer, got '1'"),
    ("float", put("loop", "epoch", 1.0), r"loop.epoch must be an integer, got 1.0"),
    ("float", put("loop", "epoch", 2), r"loop.history has 1 entries, expected 2 \(one record per epoch"),
    ("float", drop("loop", "history"), r"loop.history is missing"),
    ("float", put("loop", "history", None), r"loop.history must be a list, got None"),
    ("float", put("loop", "history", 0, "val_acc", NAN), r"loop.history\[0\].val_acc = nan is not a finite number"),
    ("float", put("loop", "history", 0, "epoch", 7), r"loop.history\[0\].epoch = 7, expected 1"),
    ("float", put("loop", "extra", 1), r"loop.extra is not a field of a qcnn checkpoint"),
    ("float", put("surprise", 1), r"surprise is not a field of a qcnn checkpoint"),
    ("float", drop("scheduler"), r"not a qcnn checkpoint .*missing \['scheduler'\]"),
    ("float", put("config", [1]), r"config must be a mapping, got \[1\]"),
    ("float", put("data_order", "epoch", 7), r"data_order.epoch = 7, expected 1"),
    ("float", put("best_model", {}), r"best_model = \{\}, expected None"),
    # the model
    ("float", put("model", 5), r"model must be a mapping, got 5"),
    ("float", _nan_weight, r"model\['features.0.weight'\] holds NaN or infinite values"),
    # the optimizer and its schedule
    ("float", put("optimizer", "param_groups", 0, "lr", NAN),
     r"optimizer.param_groups\[0\].lr = nan is not a finite number"),
    ("float", put("optimizer", "param_groups", 0, "lr", 0.3),
     r"optimizer.param_groups\[0\].lr = 0.3 is outside \[0.0, 0.05\]"),
    ("float", put("optimizer", "param_groups", 0, "lr", 0.001),
     r"optimizer.param_groups\[0\].lr = 0.001, expected .* \(the schedule after 2 steps\)"),
    ("float", put("optimizer", "param_groups", 0, "momentum", NAN),
     r"optimizer.param_groups\[0\].momentum = nan, expected 0.9 \(from the config\)"),
    ("float", put("optimizer", "param_groups", 0, "weight_decay", -1.0),
     r"optimizer.param_groups\[0\].weight_decay = -1.0, expected 0.0005"),
    ("float", put("optimizer", "param_groups", []), r"optimizer.param_groups has 0 entries, expected 1"),
    ("float", put("optimizer", "param_groups", 0, "params", [0, 1]), r"optimizer.param_groups\[0\].params = \[0, 1\]"),
    ("float", drop("optimizer", "param_groups", 0, "nesterov"), r"optimizer.param_groups\[0\].nesterov is missing"),
    ("float", put("optimizer", "state", 0, "momentum_buffer", torch.zeros(3)),
     r"optimizer.state\[0\].momentum_buffer has shape \[3\], expected \[4, 1, 3, 3\]"),
    ("float", put("optimizer", "state", 0, "momentum_buffer", lambda t: t.double()),
     r"optimizer.state\[0\].momentum_buffer has dtype torch.float64, expected torch.float32"),
    ("float", put("optimizer", "state", 0, "other", torch.zeros(1)), r"optimizer.state\[0\].other is not a field"),
    ("float", put("optimizer", "state", 10 ** 6, {}), r"optimizer.state has an entry for parameter 1000000"),
    ("float", put("optimizer", "state", []), r"optimizer.state must be a mapping, got \[\]"),
    ("float", put("scheduler", "last_epoch", 10 ** 6), r"scheduler.last_epoch = 1000000, expected 2"),
    ("float", put("scheduler", "base_lrs", [NAN]), r"scheduler.base_lrs = \[nan\], expected \[0.05\]"),
    ("float", put("scheduler", "lr_lambdas", [1]), r"scheduler.lr_lambdas = \[1\], expected \[None\]"),
    # the RNG states
    ("float", drop("rng", "numpy"), r"rng.numpy is missing"),
    ("float", put("rng", "torch", torch.zeros(10, dtype=torch.uint8)), r"rng.torch has shape \[10\], expected \[5056\]"),
    ("float", put("rng", "torch", lambda t: t.float()), r"rng.torch has dtype torch.float32, expected torch.uint8"),
    ("float", put("rng", "torch", torch.zeros(5056, dtype=torch.uint8)),
     r"rng.torch cannot be restored \(RuntimeError: .*mt19937"),
    ("float", _numpy_pos(10 ** 6), r"rng.numpy\[2\] = 1000000 is outside \[0, 624\]"),
    ("float", put("rng", "numpy", lambda s: (s[0], s[1][:5], *s[2:])), r"rng.numpy\[1\] must be a uint32 array"),
    ("float", put("rng", "numpy", lambda s: ("PCG64", *s[1:])), r"rng.numpy\[0\] = 'PCG64', expected 'MT19937'"),
    ("float", put("rng", "python", "x"), r"rng.python must be a tuple, got 'x'"),
    ("float", put("rng", "python", lambda s: (s[0], s[1], "x")), r"rng.python\[2\] must be a number"),
    ("float", put("rng", "python", lambda s: (s[0], s[1][:-1] + (10 ** 6,), s[2])),
     r"rng.python\[1\]\[624\] = 1000000 is outside|rng.python cannot be restored"),
    ("float", put("rng", "cuda", "x"), r"rng.cuda must be a list, got 'x'"),
    # the retraining loop state
    ("mid_round", put("loop", "round", 10 ** 6), r"loop.round = 1000000 is outside \[0, 1\]"),
    ("mid_round", put("loop", "round", -1), r"loop.round = -1 is outside \[0, 1\]"),
    ("mid_round", put("loop", "epoch", -10 ** 9), r"loop.epoch = -1000000000 is outside \[0, 1\]"),
    ("mid_round", put("loop", "global_epoch", 3), r"loop.global_epoch = 3, expected 1"),
    ("mid_round", put("loop", "global_epoch", 5), r"loop.global_epoch = 5 is outside \[0, 4\]"),
    ("mid_round", put("loop", "round_info", None), r"loop.round_info must be a mapping, got None"),
    ("mid_round", put("loop", "round_info", "change_fraction", "x"),
     r"loop.round_info.change_fraction must be a number, got 'x'"),
    ("mid_round", put("loop", "round_info", "change_fraction", 2.0),
     r"loop.round_info.change_fraction = 2.0 is outside \[0.0, 1.0\]"),
    ("mid_round", drop("loop", "round_info", "val_acc_before"), r"loop.round_info.val_acc_before is missing"),
    ("mid_round", put("loop", "train_stats", []), r"loop.train_stats has 0 entries, expected 1"),
    ("mid_round", put("loop", "done", 1), r"loop.done must be true or false, got 1"),
    ("mid_round", put("loop", "best_round", 0), r"loop.best_round = 0, expected None"),
    ("mid_round", drop("scheduler", "_step_count"), r"scheduler._step_count is missing"),
    ("mid_round", put("optimizer", "param_groups", 0, "initial_lr", 1.0),
     r"optimizer.param_groups\[0\].initial_lr = 1.0, expected 0.01"),
    ("mid_round", put("optimizer", None), r"optimizer must be a mapping, got None"),
    ("boundary", put("loop", "done", True), r"loop.done = True, expected False \(the convergence rule"),
    ("boundary", put("loop", "best_round", 5), r"loop.best_round = 5, expected 0"),
    ("boundary", put("loop", "rounds", []), r"loop.rounds has 0 entries, expected 1"),
    ("boundary", put("loop", "rounds", 0, "val_acc", 101.0), r"loop.rounds\[0\].val_acc = 101.0 is outside \[0.0, 100.0\]"),
    ("boundary", put("loop", "rounds", 0, "quantizers", torch.zeros(2)),
     r"loop.rounds\[0\].quantizers must be plain data"),
    ("boundary", put("loop", "round_info", {}), r"loop.round_info = \{\}, expected None \(no epoch of loop.round"),
    ("boundary", put("best_model", None), r"best_model must be a mapping, got None"),
    ("boundary", _wrong_best_model, r"best_model does not fit this model"),
    # the format
    ("float", put("format", "version", retrain.CHECKPOINT_VERSION + 1),
     r"format.version = 2: written by a newer qcnn \(this one reads versions 0 to 1\)"),
    ("float", put("format", "version", "1"), r"format.version must be an integer, got '1'"),
    ("float", put("format", "name", "other"), r"format.name = 'other', expected 'qcnn.checkpoint'"),
    ("float", put("format", [1]), r"format must be a mapping, got \[1\]"),
]


@pytest.mark.parametrize("kind, edit, message", EDITS, ids=[f"{k}-{m[:40]}" for k, _, m in EDITS])
def test_resume_refuses_an_edited_checkpoint_naming_the_field(base, tmp_path, kind, edit, message):
    ckpt = copy.deepcopy(base["checkpoints"][kind])
    edit(ckpt)
    cfg = base["cfg"][kind].replace(out_dir=str(tmp_path))
    path = cfg.run_dir / retrain.CHECKPOINT
    engine.atomic_save(ckpt, path)
    saved = path.read_bytes()
    model = _model(cfg)
    rng_before = torch.get_rng_state()
    with pytest.raises(ValueError) as info:
        _train(cfg, base["splits"], model, resume=True)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"checkpoint {path}: "), text
    assert re.search(message, text), text
    # refused before anything ran: the checkpoint, the run directory and the RNG states are as they were
    assert path.read_bytes() == saved and sorted(p.name for p in cfg.run_dir.iterdir()) == [retrain.CHECKPOINT]
    assert torch.equal(torch.get_rng_state(), rng_before)


@pytest.mark.parametrize("kind", ["float", "mid_round", "boundary"])
def test_the_unedited_checkpoints_pass_the_checks(base, kind):
    cfg = base["cfg"][kind]
    fields = engine.CheckpointFields("x")
    retrain._check_checkpoint(copy.deepcopy(base["checkpoints"][kind]), cfg, _model(cfg),
                              "float" if kind == "float" else "retrain", len(base["splits"].train), fields)


def test_checkpoints_record_their_format_and_earlier_ones_resume_exactly(base, tmp_path):
    """A checkpoint names its format and version; one written before they were recorded (no `format`, version 0:
    the same fields) resumes to the state that resuming the recorded one reaches, bit for bit."""
    for ckpt in base["checkpoints"].values():
        assert ckpt["format"] == {"name": retrain.CHECKPOINT_FORMAT, "version": retrain.CHECKPOINT_VERSION}
    finished = {}
    for name, strip in (("recorded", False), ("version0", True)):
        ckpt = copy.deepcopy(base["checkpoints"]["mid_round"])
        if strip:
            del ckpt["format"]
        cfg = base["cfg"]["mid_round"].replace(out_dir=str(tmp_path / name))
        engine.atomic_save(ckpt, cfg.run_dir / retrain.CHECKPOINT)
        model = _model(cfg)
        assert _train(cfg, base["splits"], model, resume=True)["finished"]
        finished[name] = model.state_dict()
    assert finished["recorded"].keys() == finished["version0"].keys()
    assert all(torch.equal(finished["recorded"][k], finished["version0"][k]) for k in finished["recorded"])


def test_an_adam_state_of_the_wrong_kind_is_named(base):
    cfg = base["cfg"]["float"]
    model = _model(cfg)
    tcfg = cfg.training.replace(optimizer="adam")
    optimizer = engine.build_optimizer(model, tcfg, tcfg.lr)
    scheduler = engine.build_scheduler(optimizer, tcfg, tcfg.schedule, tcfg.epochs, 2)
    model(torch.zeros(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    scheduler.step()
    good_opt, good_sched = optimizer.state_dict(), scheduler.state_dict()
    fresh = engine.build_optimizer(model, tcfg, tcfg.lr)
    fresh_sched = engine.build_scheduler(fresh, tcfg, tcfg.schedule, tcfg.epochs, 2)
    fields = engine.CheckpointFields("c.pt")
    engine.check_training_state(copy.deepcopy(good_opt), good_sched, fresh, fresh_sched, 1, fields)
    for edit, message in [(put("state", 0, "step", torch.tensor(50.0)), r"optimizer.state\[0\].step = 50.0 is outside"),
                          (drop("state", 0, "exp_avg_sq"), r"optimizer.state\[0\].exp_avg_sq is missing"),
                          (put("state", 0, "exp_avg", lambda t: t.fill_(float("inf"))), r"exp_avg holds NaN"),
                          (put("param_groups", 0, "betas", (0.9, 2.0)), r"betas = \(0.9, 2.0\), expected")]:
        bad = copy.deepcopy(good_opt)
        edit(bad)
        with pytest.raises(ValueError, match=message):
            engine.check_training_state(bad, good_sched, fresh, fresh_sched, 1, fields)


# ------------------------------------------------------------------------------------------- atomic writes
def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if re.fullmatch(r"\..+\.tmp\d+", p.name))


def test_a_failed_write_removes_its_temporary_and_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")
    temps_seen = []

    def disk_full(fd):
        temps_seen.extend(_temps(tmp_path))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(atomic.WriteError, match=f"^cannot write {re.escape(str(target))}: No space left on device$") as info:
        atomic.write_file(target, "new")
    assert info.value.errno == 28 and isinstance(info.value, OSError)
    assert temps_seen == [f".summary.json.tmp{os.getpid()}"]
    assert target.read_text() == "old" and _temps(tmp_path) == []

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):  # any interruption: the temporary goes too
        atomic.write_file(target, lambda f: f.write(b"new"))
    assert target.read_text() == "old" and _temps(tmp_path) == []
    monkeypatch.undo()
    atomic.write_file(target, lambda f: f.write(b"new"))
    assert target.read_text() == "new" and _temps(tmp_path) == []


FULL_DISK_CHILD = r"""
import resource, signal, sys
from pathlib import Path
import torch
import qcnn
from qcnn import atomic, config as qconfig, engine, models, retrain
from qcnn.data import set_input_spec, FASHION_MNIST_INPUT

run = Path(sys.argv[1])
cfg = qconfig.load(run / "config.yaml")
model = models.create(cfg.model.name, **cfg.model.kwargs)
qcnn.quantize_(model, cfg.quant)
model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
set_input_spec(model, FASHION_MNIST_INPUT)
model.eval()
import matplotlib.pyplot, onnx  # imported (and matplotlib's font cache written) before the limit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: write() fails with EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
writes = {
    "checkpoint.pt": lambda p: engine.atomic_save({"w": torch.ones(4096)}, p),
    "model.qcnn": lambda p: qcnn.export(model, p, verbose=False),
    "model.onnx": lambda p: qcnn.export_onnx(model, p),
    "accuracy.png": lambda p: retrain.plot_rounds([{"round": 0, "val_acc_before": 1.0, "val_acc": 2.0}], p),
    "rounds.jsonl": lambda p: retrain._write_jsonl(p, [{"x": "y" * 4096}]),
}
for name, write in writes.items():
    try:
        write(run / name)
        print("written", name)
    except atomic.WriteError as err:
        print(err)
"""


@pytest.fixture(scope="module")
def deployable(base, tmp_path_factory):
    """A run directory deploy.py takes: config.yaml and the quantized model.pt (a retraining checkpoint's)."""
    run = tmp_path_factory.mktemp("deployable") / "run"
    run.mkdir()
    cfg = base["cfg"]["boundary"]
    cfg = cfg.replace(data=cfg.data.replace(test_subset=32))
    qconfig.dump(cfg, run / "config.yaml")
    torch.save(base["checkpoints"]["boundary"]["model"], run / "model.pt")
    return run


@pytest.mark.slow


def test_a_full_disk_leaves_every_old_file_whole_and_no_temporary(deployable, tmp_path):
    pytest.importorskip("onnx")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "model.pt"):
        (run / name).write_bytes((deployable / name).read_bytes())
    old = {name: f"old {name}".encode() * 500 for name in
           ("checkpoint.pt", "model.qcnn", "model.onnx", "accuracy.png", "rounds.jsonl")}
    for name, content in old.items():
        (run / name).write_bytes(content)
    done = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(run)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [f"cannot write {run / name}: File too large" for name in old], done.stdout + done.stderr
    for name, content in old.items():
        assert (run / name).read_bytes() == content, name
    assert _temps(run) == []


@pytest.mark.slow


def test_deploy_on_a_full_disk_stops_with_one_line_naming_the_file(deployable, tmp_path):
    import resource

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "model.pt"):
        (run / name).write_bytes((deployable / name).read_bytes())
    (run / "model.qcnn").write_bytes(b"the last export" * 100)
    done = subprocess.run([sys.executable, str(TRAINING / "deploy.py"), "--run", str(run), "--no-infer"],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert done.returncode == 2 and done.stderr == f"deploy.py: cannot write {run / 'model.qcnn'}: File too large\n", \
        done.stderr
    assert (run / "model.qcnn").read_bytes() == b"the last export" * 100 and _temps(run) == []


# ---------------------------------------------------------------------------- temporaries of killed writers
WRITER_CHILD = r"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)

def slow_disk(fd):  # the temporary is written, not yet renamed
    print("writing", flush=True)
    time.sleep(120)

os.fsync = slow_disk
atomic.write_file(sys.argv[2], b"x" * 1000)
"""


def _start_writer(target: Path) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(ROOT / "python" / "qcnn" / "atomic.py"),
                               str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    return writer


def test_a_killed_writers_temporaries_go_at_the_next_start_and_a_running_ones_stay(base, tmp_path):
    cfg = base["cfg"]["float"].replace(out_dir=str(tmp_path))
    run = cfg.run_dir
    run.mkdir()
    killed, running = _start_writer(run / "summary.json"), _start_writer(run / "model.pt")
    other_target = _start_writer(tmp_path / "other.json")
    try:
        for writer in (killed, other_target):
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        dead_temp, live_temp = (f".summary.json.tmp{killed.pid}", f".model.pt.tmp{running.pid}")
        assert _temps(run) == sorted([dead_temp, live_temp])
        assert not _train(cfg, base["splits"], stop_after_epochs=1)["finished"]
        assert _temps(run) == [live_temp]  # the run's start removed the dead writer's, kept the running one's
        # a write removes the dead temporaries of its own file first, wherever it is
        assert _temps(tmp_path) == [f".other.json.tmp{other_target.pid}"]
        atomic.write_file(tmp_path / "other.json", "{}")
        assert _temps(tmp_path) == []
    finally:
        running.kill()
        running.wait()
    assert atomic.remove_stale_temps(run) == [run / live_temp]


# ------------------------------------------------------------------------- the scripts' --resume and messages
def _suggested_command(script, argv: list[str]):
    """Runs `argv`, which must stop with a one-line message naming options; then runs argv with those options."""
    with pytest.raises(ValueError) as info:
        script.main(argv)
    message = str(info.value)
    options = re.findall(r"(?<![\w-])--[a-z][\w-]*", message)
    assert "\n" not in message and options, message
    return script.main(argv + [option for option in options if option not in argv])


def _script(name: str, splits: Splits, monkeypatch):
    script = load_training_script(name)
    monkeypatch.setattr(script, "build_loaders", lambda *args, **kwargs: splits)
    return script


def test_each_script_that_leaves_a_checkpoint_resumes_with_the_option_its_message_names(tmp_path, monkeypatch):
    splits = _splits()
    model_yaml = "model: {name: vgg_small, kwargs: {width: 4}}\n"
    train = _script("train", splits, monkeypatch)
    config = tmp_path / "base.yaml"
    config.write_text(f"name: base\nout_dir: {tmp_path}\n{model_yaml}training: {{epochs: 2}}\n")
    argv = ["--config", str(config), "--no-progress"]
    assert train.main(argv + ["--stop-after-epochs", "1"]) == {"finished": False}
    assert 0.0 <= _suggested_command(train, argv)["test_acc"] <= 100.0

    retrain_script = _script("retrain", splits, monkeypatch)
    config = tmp_path / "q.yaml"
    config.write_text(f"name: q\nout_dir: {tmp_path}\nbaseline: {tmp_path / 'base' / 'model.pt'}\n{model_yaml}"
                      f"quant: {json.dumps(QUANT)}\nretrain: {{max_rounds: 1, min_rounds: 1, epochs_per_round: 2}}\n")
    argv = ["--config", str(config), "--no-progress"]
    assert retrain_script.main(argv + ["--stop-after-epochs", "1"]) == {"finished": False}
    assert _suggested_command(retrain_script, argv)["rounds"] == 1


def test_an_interrupted_accumulator_search_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    splits = _splits()
    script = _script("search_accumulator", splits, monkeypatch)
    baseline = tmp_path / "baseline.pt"
    torch.manual_seed(0)
    torch.save(models.create("vgg_small", width=4).state_dict(), baseline)

    def config(out_dir: Path) -> Path:
        out_dir.mkdir()
        path = out_dir / "acc.yaml"
        path.write_text(f"name: acc\nout_dir: {out_dir}\nbaseline: {baseline}\n"
                        "model: {name: vgg_small, kwargs: {width: 4}}\n"
                        "quant: {weight: {kind: uniform, bits: 8}, act: {bits: 8}, calibration_batches: 1}\n"
                        "retrain: {max_rounds: 1, min_rounds: 1, epochs_per_round: 2}\n"
                        "search: {acc_bits: 12}\n")
        return path

    whole = script.main(["--config", str(config(tmp_path / "whole")), "--no-progress"])
    argv = ["--config", str(config(tmp_path / "cut")), "--no-progress"]
    assert script.main(argv + ["--stop-after-epochs", "1"]) == {"finished": False}
    assert not (tmp_path / "cut" / "acc" / "model.pt").exists()
    resumed = _suggested_command(script, argv)
    for key in ("val_acc", "test_acc", "engine_test_acc", "overflows", "bits", "rounds"):
        assert resumed[key] == whole[key], key
    whole_state = torch.load(tmp_path / "whole" / "acc" / "model.pt", weights_only=True)
    resumed_state = torch.load(tmp_path / "cut" / "acc" / "model.pt", weights_only=True)
    assert all(torch.equal(whole_state[k], resumed_state[k]) for k in whole_state)
    # an option the script lacks is an argparse error, which the check above would have failed on
    with pytest.raises(SystemExit):
        script.main(argv + ["--no-such-option"])
