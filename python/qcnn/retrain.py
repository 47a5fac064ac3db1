"""Float training and Ji et al. 2015's supervised iterative quantization loop, with atomic per-epoch
checkpoints that resume to bit-identical results, and DistributedDataParallel support.

Round r of qcnn.retrain.run: fit codebooks (or scales) on the current latent weights (rank 0, then
broadcast) -> retrain E epochs with quantized weights -> evaluate on the validation split. Stop when the
validation accuracy gain < acc_gain_threshold AND the cluster-change fraction < change_threshold (after
min_rounds), or after max_rounds. In incremental mode (INQ-like) round r instead freezes the share
incremental_fractions[r] of each layer's weights at their quantized values, largest magnitude first.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from . import atomic, engine
from . import quantize as qz
from .config import ConfigError, RunConfig, dump
from .data import set_input_spec

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "qcnn.checkpoint"
# 1: the checkpoint names its format and version. A checkpoint without them (written before, version 0) has the
# same fields and resumes; a later version is refused with the version it needs.
CHECKPOINT_VERSION = 1


class LoopState:
    """What the two loops' states share: their `kind` (a checkpoint's loop.kind) and the round trip through a
    checkpoint's `loop`."""
    kind: ClassVar[str]

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, loop: dict):
        """From a checkpoint's `loop`, once its check (_check_float_loop, _check_retrain_loop) has passed: a field
        the check takes as optional keeps its default where it is absent."""
        return cls(**{f.name: loop[f.name] for f in dataclasses.fields(cls) if f.name in loop})


@dataclass
class FloatState(LoopState):
    """Where float training stands: the epochs done and their records (epochs.jsonl). A checkpoint's `loop`."""
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    kind: ClassVar[str] = "float"

    @property
    def data_epoch(self) -> int:  # the loader epoch of the next batch order
        return self.epoch


@dataclass
class RetrainState(LoopState):
    """Where the retraining loop stands: the round and its epoch, the loader epoch over all rounds, the current
    round's refit information (None before its first epoch), the finished rounds' records, whether the loop has
    converged, the round of the best validation accuracy, and the current round's per-epoch training figures.
    A checkpoint's `loop`."""
    round: int = 0
    epoch: int = 0
    global_epoch: int = 0
    round_info: dict | None = None
    rounds: list[dict] = field(default_factory=list)
    done: bool = False
    best_round: int | None = None
    train_stats: list[dict] = field(default_factory=list)  # optional in a checkpoint
    kind: ClassVar[str] = "retrain"

    @property
    def data_epoch(self) -> int:
        return self.global_epoch


def _wrap_ddp(model: nn.Module) -> nn.Module:
    if engine.world_size() == 1:
        return model
    engine.sync_state(model)
    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    # Buffers (BN statistics, codebooks) are synchronized explicitly from rank 0 after each epoch and refit.
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic.write_file(path, "".join(json.dumps(r) + "\n" for r in records))


def _save(cfg: RunConfig, model: nn.Module, optimizer, scheduler, state: FloatState | RetrainState, loader,
          best_model=None) -> None:
    if not engine.is_main():
        return
    engine.atomic_save({
        "format": {"name": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION},
        "config": cfg.to_dict(),
        "model": engine.unwrap(model).state_dict(),
        "best_model": best_model,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": engine.rng_state(),
        "data_order": {"seed": getattr(loader, "seed", None), "epoch": state.data_epoch},
        "loop": state.to_dict(),
    }, cfg.run_dir / CHECKPOINT)


# What may change between a run and its resumption (a moved run directory, other threads): neither the results
# nor the data order depend on them.
RESUMABLE_CHANGES = ("out_dir", "training.threads", "data.eval_batch_size")


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, path + ".")
        elif a != b and path not in RESUMABLE_CHANGES:
            keys.append(path)
    return keys


