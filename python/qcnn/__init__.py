"""qcnn: quantize convolutional networks, retrain them, and deploy them on integer kernels."""
from pathlib import Path as _Path

import torch as _torch


def _load_extension() -> None:
    try:
        from . import _C  # noqa: F401  (registers torch.ops.qcnn.*)
    except ImportError as err:  # pragma: no cover - exercised only on a broken install
        built = sorted(p.name for p in _Path(__file__).parent.glob("_C*"))
        raise ImportError(
            f"qcnn: cannot load the compiled extension qcnn._C ({err}). "
            f"Compiled files next to qcnn/__init__.py: {built or 'none'}. "
            "Build it with `make setup` or `pip install --no-build-isolation -e .` "
            f"against the installed torch {_torch.__version__}."
        ) from err


_load_extension()

from . import ops  # noqa: E402,F401

__version__ = "0.1.0"

from . import config, data, engine, fold, models, nn, quantizers  # noqa: E402,F401
from . import analysis  # noqa: E402,F401
from . import search  # noqa: E402,F401
from . import retrain  # noqa: E402,F401  (qcnn.retrain.run: Ji et al.'s loop on any (x, y) loader)
from .fold import fold_batchnorm  # noqa: E402,F401
from .quantize import quant_report, quantize_  # noqa: E402,F401

# Deployment: `qcnn.export(model, path)`, `qcnn.load(path)`, `qcnn.export_onnx(model, path)`; the exporter's parts
# (graph, tracing, lowering, the .qcnn file, ONNX) are in qcnn.exporter.
from .exporter import export, export_onnx, load  # noqa: E402,F401
