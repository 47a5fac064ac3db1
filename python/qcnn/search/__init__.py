"""Post-training bit-width searches: `qcnn.search.fixed_point(model, val_loader)` (Goyal et al. 2021) returns a
FixedPointPlan, `qcnn.search.accumulator(model, acc_bits=16)` (de Bruin et al. 2020) an AccumulatorPlan. Their
modules are fixed_point_search and accumulator_search (named apart from the functions, which would shadow them)."""
from .accumulator_search import (AccumulatorPlan, AccumulatorSearchConfig, LayerAccumulator,  # noqa: F401
                                 accumulator, accumulator_report)
from .fixed_point_search import FixedPointPlan, FixedPointSearchConfig, LayerFixedPoint, fixed_point  # noqa: F401
