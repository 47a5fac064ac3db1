"""Weight and activation quantizer modules. Importing the package registers the weight kinds (weight_kinds)."""
from .act import QuantAct, build_act_quantizer
from .weight import WeightQuantizer, build_weight_quantizer
# isort: off  (the kinds register in this order, the order configs and errors list them)
from .weight_uniform import UniformWeightQuantizer
from .weight_binary import BinaryWeightQuantizer
from .weight_fixed import FixedPointWeightQuantizer
from .weight_codebook import CodebookWeightQuantizer
# isort: on

__all__ = ["QuantAct", "build_act_quantizer", "WeightQuantizer", "UniformWeightQuantizer", "BinaryWeightQuantizer",
           "FixedPointWeightQuantizer", "CodebookWeightQuantizer", "build_weight_quantizer"]
