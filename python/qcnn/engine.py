"""Training primitives shared by float training and the retraining loop: optimizer and schedule, one
epoch of training, evaluation, RNG state capture, atomic checkpoints, and the distributed plumbing."""
from __future__ import annotations

import math
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

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
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------ optimization
def build_optimizer(model: nn.Module, tcfg, lr: float) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters of `model`. The quantizers' own parameters
    (learned scales and clips, trained centroids) get no weight decay: it would pull a step size toward 0."""
    from .quantizers.act import QuantAct
    from .quantizers.weight import WeightQuantizer

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
    """torch.save to a temporary file in the same directory, then os.replace: a crash never leaves a
    half-written file under `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
