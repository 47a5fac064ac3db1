"""Weight and activation quantizer modules."""
from .act import QuantAct, build_act_quantizer
from .weight import (BinaryWeightQuantizer, CodebookWeightQuantizer, FixedPointWeightQuantizer,
                     UniformWeightQuantizer, WeightQuantizer, build_weight_quantizer)

__all__ = ["QuantAct", "build_act_quantizer", "WeightQuantizer", "UniformWeightQuantizer", "BinaryWeightQuantizer",
           "FixedPointWeightQuantizer", "CodebookWeightQuantizer", "build_weight_quantizer"]
