"""Training primitives shared by float training and the retraining loop: optimizer and schedule, one
epoch of training, evaluation, RNG state capture, atomic checkpoints, and the distributed plumbing."""
from __future__ import annotations

import math
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import atomic
from .quantizers.act import QuantAct
from .quantizers.weight import WeightQuantizer

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency
    tqdm = None


# ----------------------------------------------------------------------------------------- distributed
def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError(f"environment variable {name}={value!r} must be an integer >= 0 (torchrun sets it)")
    return number


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """Initializes torch.distributed when launched by torchrun (WORLD_SIZE > 1): nccl on GPU, gloo on CPU.
    device: "auto" (the GPU of this process's LOCAL_RANK when CUDA is available, else the CPU), "cpu" or
    "cuda". Returns (rank, world_size, device)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    local, world = (_env_int(name, default) for name, default in (("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    if world > 1 and not dist.is_initialized() and not all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT",
                                                                                      "RANK")):
        raise ValueError(f"WORLD_SIZE={world} but MASTER_ADDR, MASTER_PORT or RANK is not set: start the script "
                         "with torchrun --nproc_per_node=N, or unset WORLD_SIZE")
    if use_cuda:
        count = torch.cuda.device_count()
        if local >= count:
            raise RuntimeError(f"LOCAL_RANK {local} needs CUDA device {local}, but {count} CUDA device(s) are "
                               "visible: start fewer processes per node, or pass --device cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if use_cuda:
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def sync_state(module: nn.Module) -> None:
    """Copies every parameter and buffer of rank 0 to all ranks (no-op without torch.distributed)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def broadcast_object(obj):
    """rank 0's `obj` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The module a torch.compile, nn.DataParallel or DistributedDataParallel wrapper (or a stack of them) runs;
    any other module itself."""
    while True:
        # OptimizedModule exists only once torch._dynamo is imported, which costs ~1 s: never import it here.
        eval_frame = sys.modules.get("torch._dynamo.eval_frame")
        if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


# ------------------------------------------------------------------------------------ optimization
def build_optimizer(model: nn.Module, tcfg, lr: float) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters of `model`. The quantizers' own parameters
    (learned scales and clips, trained centroids) get no weight decay: it would pull a step size toward 0."""
    quantizer_params = {id(p) for m in model.modules() if isinstance(m, (WeightQuantizer, QuantAct))
                        for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in quantizer_params], "weight_decay": tcfg.weight_decay},
              {"params": [p for p in params if id(p) in quantizer_params], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=tcfg.momentum, nesterov=tcfg.nesterov and tcfg.momentum > 0)
    if tcfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(schedule: str, step: int, total_steps: int, steps_per_epoch: int, tcfg) -> float:
    """Learning-rate multiplier at optimizer step `step` of `total_steps` (stepped once per batch)."""
    t = min(step / max(total_steps, 1), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return tcfg.gamma ** (step // (tcfg.step_size * steps_per_epoch))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    # onecycle: linear warm-up from 10% to the peak, then cosine decay to 0.
    w = tcfg.warmup_fraction
    if t < w:
        return 0.1 + 0.9 * t / w
    return 0.5 * (1.0 + math.cos(math.pi * (t - w) / (1.0 - w)))


def build_scheduler(optimizer, tcfg, schedule: str, epochs: int, steps_per_epoch: int):
    total = epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, total, steps_per_epoch, tcfg))


# ------------------------------------------------------------------------------------------------ loaders
# The loops take any iterable of (x, y) batches: qcnn's TensorLoader, a torch DataLoader (with a
# DistributedSampler under DDP), a list of tuples.
def set_loader_epoch(loader, epoch: int) -> None:
    """Tells the loader (qcnn's TensorLoader) or its sampler (a DataLoader's DistributedSampler) the epoch, so
    the shuffle differs per epoch and is the same on every rank and after a resume; others need nothing."""
    for target in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if target is not None and callable(getattr(target, "set_epoch", None)):
            target.set_epoch(epoch)
            return


def batches_per_epoch(loader, name: str = "train_loader") -> int:
    try:
        n = len(loader)
    except TypeError:
        raise TypeError(f"{name}: the learning-rate schedule needs the number of batches per epoch; pass a "
                        f"loader with a length (a DataLoader, a list of batches), not a {type(loader).__name__}") \
            from None
    if n < 1:
        raise ValueError(f"{name} is empty: it has no batch to train on")
    return n


def batch_input(batch, name: str = "loader") -> torch.Tensor:
    """The input of a batch: the tensor itself, or the first entry of an (x, ...) tuple/list (labels unused)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"{name}: a batch must be a tensor or an (x, ...) tuple of tensors, got {type(batch).__name__}")


