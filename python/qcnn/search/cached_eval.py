"""The fixed-point search's cached evaluator (qcnn.search.fixed_point): the model's forward as a torch.fx graph run
node by node (TracedForward), so that a candidate for layer i reruns only layer i onwards from the values cached
before it, and the accuracy count over the validation batches from that cache (CachedScorer)."""
from __future__ import annotations

import math
import operator
from typing import Iterable

import torch
import torch.fx
from torch import nn

from ..fold import trace


# --------------------------------------------------------------------------------------- the traced forward
class Untraceable(Exception):
    """The model's forward cannot be run node by node (TracedForward): the search runs it whole."""


# In-place functions the search runs out of place, so that a cached tensor is never overwritten.
OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                 operator.itruediv: operator.truediv, operator.ifloordiv: operator.floordiv,
                 operator.imod: operator.mod, operator.ipow: operator.pow, operator.iand: operator.and_,
                 operator.ior: operator.or_, operator.ixor: operator.xor, operator.imatmul: operator.matmul}


def out_of_place(function):
    """The out-of-place twin of an in-place function (operator.iadd, torch.relu_, F.relu_, ...), else itself."""
    if function in OUT_OF_PLACE:
        return OUT_OF_PLACE[function]
    name = getattr(function, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        for namespace in (torch, torch.nn.functional):
            if getattr(namespace, name, None) is function and hasattr(namespace, name[:-1]):
                return getattr(namespace, name[:-1])
    return function


class TracedForward:
    """The model's forward as a torch.fx graph (convs, linears and qcnn layers as leaves) run node by node, so
    that it can start from the values cached at a cut (a node index) instead of from the input."""

    def __init__(self, root: nn.Module, layer_names: list[str]):
        try:
            graph = trace(root, "qcnn.search.fixed_point")
        except TypeError as err:
            raise Untraceable(f"{type(err.__cause__).__name__}: {err.__cause__}") from err.__cause__
        self.root = root
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise Untraceable(f"the forward takes {len(placeholders)} inputs, not one")
        self.input_node = placeholders[0]
        index = {node: i for i, node in enumerate(self.nodes)}
        self.last_use = [max((index[user] for user in node.users), default=-1) for node in self.nodes]
        # dying[i]: the nodes whose value is last read by node i (dropped after it runs).
        self.dying: list[list[torch.fx.Node]] = [[] for _ in self.nodes]
        for node, last in zip(self.nodes, self.last_use):
            if last >= 0:
                self.dying[last].append(node)
        self.modules = dict(root.named_modules())
        self.cuts: dict[str, int] = {}
        for name in layer_names:
            calls = [i for i, n in enumerate(self.nodes) if n.op == "call_module" and n.target == name]
            if not calls:
                raise Untraceable(f"layer {name!r} is not called as a module in the traced graph")
            self.cuts[name] = calls[0]
        self._live: dict[int, list[torch.fx.Node]] = {}

    def live(self, cut: int) -> list[torch.fx.Node]:
        """The values defined before node `cut` that nodes from `cut` on still read."""
        if cut not in self._live:
            self._live[cut] = [n for i, n in enumerate(self.nodes[:cut]) if self.last_use[i] >= cut]
        return self._live[cut]

    def start(self, x: torch.Tensor) -> dict:
        return {self.input_node: x}

    def _attr(self, target: str):
        value = self.root
        for part in target.split("."):
            value = getattr(value, part)
        return value

    def _execute(self, node: torch.fx.Node, env: dict):
        args = torch.fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            if kwargs.get("inplace") is True:
                kwargs = {**kwargs, "inplace": False}
            return out_of_place(node.target)(*args, **kwargs)
        if node.op == "call_method":
            method = node.target
            if method.endswith("_") and not method.startswith("_") and hasattr(torch.Tensor, method[:-1]):
                method = method[:-1]
            return getattr(args[0], method)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return self._attr(node.target)
        raise Untraceable(f"unexpected node {node.op} {node.target}")

    def run(self, env: dict, start: int, stop: int | None = None):
        """Runs nodes start..stop-1 from `env` (the values live at `start`; not modified). stop None: to the end,
        returning the output tensor; else returns the values live at `stop`."""
        env = dict(env)
        end = len(self.nodes) if stop is None else stop
        for i in range(start, end):
            node = self.nodes[i]
            if node.op == "placeholder":
                continue
            if node.op == "output":
                out = torch.fx.node.map_arg(node.args[0], lambda n: env[n])
                if not isinstance(out, torch.Tensor):
                    raise ValueError(f"qcnn.search.fixed_point: the model must return a logits tensor, got "
                                     f"{type(out).__name__}")
                return out
            env[node] = self._execute(node, env)
            for dead in self.dying[i]:
                env.pop(dead, None)
        return {n: env[n] for n in self.live(end)}

    def bytes_per_sample(self, x: torch.Tensor) -> dict[int, int]:
        """Bytes per image the values live at each layer's cut take (from one batch)."""
        batch = x.shape[0]
        sizes: dict[torch.fx.Node, int] = {}
        env = self.start(x)
        for i, node in enumerate(self.nodes):
            if node.op == "output":
                break
            value = env[node] if node.op == "placeholder" else self._execute(node, env)
            env[node] = value
            if isinstance(value, torch.Tensor):
                sizes[node] = math.ceil(value.numel() * value.element_size() / max(batch, 1))
            for dead in self.dying[i]:
                env.pop(dead, None)
        return {cut: sum(sizes.get(n, 0) for n in self.live(cut)) for cut in self.cuts.values()}


# ----------------------------------------------------------------------------------------- data and scoring
def loader_batches(loader: Iterable, max_batches: int | None, device: torch.device):
    for b, batch in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            return
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, torch.Tensor) for t in batch)):
            raise TypeError("qcnn.search.fixed_point: val_loader must yield (inputs, labels) pairs of tensors")
        x, y = batch
        integer_labels = not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool)
        if x.dim() == 0 or y.dim() != 1 or y.shape[0] != x.shape[0] or not integer_labels:
            raise ValueError("qcnn.search.fixed_point: val_loader's labels must be a 1-D integer tensor with one "
                             f"class index per input; batch {b} has {y.dtype} labels of shape {tuple(y.shape)} for "
                             f"inputs of shape {tuple(x.shape)}")
        yield x.to(device), y.to(device)


