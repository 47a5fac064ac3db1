"""Accumulator-constrained quantization (de Bruin et al. 2020; A2Q): python training/search_accumulator.py --config
configs/acc16_demo.yaml [--resume].

The program is qcnn.cli.search_accumulator (`python -m qcnn.cli.search_accumulator` runs the same); this file is its
entry point."""
import runpy

if __name__ == "__main__":
    runpy.run_module("qcnn.cli.search_accumulator", run_name="__main__", alter_sys=True)
