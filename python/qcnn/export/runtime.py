"""qcnn.load: integer inference of a .qcnn file in PyTorch, through the qcnn integer ops."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import _ops
from .qfile import read_qcnn

WEIGHT_PATHS = ("dense", "shared")


def _tensor(tensors: dict, name: str, dtype: torch.dtype, shape: tuple | None = None) -> torch.Tensor:
    if name not in tensors:
        raise ValueError(f"tensor {name!r} is missing")
    t = tensors[name]
    if t.dtype != dtype:
        raise ValueError(f"tensor {name!r} has dtype {t.dtype}, expected {dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}")
    return t


def decode_indices(tensors: dict, node: dict) -> torch.Tensor:
    """Weight indices [M, K] (uint8) of a conv2d / linear node."""
    info = node["weight"]
    prefix = f"{node['name']}.weight"
    data = _tensor(tensors, f"{prefix}.indices", torch.uint8)
    count = int(info["count"])
    if info["coding"] == "huffman":
        lengths = _tensor(tensors, f"{prefix}.code_lengths", torch.uint8, (info["codes"],))
        flat = _ops.huffman_decode(data, lengths, count)
    elif info["coding"] == "packed":
        flat = _ops.unpack_bits(data, int(info["bits"]), count)
    else:
        raise ValueError(f"node {node['name']!r}: unknown weight coding {info['coding']!r}")
    if int(flat.max()) >= info["codes"]:
        raise ValueError(f"node {node['name']!r}: weight index beyond the codebook")
    return flat.reshape(node["out_channels"], -1)


def weight_levels(tensors: dict, node: dict) -> torch.Tensor:
    """Integer weight table [G, k] (int32, |level| <= 32767) of a conv2d / linear node, after checking
    the I16 levels and the F32 [M] scale (docs/FORMAT.md section 3)."""
    info, m = node["weight"], node["out_channels"]
    prefix = f"{node['name']}.weight"
    if info["groups"] not in (1, m):
        raise ValueError(f"node {node['name']!r}: weight groups must be 1 or out_channels ({m}), got {info['groups']}")
    levels = _tensor(tensors, f"{prefix}.levels", torch.int16, (info["groups"], info["codes"])).to(torch.int32)
    if levels.numel() and int(levels.abs().max()) > 32767:
        raise ValueError(f"tensor {prefix + '.levels'!r} holds -32768; levels must be within +-32767")
    _tensor(tensors, f"{prefix}.scale", torch.float32, (m,))  # not needed by integer inference
    return levels


class IntegerModel(nn.Module):
    """Runs a .qcnn program: uint8 pixels [N, C, H, W] -> float logits [N, classes]."""

    def __init__(self, doc: dict, tensors: dict[str, torch.Tensor], weight_path: str = "dense"):
        super().__init__()
        if weight_path not in WEIGHT_PATHS:
            raise ValueError(f"weight_path must be one of {WEIGHT_PATHS}, got {weight_path!r}")
        self.doc = doc
        self.weight_path = weight_path
        self.input_shape = tuple(doc["input"]["shape"])
        self.register_buffer("lut", _tensor(tensors, doc["input"]["lut"], torch.int16,
                                           (self.input_shape[0], 256)).to(torch.int32))
        self.steps: list[dict] = []
        for node in doc["nodes"]:
            step = dict(node)
            name = node["name"]
            if node["op"] in ("conv2d", "linear"):
                m = node["out_channels"]
                indices = decode_indices(tensors, node)
                levels = weight_levels(tensors, node)
                kh, kw = node["kernel"]
                if weight_path == "dense":
                    table = levels.expand(m, -1)
                    w = torch.gather(table, 1, indices.long()).to(torch.int16)
                    step["weight_int"] = w.reshape(m, node["in_channels"], kh, kw).contiguous()
                else:
                    step["indices"] = indices.contiguous()
                    step["levels"] = levels.contiguous()
                if node["qparams"] is None:
                    step["out_scale"] = _tensor(tensors, f"{name}.output.scale", torch.float32, (m,))
                    step["out_bias"] = _tensor(tensors, f"{name}.output.bias", torch.float32, (m,))
                else:
                    step["multiplier"] = _tensor(tensors, f"{name}.requant.multiplier", torch.int32, (m,))
                    step["shift"] = _tensor(tensors, f"{name}.requant.shift", torch.uint8, (m,)).to(torch.int32)
                    step["bias"] = _tensor(tensors, f"{name}.requant.bias", torch.int64, (m,))
            elif node["op"] == "requantize":
                step["multiplier"] = torch.tensor([node["multiplier"]], dtype=torch.int32)
                step["shift"] = torch.tensor([node["shift"]], dtype=torch.int32)
            self.steps.append(step)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or tuple(pixels.shape[1:]) != self.input_shape:
            raise ValueError(f"pixels must be uint8 [N, {', '.join(map(str, self.input_shape))}], "
                             f"got {pixels.dtype} {list(pixels.shape)}")
        channel = torch.arange(self.input_shape[0])[None, :, None, None]
        values = {"input": self.lut[channel, pixels.long()]}
        out = None
        for s in self.steps:
            x = values[s["inputs"][0]]
            op = s["op"]
            if op in ("conv2d", "linear"):
                n = x.shape[0]
                if op == "linear":
                    x = x.reshape(n, -1, 1, 1)
                zp = s["input_zero_point"]
                if self.weight_path == "dense":
                    acc = _ops.int_conv2d(x, zp, s["weight_int"], s["stride"], s["padding"])
                else:
                    acc = _ops.int_conv2d_shared(x, zp, s["indices"], s["levels"], s["kernel"], s["stride"],
                                                 s["padding"])
                if s["qparams"] is None:
                    y = acc.to(torch.float32) * s["out_scale"][None, :, None, None] + s["out_bias"][None, :, None, None]
                else:
                    lo, hi = s["clamp"]
                    y = _ops.int_requantize(acc, 0, s["bias"], s["multiplier"], s["shift"],
                                            s["qparams"]["zero_point"], lo, hi)
                if op == "linear":
                    y = y.reshape(n, -1)
            elif op == "requantize":
                lo, hi = s["clamp"]
                y = _ops.int_requantize(x, s["input_zero_point"], None, s["multiplier"], s["shift"],
                                        s["qparams"]["zero_point"], lo, hi)
            elif op == "add":
                lo, hi = s["clamp"]
                y = _ops.int_add(x, s["a_zero_point"], s["a_multiplier"], values[s["inputs"][1]], s["b_zero_point"],
                                 s["b_multiplier"], s["shift"], s["qparams"]["zero_point"], lo, hi)
            elif op == "relu":
                y = x.clamp(*s["clamp"])
            elif op == "max_pool2d":
                y = _ops.int_max_pool2d(x, s["kernel"], s["stride"], s["padding"])
            elif op == "avg_pool2d":
                y = _ops.int_avg_pool2d(x, s["kernel"], s["stride"])
            elif op == "global_max_pool":
                y = _ops.int_max_pool2d(x, x.shape[2:], (1, 1))
            elif op == "global_avg_pool":
                y = _ops.int_avg_pool2d(x, x.shape[2:], (1, 1))
            elif op == "flatten":
                y = x.reshape(x.shape[0], -1)
            else:
                raise ValueError(f"node {s['name']!r}: unknown op {op!r}")
            values[s["name"]] = y
            out = y
        return values[self.doc["output"]] if self.doc["output"] in values else out


def load(path: str | Path, weight_path: str = "dense") -> IntegerModel:
    """Loads a .qcnn file as a torch module running integer inference (uint8 pixels -> float logits).

    weight_path: "dense" (integer weights, im2col + int16 GEMM) or "shared" (weight-sharing sums)."""
    doc, tensors = read_qcnn(path)
    try:
        return IntegerModel(doc, tensors, weight_path)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed qcnn metadata ({err!r})") from err
