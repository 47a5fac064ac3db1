"""qcnn's command-line programs, one module per program, each run as `python -m qcnn.cli.<name> ...` or as
`python training/<name>.py ...` (a thin entry point): train (the float baseline), retrain (quantize and retrain, Ji
et al.'s loop), search_fixed_point (Goyal et al.), search_accumulator (de Bruin et al.), deploy (export and check on
the engine), demo (make demo: all of them on one config), results (docs/RESULTS.md) and refit_probe."""
from __future__ import annotations

from pathlib import Path

# The checkout the programs' default paths refer to (configs/, runs/, build/qcnn-infer, docs/): the package is
# installed in place (pip install -e, make setup), python/qcnn/cli -> the repository root.
REPO_ROOT = Path(__file__).resolve().parents[3]