class CachedScorer:
    """Counts correct top-1 predictions of the working model over the evaluation batches, from the prefix
    cache of the current cut where there is one, else from the images (kept in memory under the byte cap, else
    read from the loader again)."""

    def __init__(self, work: nn.Module, loader, max_batches, device, cache_bytes: int):
        self.work, self.loader, self.max_batches, self.device = work, loader, max_batches, device
        self.cache_bytes = cache_bytes
        self.stored: list | None = None
        self.num_samples = 0
        self.traced: TracedForward | None = None
        self.cut_bytes: dict[int, int] = {}
        self.prefix: list | None = None
        self.prefix_cut = 0
        self.cached_evaluations = 0

    def source(self):
        if self.stored is not None:
            return iter(self.stored)
        return loader_batches(self.loader, self.max_batches, self.device)

    def use_cut(self, cut: int) -> None:
        """Makes the cache hold the values live before node `cut` (computed with the current formats of every
        layer before it), advancing the current cache when it lies before `cut`."""
        if self.traced is None or cut == 0 or self.cut_bytes.get(cut, math.inf) * self.num_samples > self.cache_bytes:
            self.prefix, self.prefix_cut = None, 0
            return
        if self.prefix is not None and self.prefix_cut == cut:
            return
        if self.prefix is not None and self.prefix_cut < cut:
            old, start = self.prefix, self.prefix_cut
            self.prefix = None
            entries = []
            for i in range(len(old)):
                env, labels = old[i]
                old[i] = None  # free as we go: at most one cache and one batch in memory
                entries.append((self.traced.run(env, start, cut), labels))
        else:
            self.prefix = None
            entries = [(self.traced.run(self.traced.start(x), 0, cut), y) for x, y in self.source()]
        self.prefix, self.prefix_cut = entries, cut

    def reset(self) -> None:
        self.prefix, self.prefix_cut = None, 0

    @torch.no_grad()
    def count_correct(self, min_correct: int | None = None) -> tuple[int, bool]:
        """(correct, complete): complete is False when the count stopped early because even all remaining samples
        right could not reach min_correct."""
        correct = seen = 0
        if self.prefix is not None:
            self.cached_evaluations += 1
            batches = ((self.traced.run(env, self.prefix_cut), y) for env, y in self.prefix)
        elif self.traced is not None:
            batches = ((self.traced.run(self.traced.start(x), 0), y) for x, y in self.source())
        else:
            batches = ((self.work(x), y) for x, y in self.source())
        for logits, labels in batches:
            correct += int((logits.argmax(1) == labels).sum())
            seen += labels.numel()
            if min_correct is not None and correct + (self.num_samples - seen) < min_correct:
                return correct, False
        return correct, True