CHECKPOINT_KEYS = ("config", "model", "optimizer", "scheduler", "rng", "loop")
OPTIONAL_CHECKPOINT_KEYS = ("best_model", "data_order", "format")


def _read_checkpoint(path: Path, kind: str) -> dict | None:
    if not path.is_file():
        return None
    ckpt = engine.load_checkpoint(path, CHECKPOINT_KEYS)
    fields = engine.CheckpointFields(path)
    fields.mapping(ckpt, "", CHECKPOINT_KEYS, OPTIONAL_CHECKPOINT_KEYS)
    if "format" in ckpt:  # absent: version 0, the same fields
        fmt = fields.mapping(ckpt["format"], "format", ("name", "version"), ())
        fields.equal(fmt["name"], CHECKPOINT_FORMAT, "format.name")
        version = fields.integer(fmt["version"], "format.version", 0, 2 ** 31 - 1)
        if version > CHECKPOINT_VERSION:
            fields.fail("format.version", f"= {version}: written by a newer qcnn (this one reads versions 0 to "
                                          f"{CHECKPOINT_VERSION}); resume with that qcnn, or delete the checkpoint "
                                          "to start over")
    fields.mapping(ckpt["config"], "config")
    loop = ckpt["loop"]
    if not isinstance(loop, dict) or loop.get("kind") != kind:
        found = loop.get("kind") if isinstance(loop, dict) else type(loop).__name__
        raise ValueError(f"--resume: {path} is a {found!r} checkpoint, not {kind!r}")
    return ckpt


def _finished(ckpt: dict, kind: str) -> bool:
    """Whether the checkpoint's run ended (read leniently: an unchecked checkpoint may hold anything)."""
    loop = ckpt["loop"]
    if kind == "retrain":
        return loop.get("done") is True
    training = ckpt["config"].get("training")
    epochs = training.get("epochs") if isinstance(training, dict) else None
    epoch = loop.get("epoch")
    return isinstance(epoch, int) and isinstance(epochs, int) and epoch >= epochs


def _optimizer_and_schedule(model: nn.Module, cfg: RunConfig, kind: str, round_index: int, steps: int):
    """The optimizer and per-batch LambdaLR schedule of the float run (kind 'float') or of retraining round
    `round_index` (kind 'retrain': cosine over retrain.epochs_per_round from retrain.round_lr)."""
    tcfg = cfg.training
    if kind == "float":
        optimizer = engine.build_optimizer(model, tcfg, tcfg.lr)
        return optimizer, engine.build_scheduler(optimizer, tcfg, tcfg.schedule, tcfg.epochs, steps)
    optimizer = engine.build_optimizer(model, tcfg, cfg.retrain.round_lr(round_index))
    return optimizer, engine.build_scheduler(optimizer, tcfg, "cosine", cfg.retrain.epochs_per_round, steps)


# The records of the loop state (also the lines of epochs.jsonl and rounds.jsonl): field -> kind of value.
PERCENT, LOSS, SECONDS, FRACTION = (0.0, 100.0), (0.0, math.inf), (0.0, math.inf), (0.0, 1.0)
EPOCH_RECORD = {"epoch": "int", "train_loss": LOSS, "train_acc": PERCENT, "val_loss": LOSS, "val_acc": PERCENT,
                "val_f1": PERCENT, "seconds": SECONDS}
ROUND_INFO = {"change_fraction": "fraction or None", "layer_change": "fractions", "val_acc_before": PERCENT,
              "val_f1_before": PERCENT, "val_loss_before": LOSS, "fit_seconds": SECONDS}
ROUND_RECORD = {"round": "int", "val_acc": PERCENT, "val_f1": PERCENT, "val_loss": LOSS, "train_loss": LOSS,
                "train_acc": PERCENT, **ROUND_INFO, "quantizers": "data"}
TRAIN_STATS = {"loss": LOSS, "acc": PERCENT}


