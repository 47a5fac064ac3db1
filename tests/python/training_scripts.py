"""The programs behind training/*.py (qcnn.cli) as modules, for the tests that drive them in-process."""
from __future__ import annotations

import importlib.util
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[2] / "training"  # the programs' entry points, for subprocess runs


def load_training_script(name: str):
    """qcnn.cli.<name> (what training/<name>.py runs), freshly executed (module-level state is not shared between
    tests)."""
    spec = importlib.util.find_spec(f"qcnn.cli.{name}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
