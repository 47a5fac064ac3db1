"""Run configuration: dataclasses that map one to one onto YAML, validated with errors naming the key path.

    cfg = qcnn.config.load("configs/w4_kmeans.yaml")    # RunConfig
    cfg.to_dict() == RunConfig.from_dict(cfg.to_dict()).to_dict()

Unknown keys, wrong types and out-of-range values raise ConfigError, whose message names the file and the
key path (e.g. ``configs/x.yaml: quant.overrides[1].weight.bits: must be in [2, 8], got 9``).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from . import atomic, models
from .codebook import METHODS
from .config_errors import ConfigError, check_range, join_key
from .quantizers.weight_kinds import weight_kind, weight_kind_names


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, path: str) -> Any:
    """Checks/converts one YAML value against a type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(path, "must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"{value!r} matches none of {[_type_name(a) for a in args if a is not type(None)]}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"must be a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"must be a mapping, got {type(value).__name__}")
        key_tp, val_tp = typing.get_args(tp)
        return {str(k): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return tp.from_dict(value, _path=path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"config: unsupported annotation {tp!r} at {path}")


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return value.to_dict()
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


class Section:
    """from_dict/to_dict/validate for the config dataclasses below, and for the searches' configs
    (qcnn.search), which are sections of the same kind."""

    @classmethod
    def from_dict(cls, data: Any, _path: str = ""):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(_path, f"must be a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(join_key(_path, str(key)), f"unknown key (allowed: {sorted(names)})")
        kwargs = {k: _convert(v, hints[k], join_key(_path, k)) for k, v in data.items()}
        obj = cls(**kwargs)
        obj.validate(_path)
        return obj

    def to_dict(self) -> dict:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def validate(self, path: str = "") -> None:
        """Checks the value ranges; subclasses override. Raises ConfigError naming the key path."""

    def replace(self, **changes):
        obj = dataclasses.replace(self, **changes)
        obj.validate()
        return obj


# numpy's seeds are uint32.
MAX_SEED = 2**32 - 1


@dataclass
class WeightQuantConfig(Section):
    """How the weights of a layer are quantized.

    kind: uniform (bits, granularity, symmetric, calibration max|mse, learn_scale = LSQ), binary
    (alpha*sign(w), alpha = mean|w|), fixed (Qm.n with `bits` total and `frac_bits`, or frac_bits null for
    BW-1-ceil(log2 max|w|)), codebook (qcnn.codebook.fit `method`, per tensor or channel; `train_centroids`
    trains the centroids from per-cluster summed gradients; fit_options go to qcnn.codebook.fit; warm_start:
    refits of the k-means methods (kmeans, kde_kmeans) start from the previous codebook, so the retraining
    loop's refits keep what the last round trained; the other methods refit from scratch; track_weights: a
    table with no more weights than levels (a 1-channel 3x3 stem, depthwise 3x3 at 4 bits) holds its own
    weights and follows them between refits, false keeps it fixed like the others. Left out of to_dict()
    when true).

    accumulator_bits: P in [2, 32] (kind uniform, symmetric only; null = no constraint): the layer's integer
    accumulator must not overflow a signed P-bit register for any input. The quantizer enforces
    ||w_int,c||_1 <= floor((2^(P-1) - 1) / max|x - z_x|) per output channel in every forward (A2Q-style; see
    UniformWeightQuantizer.constrained_scale), max|x - z_x| taken from the layer's input quantizer; the export
    declares P on the layer. Left out of to_dict() when null.
    """

    kind: str = "codebook"
    bits: int = 4
    granularity: Literal["tensor", "channel"] = "channel"
    symmetric: bool = True
    calibration: Literal["max", "mse"] = "mse"
    learn_scale: bool = False
    frac_bits: Optional[int] = None
    method: Literal[METHODS] = "kmeans"
    train_centroids: bool = False
    fit_options: dict[str, Any] = field(default_factory=dict)
    warm_start: bool = True
    track_weights: bool = True
    accumulator_bits: Optional[int] = None

    def validate(self, path: str = "") -> None:
        """The kind is a registered one (qcnn.quantizers.weight_kinds); options of another kind are refused,
        naming the key; then the kind's range of bits and its own checks."""
        names = weight_kind_names()
        if self.kind not in names:
            raise ConfigError(join_key(path, "kind"), f"must be one of {list(names)}, got {self.kind!r}")
        kind = weight_kind(self.kind)
        for other in names:
            for key, is_set in weight_kind(other).options.items():
                if other != self.kind and key not in kind.options and is_set(self):
                    raise ConfigError(join_key(path, key), f"only applies to kind {other!r}, not {self.kind!r}")
        check_range(join_key(path, "bits"), self.bits, *kind.bits)
        if kind.validate is not None:
            kind.validate(self, path)

    def to_dict(self) -> dict:
        out = super().to_dict()
        # Configs and summaries without these options read as before.
        if out["accumulator_bits"] is None:
            del out["accumulator_bits"]
        if out["track_weights"]:
            del out["track_weights"]
        return out


@dataclass
class ActQuantConfig(Section):
    """Uniform activation quantization with a learned clip: PACT (clip alpha) or LSQ (step size), initialized
    by an observer over `calibration_batches` batches (max, or a high percentile of |x|). signed: 'auto' (signed
    exactly when the calibration data has a negative value), true or false (negative values clip to 0)."""

    bits: int = 8
    signed: Union[bool, Literal["auto"]] = "auto"
    method: Literal["pact", "lsq"] = "lsq"
    observer: Literal["max", "percentile"] = "percentile"
    percentile: float = 99.99

    def validate(self, path: str = "") -> None:
        check_range(join_key(path, "bits"), self.bits, 2 if self.signed is True else 1, 8)
        check_range(join_key(path, "percentile"), self.percentile, 50.0, 100.0)


@dataclass
class OverrideConfig(Section):
    """Per-layer override. `pattern` is a glob on the module name (e.g. 'features.0', 'classifier.*') or a
    regex prefixed with 're:'. `weight` / `act` are partial mappings merged over the defaults, null for float,
    and left out to keep the default."""

    pattern: str = ""
    weight: Optional[dict[str, Any]] = field(default_factory=dict)
    act: Optional[dict[str, Any]] = field(default_factory=dict)

    def validate(self, path: str = "") -> None:
        if not self.pattern:
            raise ConfigError(join_key(path, "pattern"), "must be a non-empty glob or 're:<regex>'")
        if self.pattern.startswith("re:"):
            try:
                re.compile(self.pattern[3:])
            except re.error as err:
                raise ConfigError(join_key(path, "pattern"), f"bad regex: {err}") from err


@dataclass
class QuantConfig(Section):
    """Default quantizers plus overrides. `weight` / `act` null means float. `input_act` quantizes the input
    of the first layer (the image; signed) and defaults to `act` with signed=True when left out."""

    weight: Optional[WeightQuantConfig] = None
    act: Optional[ActQuantConfig] = None
    input_act: Optional[ActQuantConfig] = None
    overrides: list[OverrideConfig] = field(default_factory=list)
    calibration_batches: int = 4

    def validate(self, path: str = "") -> None:
        check_range(join_key(path, "calibration_batches"), self.calibration_batches, 1, 10_000)
        for i, override in enumerate(self.overrides):
            resolve_weight(self.weight, override.weight, f"{join_key(path, 'overrides')}[{i}].weight")
            resolve_act(self.act, override.act, f"{join_key(path, 'overrides')}[{i}].act")


def _merge(default: Section | None, partial: dict | None, cls, path: str):
    if partial is None:
        return None
    if not partial:
        return default
    base = default.to_dict() if default is not None else {}
    return cls.from_dict({**base, **partial}, _path=path)


def resolve_weight(default: WeightQuantConfig | None, partial: dict | None, path: str = "") -> WeightQuantConfig | None:
    """The weight quantizer config of a layer: `default` with an override's partial mapping applied."""
    return _merge(default, partial, WeightQuantConfig, path)


def resolve_act(default: ActQuantConfig | None, partial: dict | None, path: str = "") -> ActQuantConfig | None:
    return _merge(default, partial, ActQuantConfig, path)


@dataclass
class DataConfig(Section):
    path: str = "/usr/share/datasets/fashion-mnist"
    val_size: int = 5000
    seed: int = 0
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: bool = True
    crop_padding: int = 2
    hflip: bool = True
    train_subset: Optional[int] = None
    val_subset: Optional[int] = None
    test_subset: Optional[int] = None

    def validate(self, path: str = "") -> None:
        # 0 would leave nothing to select rounds on: every validation accuracy reads 0.
        check_range(join_key(path, "val_size"), self.val_size, 1, 59_999)
        check_range(join_key(path, "seed"), self.seed, 0, MAX_SEED)
        check_range(join_key(path, "batch_size"), self.batch_size, 1, 1 << 16)
        check_range(join_key(path, "eval_batch_size"), self.eval_batch_size, 1, 1 << 16)
        check_range(join_key(path, "crop_padding"), self.crop_padding, 0, 8)
        for key in ("train_subset", "val_subset", "test_subset"):
            check_range(join_key(path, key), getattr(self, key), 1, 60_000)


@dataclass
class ModelConfig(Section):
    """name: a registered model (qcnn.models.names()), 'torchvision.<builder>' (any torchvision.models builder,
    e.g. torchvision.resnet18) or 'package.module:Class' (an nn.Module class or a function annotated to return
    one). kwargs go to it; kwargs.input_adapter: gray28 fits a net made for 3-channel 224x224 images to 1-channel
    28x28 ones (qcnn.models.adapt_to_gray28)."""

    name: str = "vgg_small"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str = "") -> None:
        try:
            models.check_name(self.name)
        except ValueError as err:
            raise ConfigError(join_key(path, "name"), str(err).removeprefix("qcnn.models.create: ")) from None
        adapter = self.kwargs.get("input_adapter")
        if adapter is not None and adapter not in models.INPUT_ADAPTERS:
            raise ConfigError(join_key(path, "kwargs.input_adapter"),
                              f"must be one of {sorted(models.INPUT_ADAPTERS)}, got {adapter!r}")
        try:
            builder = models.builder(self.name)
        except (ImportError, ValueError, TypeError) as err:
            raise ConfigError(join_key(path, "name"), str(err).removeprefix("qcnn.models.create: ")) from None
        _check_builder_kwargs(self.name, builder, {k: v for k, v in self.kwargs.items() if k != "input_adapter"},
                              join_key(path, "kwargs"))


def _signature(fn) -> inspect.Signature | None:
    try:
        return inspect.signature(fn, eval_str=True)
    except NameError:  # an annotation that does not resolve: names and defaults still check
        return inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to check against
        return None


def _check_builder_kwargs(name: str, builder, kwargs: dict, path: str) -> None:
    """ConfigError naming path.<key> for a keyword argument `builder` does not take, a required one missing, or
    a value whose type its annotation (or, without one, its default) rules out."""
    sig = _signature(builder)
    if sig is None:
        return
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = {n: p for n, p in sig.parameters.items() if p.kind in by_keyword}
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    missing = [n for n, p in sig.parameters.items() if p.default is p.empty and n not in kwargs
               and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if missing:
        raise ConfigError(join_key(path, missing[0]), f"required by {name}, missing")
    if open_ended and name.startswith("torchvision."):
        # torchvision's builders pass **kwargs on to the model class they return (their documented interface)
        try:
            returned = typing.get_type_hints(builder).get("return")
        except Exception:  # an annotation that does not resolve
            returned = None
        model_sig = _signature(returned) if isinstance(returned, type) else None
        if model_sig is not None:
            params = {**{n: p for n, p in model_sig.parameters.items() if p.kind in by_keyword}, **params}
            open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in model_sig.parameters.values())
    for key, value in kwargs.items():
        param = params.get(key)
        if param is None:
            if open_ended:
                continue
            raise ConfigError(join_key(path, key), f"unknown keyword argument of {name} (allowed: {sorted(params)})")
        annotation = param.annotation
        if annotation is param.empty or isinstance(annotation, str):
            annotation = type(param.default) if type(param.default) in (bool, int, float, str) else None
        if annotation is None or value is None and param.default is None:
            continue
        try:
            _convert(value, annotation, join_key(path, key))
        except (TypeError, AttributeError):  # an annotation no config value is checked against (a class, a callable)
            pass


@dataclass
class TrainingConfig(Section):
    """Optimizer and schedule. In the retraining loop the schedule restarts every round (over
    retrain.epochs_per_round epochs, starting from retrain.lr)."""

    epochs: int = 10
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant", "onecycle"] = "onecycle"
    step_size: int = 5
    gamma: float = 0.1
    warmup_fraction: float = 0.15
    label_smoothing: float = 0.0
    seed: int = 0
    threads: Optional[int] = None

    def validate(self, path: str = "") -> None:
        check_range(join_key(path, "epochs"), self.epochs, 1, 10_000)
        check_range(join_key(path, "lr"), self.lr, 1e-8, 10.0)
        check_range(join_key(path, "momentum"), self.momentum, 0.0, 0.999)
        check_range(join_key(path, "weight_decay"), self.weight_decay, 0.0, 1.0)
        check_range(join_key(path, "step_size"), self.step_size, 1, 10_000)
        check_range(join_key(path, "gamma"), self.gamma, 0.0, 1.0)
        check_range(join_key(path, "warmup_fraction"), self.warmup_fraction, 0.0, 0.9)
        check_range(join_key(path, "label_smoothing"), self.label_smoothing, 0.0, 0.5)
        check_range(join_key(path, "threads"), self.threads, 1, 1024)
        check_range(join_key(path, "seed"), self.seed, 0, MAX_SEED)


@dataclass
class RetrainConfig(Section):
    """Ji et al. 2015 supervised iterative quantization: each round refits codebooks (scales) on the latent
    weights, retrains `epochs_per_round` epochs and evaluates on the validation split; stop when the val
    accuracy gain (points) < acc_gain_threshold AND the cluster-change fraction < change_threshold, or after
    max_rounds. incremental: INQ-like, round r quantizes and freezes the share incremental_fractions[r] of
    each layer's weights, largest magnitude first (runs exactly len(incremental_fractions) rounds).
    keep_best: end with the state of the round with the best validation accuracy, not the last round
    (ignored in incremental mode, whose earlier rounds are only partly quantized). lr_decay: round r retrains
    from lr * lr_decay^r, so the latent weights drift less each round and the refits settle. bn_batches: after
each refit (and round 0's calibration), re-estimate the BatchNorm statistics over that many training batches
with the new quantized weights (0: keep the statistics the last round trained)."""

    max_rounds: int = 4
    min_rounds: int = 2
    epochs_per_round: int = 1
    lr: float = 0.01
    lr_decay: float = 1.0
    acc_gain_threshold: float = 0.1
    change_threshold: float = 0.02
    incremental: bool = False
    incremental_fractions: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.875, 1.0])
    histogram_layer: Optional[str] = None
    keep_best: bool = True
    bn_batches: int = 0

    def round_lr(self, round_index: int) -> float:
        """The learning rate round `round_index` (from 0) retrains from."""
        return self.lr * self.lr_decay ** round_index

    def validate(self, path: str = "") -> None:
        check_range(join_key(path, "max_rounds"), self.max_rounds, 1, 1000)
        check_range(join_key(path, "min_rounds"), self.min_rounds, 1, self.max_rounds)
        check_range(join_key(path, "epochs_per_round"), self.epochs_per_round, 1, 1000)
        check_range(join_key(path, "lr"), self.lr, 1e-8, 10.0)
        check_range(join_key(path, "lr_decay"), self.lr_decay, 1e-3, 1.0)
        check_range(join_key(path, "acc_gain_threshold"), self.acc_gain_threshold, 0.0, 100.0)
        check_range(join_key(path, "change_threshold"), self.change_threshold, 0.0, 1.0)
        check_range(join_key(path, "bn_batches"), self.bn_batches, 0, 100_000)
        fr = self.incremental_fractions
        for i, f in enumerate(fr):
            check_range(f"{join_key(path, 'incremental_fractions')}[{i}]", f, 1e-6, 1.0)
        if self.incremental:
            if not fr or any(b < a for a, b in zip(fr, fr[1:])) or fr[-1] != 1.0:
                raise ConfigError(join_key(path, "incremental_fractions"),
                                  f"must be non-decreasing and end at 1.0, got {fr}")


