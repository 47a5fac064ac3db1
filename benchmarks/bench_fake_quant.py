"""qcnn.ops.fake_quant vs torch.fake_quantize_per_{tensor,channel}_affine, forward and forward+backward."""
from __future__ import annotations

import torch

import common
import qcnn  # noqa: F401
from qcnn.ops import fake_quant

CHANNELS = 256


def sizes(device: str) -> tuple[int, ...]:
    # 16M floats (64 MB) barely exceed an H100/H200's 50-60 MB L2; 256M measure device memory.
    return (1 << 20, 1 << 24) + ((1 << 28,) if device == "cuda" else ())


def cases(device: str):
    for numel in sizes(device):
        x = torch.randn(CHANNELS, numel // CHANNELS, device=device) * 2
        g = torch.randn_like(x)
        s1 = torch.tensor([0.05], device=device)
        z1 = torch.tensor([0], dtype=torch.int32, device=device)
        sc = torch.rand(CHANNELS, device=device) * 0.05 + 0.01
        zc = torch.zeros(CHANNELS, dtype=torch.int32, device=device)
        size = f"{numel >> 20}M"
        yield (f"per_tensor fwd {size}", x, lambda t: fake_quant(t, s1, z1, -128, 127),
               lambda t: torch.fake_quantize_per_tensor_affine(t, 0.05, 0, -128, 127), None)
        yield (f"per_channel fwd {size}", x, lambda t: fake_quant(t, sc, zc, -8, 7, axis=0),
               lambda t: torch.fake_quantize_per_channel_affine(t, sc, zc, 0, -8, 7), None)
        yield (f"per_tensor fwd+bwd {size}", x, lambda t: fake_quant(t, s1, z1, -128, 127),
               lambda t: torch.fake_quantize_per_tensor_affine(t, 0.05, 0, -128, 127), g)
        yield (f"per_channel fwd+bwd {size}", x, lambda t: fake_quant(t, sc, zc, -8, 7, axis=0),
               lambda t: torch.fake_quantize_per_channel_affine(t, sc, zc, 0, -8, 7), g)


def timed(fn, x, g, repeats, device):
    if g is None:
        return common.time_call(lambda: fn(x), repeats, device=device)
    leaf = x.clone().requires_grad_()
    # autograd.grad, not backward(): accumulating into leaf.grad would add three passes to both sides
    return common.time_call(lambda: torch.autograd.grad(fn(leaf), leaf, g), repeats, device=device)


def main() -> None:
    args = common.parser(__doc__).parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        copy_gbps = None
        for case, x, ours, theirs, g in cases(device):
            t_q = timed(ours, x, g, args.repeats, device)
            t_t = timed(theirs, x, g, args.repeats, device)
            extra = {"device": device}
            if device == "cuda":
                # bytes moved: read x (+ read g, write grad) and write y
                moved = x.numel() * x.element_size() * (2 if g is None else 5)
                if copy_gbps is None or x.numel() != copy_numel:
                    copy_numel = x.numel()
                    t_copy = common.time_call(lambda: x.clone(), args.repeats, device=device)
                    copy_gbps = 2 * x.numel() * x.element_size() / t_copy / 1e9
                extra["GB/s"] = moved / t_q / 1e9
                extra["% of copy"] = 100 * extra["GB/s"] / copy_gbps
            rows.append(common.row(f"{device} {case}", t_q, "torch", t_t, **extra))
    common.report("fake_quant", rows, args.json)


if __name__ == "__main__":
    main()
