"""Generate docs/RESULTS.md from runs/*/summary.json: python training/results.py [--runs runs] [--out docs/RESULTS.md].

The program is qcnn.cli.results (`python -m qcnn.cli.results` runs the same); this file is its entry point."""
import runpy

if __name__ == "__main__":
    runpy.run_module("qcnn.cli.results", run_name="__main__", alter_sys=True)
