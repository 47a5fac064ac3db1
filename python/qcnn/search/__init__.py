"""Post-training bit-width searches. `qcnn.search.fixed_point(model, val_loader)` (Goyal et al. 2021) returns a
FixedPointPlan; the module itself is qcnn.search.fixed_point's namesake (import its other names from it,
e.g. `from qcnn.search.fixed_point import FixedPointSearchConfig`)."""
from .fixed_point import FixedPointPlan, FixedPointSearchConfig, LayerFixedPoint, fixed_point  # noqa: F401
from .accumulator import (AccumulatorPlan, AccumulatorSearchConfig, LayerAccumulator, accumulator,  # noqa: F401
                          accumulator_report)