@dataclass
class RunConfig(Section):
    """One experiment. `baseline` is the float model to start from (a runs/<name>/model.pt); null trains from
    scratch (train.py) or, for retrain.py, means runs/baseline/model.pt."""

    name: str = "run"
    out_dir: str = "runs"
    baseline: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    quant: Optional[QuantConfig] = None
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def validate(self, path: str = "") -> None:
        if self.name in ("", ".", "..") or any(c in self.name for c in "/\\\0"):
            raise ConfigError(join_key(path, "name"), "must be one path component (not empty, '.' or '..'; no '/', "
                              f"'\\' or NUL), got {self.name!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (an alias bomb expands 1 KB to 10^9 items) and duplicate keys, and reads
    YAML 1.2 exponent floats without a dot or exponent sign ('1e-3', '5E4') as floats, not strings."""

    def __init__(self, stream):
        super().__init__(stream)
        self._paths: list[str] = []

    def compose_node(self, parent, index):
        if parent is None:
            path = ""
        elif isinstance(index, int):
            path = f"{self._paths[-1]}[{index}]"
        elif index is None:  # a mapping key
            path = self._paths[-1]
        else:
            path = join_key(self._paths[-1], str(index.value))
        event = self.peek_event()
        if isinstance(event, yaml.events.AliasEvent):
            raise ConfigError(path, f"YAML aliases are not allowed (*{event.anchor} at {_where(event.start_mark)})")
        self._paths.append(path)
        try:
            return super().compose_node(parent, index)
        finally:
            self._paths.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                seen = first.setdefault((key.tag, key.value), key)
                if seen is not key:
                    raise ConfigError(join_key(self._paths[-1], key.value), f"duplicate key at "
                                      f"{_where(key.start_mark)} (first at {_where(seen.start_mark)})")
        return node


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
                              list("-+.0123456789"))


def read_mapping(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except ConfigError as err:
        raise ConfigError(err.key_path, err.message, file=str(path)) from None
    except OSError as err:
        raise ConfigError("", f"cannot read ({err})", file=str(path)) from err
    except UnicodeDecodeError as err:
        raise ConfigError("", f"not UTF-8 text (byte offset {err.start})", file=str(path)) from err
    except yaml.YAMLError as err:
        raise ConfigError("", f"invalid YAML ({err})", file=str(path)) from err
    if not isinstance(data, dict):
        raise ConfigError("", f"must be a mapping, got {type(data).__name__}", file=str(path))
    return data


def load(path: str | Path) -> RunConfig:
    """Reads and validates a YAML run config; errors name the file and the key path."""
    path = Path(path)
    data = read_mapping(path)
    if "search" in data:
        raise ConfigError("search", "a search script's config (training/search_fixed_point.py, "
                          "training/search_accumulator.py): read it with qcnn.config.load_with_search(path, "
                          "the search's config class)", file=str(path))
    try:
        return RunConfig.from_dict(data)
    except ConfigError as err:
        raise ConfigError(err.key_path, err.message, file=str(path)) from None


def load_with_search(path: str | Path, search_config, check=None):
    """A search script's YAML file: a run config plus a `search:` section parsed by `search_config.from_dict`.
    `check(run_config, search)` may raise ConfigError for combinations; every error names the file and key path."""
    path = Path(path)
    data = dict(read_mapping(path))
    search = data.pop("search", None)
    try:
        cfg = from_dict(data)
        search_cfg = search_config.from_dict(search, _path="search")
        if check is not None:
            check(cfg, search_cfg)
    except ConfigError as err:
        raise ConfigError(err.key_path, err.message, file=str(path)) from None
    return cfg, search_cfg


def from_dict(data: dict) -> RunConfig:
    return RunConfig.from_dict(copy.deepcopy(data))


def dump(cfg: RunConfig, path: str | Path) -> None:
    """Writes the fully resolved config as YAML (loads back to an equal config)."""
    atomic.write_file(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
