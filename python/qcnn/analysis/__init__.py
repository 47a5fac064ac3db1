"""Analysis of quantized models: the bit-operation cost model (`qcnn.analysis.cost`)."""
from .cost_model import CostReport, LayerCost, cost

__all__ = ["CostReport", "LayerCost", "cost"]