def labelled_batch(batch, name: str = "loader") -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(t, torch.Tensor) for t in batch[:2]):
        return batch[0], batch[1]
    raise TypeError(f"{name}: training and evaluation need (x, y) batches of tensors, got {type(batch).__name__}"
                    + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))


def to_model_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """x on the model's device, in its floating dtype (a model converted with .half() reads half inputs)."""
    param = next(model.parameters())
    return x.to(param.device, dtype=param.dtype if x.is_floating_point() else None, non_blocking=True)


def train_epoch(model: nn.Module, loader, optimizer, scheduler, *, label_smoothing: float = 0.0,
                desc: str = "train", progress: bool = True) -> dict:
    """One pass over `loader`; returns {'loss', 'acc'} averaged over this rank's samples."""
    model.train()
    device = next(model.parameters()).device
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(total=batches_per_epoch(loader), desc=desc, leave=False,
               disable=not (progress and is_main())) if tqdm else None
    for batch in loader:
        x, y = labelled_batch(batch, "train_loader")
        x, y = to_model_input(x, model), y.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train_epoch: loss became {loss.item()} ({desc})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = y.shape[0]
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == y).sum())
        seen += n
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
    if bar is not None:
        bar.close()
    return {"loss": total_loss / max(seen, 1), "acc": 100.0 * correct / max(seen, 1)}


def macro_f1(predictions, labels) -> float:
    """Macro F1 in percent: the unweighted mean over classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c),
    over the classes present in `labels` or `predictions` (scikit-learn's f1_score(average='macro'), where a
    class that is predicted but never true, or true but never predicted, has F1 = 0). 0.0 for no samples.
    predictions, labels: 1-D integer tensors (or sequences) of the same length."""
    pred = torch.as_tensor(predictions).detach().cpu()
    true = torch.as_tensor(labels).detach().cpu()
    for name, t in (("predictions", pred), ("labels", true)):
        if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"macro_f1: {name} must be a 1-D integer tensor, got dtype {t.dtype} and shape "
                             f"{tuple(t.shape)}")
    if pred.shape != true.shape:
        raise ValueError(f"macro_f1: predictions ({pred.numel()}) and labels ({true.numel()}) differ in length")
    if pred.numel() == 0:
        return 0.0
    pred, true = pred.to(torch.int64), true.to(torch.int64)
    classes = torch.unique(torch.cat([pred, true]))  # sorted
    p_idx, t_idx = torch.searchsorted(classes, pred), torch.searchsorted(classes, true)
    k = classes.numel()
    true_pos = torch.bincount(t_idx[pred == true], minlength=k).double()
    # 2 TP + FP + FN = (number predicted as c) + (number labelled c) > 0 for every class present
    support = torch.bincount(p_idx, minlength=k).double() + torch.bincount(t_idx, minlength=k).double()
    return float(100.0 * (2.0 * true_pos / support).mean())


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> dict:
    """{'loss', 'acc' (percent), 'f1' (macro F1 in percent, see macro_f1), 'n'} of `model` in eval mode over
    the whole loader."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct, seen = 0.0, 0, 0
    predictions, labels = [], []
    for batch in loader:
        x, y = labelled_batch(batch, "val_loader")
        x, y = to_model_input(x, model), y.to(device)
        logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        predicted = logits.argmax(1)
        correct += int((predicted == y).sum())
        seen += y.shape[0]
        predictions.append(predicted.cpu())
        labels.append(y.cpu())
    model.train(was_training)
    f1 = macro_f1(torch.cat(predictions), torch.cat(labels)) if predictions else 0.0
    return {"loss": total_loss / max(seen, 1), "acc": 100.0 * correct / max(seen, 1), "f1": f1, "n": seen}


@torch.no_grad()
def predict(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels, true labels) over the loader, in eval mode."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    preds, labels = [], []
    for batch in loader:
        x, y = labelled_batch(batch)
        preds.append(model(to_model_input(x, model)).argmax(1).cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels)


# ----------------------------------------------------------------------------------- checkpointing
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def atomic_save(obj, path: str | Path) -> None:
    """torch.save through qcnn.atomic: a crash never leaves a half-written file under `path`, a failed write
    raises atomic.WriteError naming it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_file(path, lambda f: torch.save(obj, f))