def _check_record(record, field: str, schema: dict, fields: engine.CheckpointFields, incremental: bool = False) -> dict:
    extra = ("frozen_fraction",) if incremental and "change_fraction" in schema else ()
    fields.mapping(record, field, tuple(schema) + extra, ())
    for key, kind in {**schema, **dict.fromkeys(extra, FRACTION)}.items():
        value, where = record[key], f"{field}.{key}"
        if kind == "int":
            fields.integer(value, where, 0, 10 ** 9)
        elif kind == "fraction or None":
            fields.optional_number(value, where, *FRACTION)
        elif kind == "fractions":
            for name, fraction in fields.mapping(value, where).items():
                fields.optional_number(fraction, f"{where}.{name}", *FRACTION)
        elif kind == "data":
            fields.plain_data(value, where)
        else:
            fields.number(value, where, *kind)
    return record


def _check_float_loop(loop: dict, cfg: RunConfig, fields: engine.CheckpointFields) -> int:
    """Returns the optimizer steps the state says were taken, in epochs."""
    fields.mapping(loop, "loop", ("kind", "epoch", "history"), ())
    epoch = fields.integer(loop["epoch"], "loop.epoch", 0, cfg.training.epochs)
    history = fields.sequence(loop["history"], "loop.history", epoch, why=" (one record per epoch of loop.epoch)")
    for i, record in enumerate(history):
        _check_record(record, f"loop.history[{i}]", EPOCH_RECORD, fields)
        fields.equal(record["epoch"], i + 1, f"loop.history[{i}].epoch")
    return epoch


def _check_retrain_loop(loop: dict, cfg: RunConfig, fields: engine.CheckpointFields) -> int:
    """Returns the epochs of the current round the state says were taken."""
    rcfg = cfg.retrain
    epochs = rcfg.epochs_per_round
    fields.mapping(loop, "loop", ("kind", "round", "epoch", "global_epoch", "round_info", "rounds", "done",
                                  "best_round"), ("train_stats",))
    done = fields.flag(loop["done"], "loop.done")
    limit = len(rcfg.incremental_fractions) if rcfg.incremental else rcfg.max_rounds
    # a checkpoint is written after an epoch; the last one of a round starts the next round (epoch 0)
    round_index = fields.integer(loop["round"], "loop.round", 0, limit if done else limit - 1)
    epoch = fields.integer(loop["epoch"], "loop.epoch", 0, 0 if done else epochs - 1)
    fields.integer(loop["global_epoch"], "loop.global_epoch", 0, limit * epochs)
    fields.equal(loop["global_epoch"], round_index * epochs + epoch, "loop.global_epoch",
                 " (loop.round * retrain.epochs_per_round + loop.epoch)")
    rounds = fields.sequence(loop["rounds"], "loop.rounds", round_index, why=" (one record per round before "
                                                                              "loop.round)")
    for i, record in enumerate(rounds):
        _check_record(record, f"loop.rounds[{i}]", ROUND_RECORD, fields, rcfg.incremental)
        fields.equal(record["round"], i, f"loop.rounds[{i}].round")
    if epoch == 0:
        fields.equal(loop["round_info"], None, "loop.round_info", " (no epoch of loop.round is done)")
    else:
        _check_record(loop["round_info"], "loop.round_info", ROUND_INFO, fields, rcfg.incremental)
    fields.equal(done, _converged(cfg, rounds), "loop.done", " (the convergence rule on loop.rounds)")
    accuracies = [record["val_acc"] for record in rounds]
    fields.equal(loop["best_round"], accuracies.index(max(accuracies)) if rounds else None, "loop.best_round",
                 " (the first round of the best val_acc)")
    for i, stats in enumerate(fields.sequence(loop.get("train_stats", []), "loop.train_stats", epoch,
                                              why=" (one per epoch of loop.epoch)")):
        _check_record(stats, f"loop.train_stats[{i}]", TRAIN_STATS, fields)
    return epoch


