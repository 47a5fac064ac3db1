"""Shared plumbing for the benchmark scripts: timing, machine description, table and JSON output.

Every benchmark compares qcnn with its anchor in the same process on the same inputs and writes
{"bench": NAME, "machine": {...}, "rows": [{"case", "qcnn_s", "anchor", "anchor_s", "ratio", ...}]}
with ratio = anchor_s / qcnn_s (above 1: qcnn is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON to this path")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per case (median is reported)")
    return p


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cpu_flags"] = cpu_flags()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


# The /proc/cpuinfo names of the x86 features the integer kernels choose between.
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni")


def cpu_flags(names: tuple[str, ...] = ISA_FLAGS) -> dict[str, bool]:
    """Which of `names` the CPU reports in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return {}
    present = set(line.split(":", 1)[-1].split())
    return {name: name in present for name in names}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall time of fn() in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def row(case: str, qcnn_s: float, anchor: str, anchor_s: float, **extra) -> dict:
    return {"case": case, "qcnn_s": qcnn_s, "anchor": anchor, "anchor_s": anchor_s,
            "ratio": anchor_s / qcnn_s if qcnn_s > 0 else float("inf"), **extra}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0].keys())
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def report(bench: str, rows: list[dict], json_path: Path | None, extra: dict | None = None) -> None:
    """Prints the rows and every list of rows in `extra` (under its key) as markdown tables; writes all of it,
    extra's other values too, to json_path."""
    print(f"## {bench}\n")
    print(markdown_table(rows))
    for key, table in (extra or {}).items():
        if isinstance(table, list):
            print(f"\n## {bench}: {key}\n")
            print(markdown_table(table))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"bench": bench, "machine": machine(), "rows": rows, **(extra or {})}
        json_path.write_text(json.dumps(doc, indent=2))
        print(f"\nwrote {json_path}")
