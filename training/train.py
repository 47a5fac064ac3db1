"""Train the float baseline: python training/train.py --config configs/baseline.yaml [--resume].

The program is qcnn.cli.train (`python -m qcnn.cli.train` runs the same); this file is its entry point."""
import runpy

if __name__ == "__main__":
    runpy.run_module("qcnn.cli.train", run_name="__main__", alter_sys=True)
