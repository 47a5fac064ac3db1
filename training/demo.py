"""make demo: a float baseline (configs/baseline.yaml cut to 3 epochs, as runs/demo_baseline; reused when it.

The program is qcnn.cli.demo (`python -m qcnn.cli.demo` runs the same); this file is its entry point."""
import runpy

if __name__ == "__main__":
    runpy.run_module("qcnn.cli.demo", run_name="__main__", alter_sys=True)
