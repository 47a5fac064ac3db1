"""Goyal et al.'s fixed-point bit-width search: python training/search_fixed_point.py --config configs/fxp_demo.yaml.

The program is qcnn.cli.search_fixed_point (`python -m qcnn.cli.search_fixed_point` runs the same); this file is its
entry point."""
import runpy

if __name__ == "__main__":
    runpy.run_module("qcnn.cli.search_fixed_point", run_name="__main__", alter_sys=True)
