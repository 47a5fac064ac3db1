"""Seed corpora for the fuzz targets: small valid .qcnn files and IDX files.

python3 tests/fuzz/make_seeds.py OUT_DIR writes OUT_DIR/qcnn/*.qcnn and OUT_DIR/idx/*. Hand-built models
need only the standard library; when the qcnn package imports, models exported from random graphs of
every weight kind and coding are added (tests/python/export_helpers.py)."""
from __future__ import annotations

import gzip
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def container(doc: dict, tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    header = {"__metadata__": {"qcnn": json.dumps(doc, separators=(",", ":"))}}
    data = b""
    for name, (dtype, shape, raw) in sorted(tensors.items()):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def pack(values: list[int], bits: int) -> bytes:
    out = bytearray((len(values) * bits + 7) // 8)
    for i, v in enumerate(values):
        for b in range(bits):
            if v >> b & 1:
                j = i * bits + b
                out[j // 8] |= 1 << (j % 8)
    return bytes(out)


def huffman(values: list[int], lengths: list[int]) -> bytes:
    """Canonical code (RFC 1951 3.2.2), most significant bit first."""
    codes, code, prev = {}, 0, 0
    for length, sym in sorted((l, s) for s, l in enumerate(lengths) if l):
        code <<= length - prev
        codes[sym], prev = (code, length), length
        code += 1
    bits = "".join(format(codes[v][0], f"0{codes[v][1]}b") for v in values)
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


def i16(v): return ("I16", struct.pack(f"<{len(v)}h", *v))
def i32(v): return ("I32", struct.pack(f"<{len(v)}i", *v))
def i64(v): return ("I64", struct.pack(f"<{len(v)}q", *v))
def f32(v): return ("F32", struct.pack(f"<{len(v)}f", *v))
def u8(v): return ("U8", bytes(v))


Q8 = {"scale": 0.05, "zero_point": 0, "qmin": 0, "qmax": 255}


class Builder:
    def __init__(self, shape: list[int]):
        c = shape[0]
        self.tensors = {"input.lut": ("I16", [c, 256], struct.pack(f"<{256 * c}h", *(list(range(256)) * c)))}
        self.doc = {"format": "qcnn", "version": 1,
                    "input": {"shape": shape, "mean": [0.0] * c, "std": [1.0] * c, "qparams": Q8, "lut": "input.lut"},
                    "nodes": [], "output": None}

    def add(self, name: str, op: str, inputs: list[str], shape: list[int], qparams=Q8, **fields):
        self.doc["nodes"].append({"name": name, "op": op, "inputs": inputs, "shape": shape, "qparams": qparams, **fields})
        self.doc["output"] = name

    def tensor(self, name: str, shape: list[int], typed) -> None:
        self.tensors[name] = (typed[0], shape, typed[1])

    def weighted(self, name: str, op: str, inputs: list[str], shape: list[int], cin: int, cout: int, kernel, stride,
                 padding, levels: list[int], coding: str = "packed", float_out: bool = False, relu: bool = False):
        k = len(levels)
        bits = max(1, (k - 1).bit_length())
        count = cout * cin * kernel[0] * kernel[1]
        indices = [(i * 7 + 3) % k for i in range(count)]
        if coding == "huffman":
            lengths = [min(i + 1, k - 1) if k > 1 else 1 for i in range(k)]
            self.tensor(f"{name}.weight.code_lengths", [k], u8(lengths))
            data = huffman(indices, lengths)
        else:
            data = pack(indices, bits)
        self.tensor(f"{name}.weight.indices", [len(data)], u8(data))
        self.tensor(f"{name}.weight.levels", [1, k], i16(levels))
        self.tensor(f"{name}.weight.scale", [cout], f32([0.1] * cout))
        fields = dict(kernel=list(kernel), stride=list(stride), padding=list(padding), in_channels=cin,
                      out_channels=cout, input_zero_point=0, relu=relu,
                      weight={"kind": "codebook", "bits": bits, "codes": k, "groups": 1, "count": count, "coding": coding})
        if float_out:
            self.tensor(f"{name}.output.scale", [cout], f32([0.01 * (m + 1) for m in range(cout)]))
            self.tensor(f"{name}.output.bias", [cout], f32([0.5 - m for m in range(cout)]))
            self.add(name, op, inputs, shape, qparams=None, **fields)
        else:
            self.tensor(f"{name}.requant.multiplier", [cout], i32([1 << 30] * cout))
            self.tensor(f"{name}.requant.shift", [cout], u8([36] * cout))
            self.tensor(f"{name}.requant.bias", [cout], i64([1 << 35] * cout))
            self.add(name, op, inputs, shape, clamp=[0, 255], **fields)

    def bytes(self) -> bytes:
        return container(self.doc, self.tensors)


def pool_bomb() -> bytes:
    """About 2 KB and 2 MACs: a 1x1 input pooled up to 2048x2048, then a 1024x1024 average window at stride 1 (10^12
    window cells, hours per image unless the load-time work limit counts them). Not a seed: the engine refuses it."""
    b = Builder([1, 1, 1])
    b.add("up", "adaptive_avg_pool2d", ["input"], [1, 2048, 2048], output_size=[2048, 2048])
    b.add("pool", "avg_pool2d", ["up"], [1, 1025, 1025], kernel=[1024, 1024], stride=[1, 1], padding=[0, 0])
    b.add("g", "global_avg_pool", ["pool"], [1, 1, 1])
    b.add("flat", "flatten", ["g"], [1])
    b.weighted("fc", "linear", ["flat"], [2], 1, 2, (1, 1), (1, 1), (0, 0), [-1, 1], float_out=True)
    return b.bytes()


def hand_built() -> dict[str, bytes]:
    seeds = {}
    b = Builder([1, 2, 2])  # tests/cpp/test_runtime.cpp's TinyModel
    b.add("flat", "flatten", ["input"], [4])
    b.weighted("fc", "linear", ["flat"], [3], 4, 3, (1, 1), (1, 1), (0, 0), [-2, -1, 1, 2], float_out=True)
    seeds["tiny_linear.qcnn"] = b.bytes()

    b = Builder([1, 4, 4])
    b.weighted("conv", "conv2d", ["input"], [2, 4, 4], 1, 2, (3, 3), (1, 1), (1, 1), [-3, -1, 1, 3], relu=True)
    b.add("pool", "max_pool2d", ["conv"], [2, 2, 2], kernel=[2, 2], stride=[2, 2], padding=[0, 0])
    b.add("flat", "flatten", ["pool"], [8])
    b.weighted("fc", "linear", ["flat"], [3], 8, 3, (1, 1), (1, 1), (0, 0), [-2, -1, 1, 2], coding="huffman",
               float_out=True)
    seeds["conv_pool_huffman.qcnn"] = b.bytes()

    b = Builder([2, 4, 4])
    b.weighted("conv", "conv2d", ["input"], [2, 2, 2], 2, 2, (2, 2), (2, 2), (0, 0), [-1, 1])
    b.add("rq", "requantize", ["conv"], [2, 2, 2], input_zero_point=0, multiplier=1 << 30, shift=31, clamp=[0, 255])
    b.add("sum", "add", ["conv", "rq"], [2, 2, 2], a_zero_point=0, a_multiplier=1 << 20, b_zero_point=0,
          b_multiplier=1 << 20, shift=21, relu=True, clamp=[0, 255])
    b.add("avg", "avg_pool2d", ["sum"], [2, 1, 1], kernel=[2, 2], stride=[2, 2], padding=[0, 0])
    b.add("gmax", "global_max_pool", ["avg"], [2, 1, 1])
    b.add("gavg", "global_avg_pool", ["gmax"], [2, 1, 1])
    b.add("relu", "relu", ["gavg"], [2, 1, 1], clamp=[0, 255])
    b.add("flat", "flatten", ["relu"], [2])
    b.weighted("fc", "linear", ["flat"], [2], 2, 2, (1, 1), (1, 1), (0, 0), [-1, 1], float_out=True)
    seeds["requant_add_pools.qcnn"] = b.bytes()
    return seeds


def exported() -> dict[str, bytes]:
    """Models of the real exporter, when the package is importable."""
    import tempfile

    sys.path.insert(0, str(ROOT / "tests" / "python"))
    from export_helpers import random_cnn_graph
    from qcnn.exporter import lower_graph, write_qcnn

    seeds = {}
    variants = [("codebook", 2, {}), ("uniform", 4, {}), ("fixed", 4, {}), ("binary", 1, {}),
                ("codebook", 3, {"residual": True, "avg": True}), ("codebook", 4, {"avg_pool": True}),
                ("codebook", 2, {"per_channel": True})]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, bits, extra) in enumerate(variants):
            for coding in (False, True):
                doc, tensors, _ = lower_graph(random_cnn_graph(kind, bits, seed=i, **extra), entropy_coding=coding)
                path = Path(tmp) / "m.qcnn"
                write_qcnn(path, doc, tensors)
                tag = "_".join([kind, str(bits), *extra, "huffman" if coding else "packed"])
                seeds[f"export_{tag}.qcnn"] = path.read_bytes()
    return seeds


def idx(dims: list[int], data: bytes) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data


def main() -> None:
    out = Path(sys.argv[1])
    (out / "qcnn").mkdir(parents=True, exist_ok=True)
    (out / "idx").mkdir(parents=True, exist_ok=True)
    models = hand_built()
    try:
        models.update(exported())
    except Exception as err:  # no torch, package not built: the hand-built seeds remain
        print(f"make_seeds: exported models skipped ({type(err).__name__}: {err})", file=sys.stderr)
    for name, data in models.items():
        (out / "qcnn" / name).write_bytes(data)
    images = idx([3, 4, 4], bytes(range(48)))
    labels = idx([3], bytes([0, 1, 2]))
    for name, data in {"images.idx": images, "labels.idx": labels, "rgb.idx": idx([2, 3, 2, 2], bytes(24)),
                       "images.idx.gz": gzip.compress(images, mtime=0), "labels.idx.gz": gzip.compress(labels, mtime=0),
                       "two_members.gz": gzip.compress(images[:20], mtime=0) + gzip.compress(images[20:], mtime=0)}.items():
        (out / "idx" / name).write_bytes(data)
    print(f"make_seeds: {len(models)} models, 6 IDX files in {out}")


if __name__ == "__main__":
    main()
