"""Reading and writing the .qcnn container (safetensors + one JSON document under __metadata__["qcnn"])."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from .. import atomic

FORMAT_NAME = "qcnn"
FORMAT_VERSION = 1
METADATA_KEY = "qcnn"


def write_qcnn(path: str | Path, doc: dict, tensors: dict[str, torch.Tensor]) -> int:
    """Writes the file atomically (qcnn.atomic: a failure raises WriteError and leaves no partial file); returns
    its size in bytes."""
    path = Path(path)
    if path.is_dir():  # Path("") is "." too
        raise IsADirectoryError(f"qcnn.export: {str(path)!r} is a directory, not a file path")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"qcnn.export: the directory of {str(path)!r} does not exist")
    content = save({k: v.contiguous() for k, v in tensors.items()},
                   metadata={METADATA_KEY: json.dumps(doc, separators=(",", ":"))})
    atomic.write_file(path, content)
    return len(content)


def read_qcnn(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"qcnn file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{path}: not a valid safetensors container ({err})") from err
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: __metadata__ has no {METADATA_KEY!r} entry; not a .qcnn file")
    try:
        doc = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: __metadata__[{METADATA_KEY!r}] is not valid JSON ({err})") from err
    if doc.get("format") != FORMAT_NAME or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format {doc.get('format')!r} version {doc.get('version')!r}; "
                         f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}")
    return doc, tensors
