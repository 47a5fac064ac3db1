"""Quantize a float model and retrain it: python training/retrain.py --config configs/w3_kmeans.yaml [--resume].

The program is qcnn.cli.retrain (`python -m qcnn.cli.retrain` runs the same); this file is its entry point."""
import runpy

if __name__ == "__main__":
    runpy.run_module("qcnn.cli.retrain", run_name="__main__", alter_sys=True)