def _load_problem(err: Exception) -> str:
    """The first problem load_state_dict names (its first line is a header ending in ':')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def _check_checkpoint(ckpt: dict, cfg: RunConfig, model: nn.Module, kind: str, steps: int,
                      fields: engine.CheckpointFields) -> None:
    """Every field of a checkpoint of this run's config, before anything is restored from it."""
    loop = ckpt["loop"]
    epochs_done = (_check_float_loop if kind == "float" else _check_retrain_loop)(loop, cfg, fields)
    global_epoch = loop["epoch"] if kind == "float" else loop["global_epoch"]
    if "data_order" in ckpt:
        order = fields.mapping(ckpt["data_order"], "data_order", ("seed", "epoch"), ())
        if order["seed"] is not None:
            fields.integer(order["seed"], "data_order.seed", 0, 2 ** 64 - 1)
        fields.equal(order["epoch"], global_epoch, "data_order.epoch", " (the loop's epoch)")
    engine.check_rng_state(ckpt["rng"], fields)
    fields.state_dict(ckpt["model"], "model")
    best = ckpt.get("best_model")
    if kind == "float" or loop["best_round"] is None:
        fields.equal(best, None, "best_model", " (no round has been kept)")
    else:
        fields.state_dict(best, "best_model")
        try:  # what the loop's end loads into the model
            copy.deepcopy(engine.unwrap(model)).load_state_dict(best)
        except (RuntimeError, TypeError, AttributeError, ValueError) as err:
            fields.fail("best_model", f"does not fit this model: {_load_problem(err)}")
    if kind == "float" or loop["round_info"] is not None:
        optimizer, scheduler = _optimizer_and_schedule(engine.unwrap(model), cfg, kind, loop.get("round", 0), steps)
        engine.check_training_state(ckpt["optimizer"], ckpt["scheduler"], optimizer, scheduler,
                                    epochs_done * steps, fields)
    else:  # the next round starts with a new optimizer
        for key in ("optimizer", "scheduler"):
            if ckpt[key] is not None:
                fields.mapping(ckpt[key], key)


def _restore(cfg: RunConfig, model: nn.Module, kind: str, resume: bool, steps: int):
    """The checkpoint to continue from, or None to start the run. An unfinished run continues with resume, of the
    same config only; without resume it is refused rather than overwritten. A finished run is started over unless
    resume finds it under the same config (then it is done). `steps`: optimizer steps per epoch."""
    path = cfg.run_dir / CHECKPOINT
    try:
        ckpt = _read_checkpoint(path, kind)
    except ValueError:
        if resume:
            raise
        return None  # unreadable and not asked for: the new run replaces it
    if ckpt is None:
        if resume and engine.is_main():  # a misspelt name would otherwise start over without a word
            print(f"[{cfg.name}] --resume: no checkpoint in {cfg.run_dir}; starting the run", flush=True)
        return None
    finished = _finished(ckpt, kind)
    changed = _changed_keys(ckpt["config"], cfg.to_dict())
    if not resume or (finished and changed):
        if not finished:
            raise ValueError(f"{path} holds an unfinished {kind} run; pass --resume (resume=True) to continue "
                             "it, or delete the checkpoint to start over")
        return None
    if changed:
        raise ValueError(f"--resume: the config differs from the unfinished run in {path} at {changed}; resume "
                         "with the run's own config (its config.yaml), or start a new run under another name")
    _check_checkpoint(ckpt, cfg, model, kind, steps, engine.CheckpointFields(path))
    try:
        engine.unwrap(model).load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"--resume: {path} does not fit this model: {_load_problem(err)}") from None
    engine.set_rng_state(ckpt["rng"])
    return ckpt


