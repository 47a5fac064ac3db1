"""What every quantizer module shares."""
from __future__ import annotations

import torch
from torch import nn

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class QuantizerModule(nn.Module):
    """A quantizer keeps its floating state (scales, clips, codebooks) in float32 when the model is converted
    with .half() / .bfloat16() / .to(dtype): the quantization grid is computed in float32 whatever the
    activations' dtype, as the fake-quant ops require. Device moves apply as usual.

    Under torch.compile (fullgraph=True too) the forward reads its state only as tensors: nothing branches on
    a buffer's value, and state that an eager forward would initialise on its first batch (calibration, the
    first fit) must be there already (_needs_init)."""

    def _needs_init(self, ready: torch.Tensor, what: str) -> bool:
        """Whether this eager forward must initialise the state the bool buffer `ready` marks. A compiled
        graph cannot calibrate or fit: it checks `ready` and raises a RuntimeError naming the quantizer."""
        if torch.compiler.is_compiling():
            torch._assert_async(ready, f"qcnn: a {type(self).__name__} is not {what}; run the model eagerly on one "
                                "batch (or qcnn.retrain.calibrate) before torch.compile")
            return False
        return not bool(ready)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for param in self._parameters.values():
            if param is not None and param.dtype in _LOW_PRECISION:
                param.data = param.data.float()
                if param.grad is not None:
                    param.grad.data = param.grad.data.float()
        for name, buffer in self._buffers.items():
            if buffer is not None and buffer.dtype in _LOW_PRECISION:
                self._buffers[name] = buffer.float()
        return self
