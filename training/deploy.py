"""Deploy a retrained or fixed-point-searched run: export runs/<name>/model.qcnn (and a Huffman-coded copy),.

The program is qcnn.cli.deploy (`python -m qcnn.cli.deploy` runs the same); this file is its entry point."""
import runpy

if __name__ == "__main__":
    runpy.run_module("qcnn.cli.deploy", run_name="__main__", alter_sys=True)