def _begin(cfg: RunConfig, model: nn.Module, kind: str, resume: bool, steps: int):
    """Removes the temporaries a killed writer left in the run directory, then _restore, then the run's
    config.yaml: written only once the checkpoint check let the run go on."""
    if engine.is_main():
        atomic.remove_stale_temps(cfg.run_dir)
    ckpt = _restore(cfg, model, kind, resume, steps)
    if engine.is_main():
        dump(cfg, cfg.run_dir / "config.yaml")
    return ckpt


# --------------------------------------------------------------------------------------- float training
def train_float(model: nn.Module, cfg: RunConfig, train_loader, val_loader, *, resume: bool = False,
                stop_after_epochs: int | None = None, progress: bool = True) -> dict:
    """Trains the float model for cfg.training.epochs with a checkpoint per epoch. Returns
    {'finished', 'history'}; with stop_after_epochs the call returns early (as if killed) after that many
    epochs of this invocation, and a later call with resume=True continues from the checkpoint."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    tcfg = cfg.training
    state = FloatState()
    steps = engine.batches_per_epoch(train_loader)
    ckpt = _begin(cfg, model, "float", resume, steps)
    ddp = _wrap_ddp(model)
    optimizer, scheduler = _optimizer_and_schedule(ddp, cfg, "float", 0, steps)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = FloatState.from_dict(ckpt["loop"])
    done_now = 0
    while state.epoch < tcfg.epochs:
        if stop_after_epochs is not None and done_now >= stop_after_epochs:
            return {"finished": False, "history": state.history}
        epoch = state.epoch
        engine.set_loader_epoch(train_loader, epoch)
        t0 = time.perf_counter()
        stats = engine.train_epoch(ddp, train_loader, optimizer, scheduler, label_smoothing=tcfg.label_smoothing,
                                   desc=f"epoch {epoch + 1}/{tcfg.epochs}", progress=progress)
        engine.sync_state(model)
        val = engine.evaluate(model, val_loader)
        record = {"epoch": epoch + 1, "train_loss": stats["loss"], "train_acc": stats["acc"],
                  "val_loss": val["loss"], "val_acc": val["acc"], "val_f1": val["f1"],
                  "seconds": time.perf_counter() - t0}
        state.history.append(record)
        state.epoch = epoch + 1
        if engine.is_main():
            print(f"[{cfg.name}] epoch {epoch + 1}/{tcfg.epochs} train loss {stats['loss']:.4f} "
                  f"acc {stats['acc']:.2f} | val loss {val['loss']:.4f} acc {val['acc']:.2f} "
                  f"F1 {val['f1']:.2f} ({record['seconds']:.0f}s)", flush=True)
            _write_jsonl(run_dir / "epochs.jsonl", state.history)
        _save(cfg, ddp, optimizer, scheduler, state, train_loader)
        done_now += 1
    return {"finished": True, "history": state.history}


# ---------------------------------------------------------------------------------- retraining loop
def _round_start(model: nn.Module, cfg: RunConfig, state: RetrainState, train_loader) -> dict:
    """Calibration (round 0), refit on rank 0 (or incremental freezing), broadcast, BatchNorm re-estimation
    (retrain.bn_batches). Returns the round info."""
    rcfg = cfg.retrain
    r = state.round
    info = None
    if engine.is_main():
        if rcfg.incremental:
            info = qz.refit_weights(model, refit=(r == 0))
            info["frozen_fraction"] = qz.freeze_weights(model, rcfg.incremental_fractions[r])
        else:
            info = qz.refit_weights(model)
    info = engine.broadcast_object(info)
    engine.sync_state(model)
    if r == 0 and cfg.quant is not None:
        # Activation ranges are observed on the network with its weights already quantized.
        qz.calibrate_activations(model, train_loader, cfg.quant.calibration_batches)
        engine.sync_state(model)
    if rcfg.bn_batches and qz.reestimate_batchnorm(model, train_loader, rcfg.bn_batches):
        engine.sync_state(model)
    return info


def _stop_reason(cfg: RunConfig, state: RetrainState) -> str:
    if not state.done:
        return ""
    if cfg.retrain.incremental:
        return " (all weights frozen)"
    return " (round limit)" if len(state.rounds) >= cfg.retrain.max_rounds else " (converged)"


def _converged(cfg: RunConfig, rounds: list[dict]) -> bool:
    rcfg = cfg.retrain
    if rcfg.incremental:
        return len(rounds) >= len(rcfg.incremental_fractions)
    if len(rounds) >= rcfg.max_rounds:
        return True
    if len(rounds) < max(rcfg.min_rounds, 2):
        return False
    gain = rounds[-1]["val_acc"] - rounds[-2]["val_acc"]
    change = rounds[-1]["change_fraction"]
    return gain < rcfg.acc_gain_threshold and change is not None and change < rcfg.change_threshold


def run(model: nn.Module, cfg: RunConfig, train_loader, val_loader, *, resume: bool = False,
        stop_after_epochs: int | None = None, progress: bool = True) -> dict:
    """The quantize-then-retrain loop on a model already prepared with qcnn.quantize_(model, cfg.quant).

    Writes cfg.run_dir/{config.yaml, checkpoint.pt, rounds.jsonl, accuracy.png, histogram.png} (rank 0 only).
    Returns {'finished', 'rounds': [per-round records]}. stop_after_epochs returns early as if killed after
    that many epochs of this call; resume=True continues from the last checkpoint and ends in exactly the
    state an uninterrupted run reaches.
    """
    if not qz.quant_layers(model):
        raise ValueError("qcnn.retrain.run: the model has no quantized layers; call qcnn.quantize_(model, cfg.quant) first")
    layer, layers = cfg.retrain.histogram_layer, qz.quant_layers(model)
    if layer is not None and layer not in layers:
        raise ConfigError("retrain.histogram_layer", f"{layer!r} is not a quantized layer of the model (layers: "
                          f"{list(layers)})")
    steps = engine.batches_per_epoch(train_loader)
    spec = getattr(train_loader, "input_spec", None)
    if spec is not None:  # what qcnn.export writes into the file
        set_input_spec(model, spec)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    rcfg, tcfg = cfg.retrain, cfg.training
    epochs = rcfg.epochs_per_round
    state = RetrainState()
    ckpt = _begin(cfg, model, "retrain", resume, steps)
    best_model = None  # the state after the round with the best validation accuracy so far
    if ckpt is not None:
        state = RetrainState.from_dict(ckpt["loop"])
        best_model = ckpt.get("best_model")
    ddp = _wrap_ddp(model)
    optimizer = scheduler = None
    if ckpt is not None and state.round_info is not None:
        optimizer, scheduler = _optimizer_and_schedule(ddp, cfg, "retrain", state.round, steps)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    done_now = 0
    while not state.done:
        r = state.round
        if state.round_info is None:
            t0 = time.perf_counter()
            engine.set_loader_epoch(train_loader, state.global_epoch)
            info = _round_start(model, cfg, state, train_loader)
            before = engine.evaluate(model, val_loader)
            info.update(val_acc_before=before["acc"], val_f1_before=before["f1"], val_loss_before=before["loss"],
                        fit_seconds=time.perf_counter() - t0)
            state.round_info = info
            optimizer, scheduler = _optimizer_and_schedule(ddp, cfg, "retrain", r, steps)
            if engine.is_main():
                change = info["change_fraction"]
                print(f"[{cfg.name}] round {r}: refit, cluster change "
                      f"{'-' if change is None else f'{change:.4f}'}, val acc before retraining {before['acc']:.2f} "
                      f"(F1 {before['f1']:.2f})",
                      flush=True)
        while state.epoch < epochs:
            if stop_after_epochs is not None and done_now >= stop_after_epochs:
                return {"finished": False, "rounds": state.rounds}
            engine.set_loader_epoch(train_loader, state.global_epoch)
            stats = engine.train_epoch(ddp, train_loader, optimizer, scheduler,
                                       label_smoothing=tcfg.label_smoothing,
                                       desc=f"round {r} epoch {state.epoch + 1}/{epochs}", progress=progress)
            engine.sync_state(model)
            state.epoch += 1
            state.global_epoch += 1
            state.train_stats.append(stats)
            finished_round = state.epoch == epochs
            if finished_round:
                _finish_round(model, cfg, state, val_loader, stats)
                if state.best_round == state.rounds[-1]["round"]:
                    best_model = copy.deepcopy(model.state_dict())
            _save(cfg, ddp, optimizer, scheduler, state, train_loader, best_model)
            done_now += 1
            if finished_round:
                break
    last = state.rounds[-1]["round"]
    keep_best = rcfg.keep_best and not rcfg.incremental  # INQ's earlier rounds still have float weights
    if keep_best and state.best_round != last:
        model.load_state_dict(best_model)
        if engine.is_main():
            print(f"[{cfg.name}] keeping round {state.best_round} (best validation accuracy), not round {last}",
                  flush=True)
    return {"finished": True, "rounds": state.rounds, "best_round": state.best_round if keep_best else last}


def _finish_round(model: nn.Module, cfg: RunConfig, state: RetrainState, val_loader, stats: dict) -> None:
    val = engine.evaluate(model, val_loader)
    info = state.round_info
    record = {"round": state.round, "val_acc": val["acc"], "val_f1": val["f1"], "val_loss": val["loss"],
              "train_loss": stats["loss"], "train_acc": stats["acc"], **info,
              "quantizers": qz.quant_report(model)}
    state.rounds.append(record)
    if val["acc"] > max((r["val_acc"] for r in state.rounds[:-1]), default=-1.0):
        state.best_round = record["round"]
    state.done = _converged(cfg, state.rounds)
    state.round += 1
    state.epoch = 0
    state.round_info = None
    state.train_stats = []
    if engine.is_main():
        change = record["change_fraction"]
        print(f"[{cfg.name}] round {record['round']}: val acc {val['acc']:.2f} F1 {val['f1']:.2f} "
              f"loss {val['loss']:.4f} "
              f"change {'-' if change is None else f'{change:.4f}'}{_stop_reason(cfg, state)}",
              flush=True)
        _write_jsonl(cfg.run_dir / "rounds.jsonl", state.rounds)
        plot_rounds(state.rounds, cfg.run_dir / "accuracy.png", title=cfg.name)
        layer = cfg.retrain.histogram_layer or qz.default_histogram_layer(model)
        plot_weight_histogram(model, layer, cfg.run_dir / "histogram.png")


# ------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_rounds(rounds: list[dict], path: Path, title: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r["round"] for r in rounds]
    ax.plot(xs, [r["val_acc_before"] for r in rounds], "o--", label="after refit")
    ax.plot(xs, [r["val_acc"] for r in rounds], "o-", label="after retraining")
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic.write_file(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def plot_weight_histogram(model: nn.Module, layer_name: str, path: Path) -> None:
    """Histogram of a layer's latent weights with its quantization levels as vertical lines."""
    plt = _pyplot()
    modules = dict(engine.unwrap(model).named_modules())
    if layer_name not in modules or not hasattr(modules[layer_name], "weight_quant"):
        raise ValueError(f"plot_weight_histogram: {layer_name!r} is not a quantized layer of the model")
    weights, levels = qz.histogram_data(modules[layer_name])
    weights = weights.numpy()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(weights, bins=120, color="0.5")
    for v in levels:
        ax.axvline(v, color="tab:red", lw=0.8)
    per_channel = getattr(modules[layer_name].weight_quant, "per_channel", False)
    ax.set_title(f"{layer_name}{' channel 0' if per_channel else ''}: latent weights, {len(levels)} levels")
    ax.set_xlabel("weight")
    fig.tight_layout()
    atomic.write_file(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
