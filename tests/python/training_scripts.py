"""The scripts of training/ as modules, for the tests that drive them in-process."""
from __future__ import annotations

import importlib.util
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[2] / "training"


def load_training_script(name: str):
    """training/<name>.py, freshly executed (module-level state is not shared between tests)."""
    spec = importlib.util.spec_from_file_location(name, TRAINING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