def _short(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__} ({text[:60]}...)"


def _plain(value):
    """Tuples as lists, recursively: a loaded state compares equal to a fresh one whichever sequence type it has."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _key_path(field: str, key) -> str:
    if not isinstance(key, str):
        return f"{field}[{key!r}]"
    return f"{field}.{key}" if field else key


class CheckpointFields:
    """Checks of the fields of the checkpoint read from `path`, before anything is restored from it: a failure
    is a ValueError of one line naming the file and the field, e.g. "checkpoint runs/x/checkpoint.pt:
    loop.epoch = -5 is outside [0, 3]"."""

    def __init__(self, path):
        self.path = path

    def fail(self, field: str, problem: str):
        raise ValueError(f"checkpoint {self.path}: {field} {problem}")

    def mapping(self, value, field: str, required=(), optional=None) -> dict:
        """A dict holding every `required` key and, when `optional` is given, no key beyond those two lists."""
        if not isinstance(value, dict):
            self.fail(field, f"must be a mapping, got {_short(value)}")
        for key in required:
            if key not in value:
                self.fail(_key_path(field, key), "is missing")
        if optional is not None:
            for key in value:
                if key not in required and key not in optional:
                    self.fail(_key_path(field, key), "is not a field of a qcnn checkpoint")
        return value

    def sequence(self, value, field: str, length: int | None = None, kind=list, why: str = "") -> list:
        if not isinstance(value, kind):
            self.fail(field, f"must be a {kind.__name__}, got {_short(value)}")
        if length is not None and len(value) != length:
            self.fail(field, f"has {len(value)} entries, expected {length}{why}")
        return value

    def integer(self, value, field: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"must be an integer, got {_short(value)}")
        if not lo <= value <= hi:
            self.fail(field, f"= {value} is outside [{lo}, {hi}]")
        return value

    def number(self, value, field: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, f"must be a number, got {_short(value)}")
        if not math.isfinite(value) or not lo <= value <= hi:
            self.fail(field, f"= {value} is outside [{lo}, {hi}]" if math.isfinite(value)
                      else f"= {value} is not a finite number")
        return float(value)

    def optional_number(self, value, field: str, lo: float = -math.inf, hi: float = math.inf) -> float | None:
        return None if value is None else self.number(value, field, lo, hi)

    def flag(self, value, field: str) -> bool:
        if not isinstance(value, bool):
            self.fail(field, f"must be true or false, got {_short(value)}")
        return value

    def equal(self, value, expected, field: str, why: str = "") -> None:
        if type(value) is not type(expected) and not (isinstance(value, (list, tuple))
                                                      and isinstance(expected, (list, tuple))) \
                or _plain(value) != _plain(expected):
            self.fail(field, f"= {_short(value)}, expected {_short(expected)}{why}")

    def tensor(self, value, field: str, shape=None, dtype=None) -> torch.Tensor:
        """A tensor of that shape and dtype (when given), with finite values if it is floating-point."""
        if not isinstance(value, torch.Tensor):
            self.fail(field, f"must be a tensor, got {_short(value)}")
        if shape is not None and tuple(value.shape) != tuple(shape):
            self.fail(field, f"has shape {list(value.shape)}, expected {list(shape)}")
        if dtype is not None and value.dtype != dtype:
            self.fail(field, f"has dtype {value.dtype}, expected {dtype}")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            self.fail(field, "holds NaN or infinite values")
        return value

    def plain_data(self, value, field: str):
        """JSON data (what the loop writes to its .jsonl files): mappings with string keys, lists, strings,
        numbers, booleans, None."""
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    self.fail(field, f"has the key {_short(key)}; keys are strings")
                self.plain_data(item, _key_path(field, key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                self.plain_data(item, f"{field}[{i}]")
        elif value is not None and not isinstance(value, (str, int, float)):
            self.fail(field, f"must be plain data (numbers, strings, lists, mappings), got {_short(value)}")
        return value

    def state_dict(self, value, field: str) -> dict:
        """A module state dict: tensors under string keys, all finite (the module's load_state_dict checks the
        names and shapes)."""
        self.mapping(value, field)
        for key, tensor in value.items():
            if not isinstance(key, str):
                self.fail(field, f"has the key {_short(key)}; parameter names are strings")
            self.tensor(tensor, f"{field}[{key!r}]")
        return value


_MT19937_WORDS = 624  # numpy's and Python's Mersenne Twister state


def check_rng_state(state, fields: CheckpointFields, field: str = "rng") -> None:
    """`state` (an rng_state()) restores without error and leaves every generator usable: the types and shapes
    rng_state() writes, and a trial restore of each generator (the current states are put back)."""
    fields.mapping(state, field, ("torch", "numpy", "python"), ("cuda",))
    fields.tensor(state["torch"], f"{field}.torch", torch.get_rng_state().shape, torch.uint8)
    numpy_state = fields.sequence(state["numpy"], f"{field}.numpy", 5, tuple)
    fields.equal(numpy_state[0], "MT19937", f"{field}.numpy[0]")
    key = numpy_state[1]
    if not isinstance(key, np.ndarray) or key.dtype != np.uint32 or key.shape != (_MT19937_WORDS,):
        fields.fail(f"{field}.numpy[1]", f"must be a uint32 array of shape [{_MT19937_WORDS}], got {_short(key)}")
    # numpy takes any position and reads past its key with it
    fields.integer(numpy_state[2], f"{field}.numpy[2]", 0, _MT19937_WORDS)
    fields.integer(numpy_state[3], f"{field}.numpy[3]", 0, 1)
    fields.number(numpy_state[4], f"{field}.numpy[4]")
    python_state = fields.sequence(state["python"], f"{field}.python", 3, tuple)
    fields.equal(python_state[0], random.getstate()[0], f"{field}.python[0]")
    words = fields.sequence(python_state[1], f"{field}.python[1]", _MT19937_WORDS + 1, tuple)
    for i, word in enumerate(words):
        fields.integer(word, f"{field}.python[1][{i}]", 0, 2 ** 32 - 1)
    fields.optional_number(python_state[2], f"{field}.python[2]")  # random.gauss's next value
    generators = [("torch", torch.get_rng_state, torch.set_rng_state),
                  ("numpy", np.random.get_state, np.random.set_state),
                  ("python", random.getstate, random.setstate)]
    if "cuda" in state:
        for i, tensor in enumerate(fields.sequence(state["cuda"], f"{field}.cuda")):
            fields.tensor(tensor, f"{field}.cuda[{i}]", dtype=torch.uint8)
        if torch.cuda.is_available():
            generators.append(("cuda", torch.cuda.get_rng_state_all, torch.cuda.set_rng_state_all))
    for name, get, put in generators:
        current = get()
        try:
            put(state[name])
        except Exception as err:  # the generators' own checks (torch's mt19937 validity, device counts)
            fields.fail(f"{field}.{name}", f"cannot be restored ({type(err).__name__}: "
                                           f"{str(err).splitlines()[0] if str(err) else ''})")
        finally:
            put(current)


def check_training_state(optimizer_state, scheduler_state, optimizer: torch.optim.Optimizer, scheduler,
                         steps_done: int, fields: CheckpointFields) -> None:
    """A saved optimizer and LambdaLR state that continue the run: `optimizer` and `scheduler` are the ones the
    loop builds for it (fresh, not stepped), `steps_done` the optimizer steps the loop state says were taken.
    Same groups of the same parameters, the configured hyperparameters, the learning rate the schedule gives
    after steps_done steps, and per-parameter state of the kind and shape one step of `optimizer` makes."""
    fresh_opt, fresh_sched = optimizer.state_dict(), scheduler.state_dict()
    fields.mapping(optimizer_state, "optimizer", ("state", "param_groups"), ())
    groups = fields.sequence(optimizer_state["param_groups"], "optimizer.param_groups", len(fresh_opt["param_groups"]))
    fields.mapping(scheduler_state, "scheduler", tuple(fresh_sched), ())
    fields.equal(scheduler_state["last_epoch"], steps_done, "scheduler.last_epoch",
                 " (the optimizer steps of the epochs the loop state says are done)")
    fields.equal(scheduler_state["_step_count"], steps_done + 1, "scheduler._step_count", " (last_epoch + 1)")
    fields.equal(scheduler_state["base_lrs"], fresh_sched["base_lrs"], "scheduler.base_lrs", " (the configured lr)")
    fields.equal(scheduler_state["lr_lambdas"], fresh_sched["lr_lambdas"], "scheduler.lr_lambdas")
    for key in ("_is_initial", "_get_lr_called_within_step"):
        if key in fresh_sched:
            fields.flag(scheduler_state[key], f"scheduler.{key}")
    last_lrs = fields.sequence(scheduler_state["_last_lr"], "scheduler._last_lr", len(groups))
    params_of = {}
    for g, (group, fresh) in enumerate(zip(groups, fresh_opt["param_groups"])):
        where = f"optimizer.param_groups[{g}]"
        fields.mapping(group, where, tuple(fresh), ())
        fields.equal(group["params"], fresh["params"], f"{where}.params", " (this model's parameters)")
        for key, value in fresh.items():
            if key not in ("params", "lr"):
                fields.equal(group[key], value, f"{where}.{key}", " (from the config)")
        lr = fresh["initial_lr"] * scheduler.lr_lambdas[g](steps_done)
        fields.number(group["lr"], f"{where}.lr", 0.0, fresh["initial_lr"])
        if not math.isclose(group["lr"], lr, rel_tol=1e-9, abs_tol=1e-15):
            fields.fail(f"{where}.lr", f"= {group['lr']}, expected {lr} (the schedule after {steps_done} steps)")
        fields.number(last_lrs[g], f"scheduler._last_lr[{g}]", group["lr"], group["lr"])
        params_of.update(zip(fresh["params"], optimizer.param_groups[g]["params"]))
    per_param = fields.mapping(optimizer_state["state"], "optimizer.state")
    expected = _one_step_state(optimizer) if per_param else {}
    for index, entry in per_param.items():
        if index not in params_of:
            fields.fail("optimizer.state", f"has an entry for parameter {_short(index)}; the model's are 0 to "
                                           f"{len(params_of) - 1}")
        param = params_of[index]
        where = f"optimizer.state[{index}]"
        fields.mapping(entry, where, tuple(expected), ())
        for key, (like_param, shape, dtype) in expected.items():
            value = entry[key]
            if value is None and like_param is None:
                continue
            fields.tensor(value, f"{where}.{key}", param.shape if like_param else shape,
                          param.dtype if like_param else dtype)
            if key == "step":
                fields.number(float(value), f"{where}.step", 1, steps_done)


def _one_step_state(optimizer: torch.optim.Optimizer) -> dict:
    """{state key: (whether it has the parameter's shape, else its shape, its dtype)} of one step of an optimizer
    of the same class and hyperparameters as `optimizer`, over a throwaway parameter. (like_param None: the
    optimizer stores None there.)"""
    param = torch.zeros(2, 3, requires_grad=True)
    param.grad = torch.ones(2, 3)
    probe = type(optimizer)([param], lr=0.0)
    probe.param_groups[0].update({k: v for k, v in optimizer.param_groups[0].items() if k != "params"})
    probe.step()
    return {key: (None, None, None) if value is None else
            (tuple(value.shape) == (2, 3) and value.dim() == 2, tuple(value.shape), value.dtype)
            for key, value in probe.state[param].items()}


def describe_load_error(err: Exception) -> str:
    """The informative part of torch.load's error (its weights_only messages are paragraphs of advice)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"unsupported GLOBAL [\w.]+|Unsupported (?:global|operand)[^\n.]*|failed finding central directory",
                      text, re.IGNORECASE)
    if found:
        return found.group(0)
    return "empty or truncated file" if isinstance(err, EOFError) else f"{type(err).__name__}: {text.strip()[:200]}"


def load_checkpoint(path: str | Path, keys: tuple[str, ...] = ()) -> dict:
    """A dict saved by atomic_save, with at least `keys`, read as data only (weights_only: a hostile file cannot
    run code)."""
    # numpy's RNG state is an ndarray: its rebuilder, the class and its dtype are the only objects allowed
    numpy_array = [np.ndarray.__reduce__(np.zeros(1, np.uint32))[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(numpy_array):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or objects beyond tensors and plain containers
        raise ValueError(f"checkpoint {path}: not a readable qcnn checkpoint ({describe_load_error(err)})") from None
    missing = [key for key in keys if key not in ckpt] if isinstance(ckpt, dict) else list(keys)
    if not isinstance(ckpt, dict) or missing:
        raise ValueError(f"checkpoint {path}: not a qcnn checkpoint (a dict with {list(keys)}; missing {missing})")
    return ckpt
