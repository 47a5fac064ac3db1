"""Where a refit of Ji et al.'s loop loses accuracy: python training/refit_probe.py --run runs/refit_warm.

The program is qcnn.cli.refit_probe (`python -m qcnn.cli.refit_probe` runs the same); this file is its entry point."""
import runpy

if __name__ == "__main__":
    runpy.run_module("qcnn.cli.refit_probe", run_name="__main__", alter_sys=True)
