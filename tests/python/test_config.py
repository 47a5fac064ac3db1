import re

import pytest
import yaml

from qcnn import config
from qcnn.config import ConfigError, RunConfig

FULL = {
    "name": "x",
    "data": {"batch_size": 64, "train_subset": 100},
    "model": {"name": "lenet5", "kwargs": {"num_classes": 10}},
    "training": {"epochs": 2, "optimizer": "adam", "lr": 0.001},
    "quant": {
        "weight": {"kind": "codebook", "bits": 3, "method": "lloyd_max"},
        "act": {"bits": 4},
        "overrides": [{"pattern": "features.0", "weight": {"bits": 8}}, {"pattern": "re:classifier\\.\\d+", "act": None}],
    },
    "retrain": {"max_rounds": 3, "incremental": True, "incremental_fractions": [0.5, 1.0]},
}


def test_roundtrip_and_resolved_dump(tmp_path):
    cfg = RunConfig.from_dict(FULL)
    assert cfg.quant.weight.bits == 3 and cfg.quant.overrides[1].act is None
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    config.dump(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["training"]["momentum"] == 0.9  # defaults resolved


@pytest.mark.parametrize("patch, key_path", [
    ({"quant": {"overrides": [{"pattern": "a"}, {"pattern": "b", "weight": {"bits": 9}}]}}, "quant.overrides[1].weight.bits"),
    ({"quant": {"weight": {"kind": "uniform", "bits": 1}}}, "quant.weight.bits"),
    ({"quant": {"act": {"bits": 1, "signed": True}}}, "quant.act.bits"),
    ({"quant": {"weight": {"kind": "binary", "bits": 2}}}, "quant.weight.bits"),
    ({"quant": {"weight": {"kind": "banana"}}}, "quant.weight.kind"),
    ({"quant": {"weight": {"bitz": 3}}}, "quant.weight.bitz"),
    ({"quant": {"overrides": [{"pattern": "a", "weight": {"colour": 1}}]}}, "quant.overrides[0].weight.colour"),
    ({"data": {"batch_size": "big"}}, "data.batch_size"),
    ({"data": {"augment": 1}}, "data.augment"),
    ({"training": {"lr": -1.0}}, "training.lr"),
    ({"training": {"epochs": 2.5}}, "training.epochs"),
    ({"model": {"name": "alexnet"}}, "model.name"),
    ({"retrain": {"incremental": True, "incremental_fractions": [0.5, 0.4, 1.0]}}, "retrain.incremental_fractions"),
    ({"retrain": {"lr_decay": 1.5}}, "retrain.lr_decay"),
    ({"retrain": {"lr_decay": 0.0}}, "retrain.lr_decay"),
    ({"retrain": {"bn_batches": -1}}, "retrain.bn_batches"),
    ({"retrain": {"bn_batches": 2.5}}, "retrain.bn_batches"),
    ({"unknown_section": {}}, "unknown_section"),
    ({"quant": {"weight": {"kind": "binary", "learn_scale": True, "bits": 1}}}, "quant.weight.learn_scale"),
    ({"quant": {"weight": {"kind": "uniform", "track_weights": False}}}, "quant.weight.track_weights"),
    ({"quant": {"weight": {"track_weights": "no"}}}, "quant.weight.track_weights"),
])
def test_errors_name_file_and_key_path(tmp_path, patch, key_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(patch))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.key_path == key_path
    assert str(path) in str(info.value) and key_path in str(info.value)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load(bad)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\n\x9a\xff\n")
    with pytest.raises(ConfigError, match=r"binary.yaml: <root>: not UTF-8 text \(byte offset 8\)"):
        config.load(binary)


def test_override_merging():
    q = config.QuantConfig.from_dict(FULL["quant"])
    merged = config.resolve_weight(q.weight, {"bits": 8})
    assert merged.bits == 8 and merged.method == "lloyd_max"
    assert config.resolve_weight(q.weight, None) is None
    assert config.resolve_weight(q.weight, {}) is q.weight


def test_every_shipped_config_loads():
    """Run configs load as they are; the searches' configs carry a `search:` section their scripts read."""
    from pathlib import Path

    import yaml
    from qcnn.search.accumulator_search import AccumulatorSearchConfig
    from qcnn.search.fixed_point_search import FixedPointSearchConfig
    paths = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        search = yaml.safe_load(path.read_text()).get("search")
        if search is None:
            config.load(path)
        else:
            cls = AccumulatorSearchConfig if "acc_bits" in search else FixedPointSearchConfig
            config.load_with_search(path, cls)
            with pytest.raises(config.ConfigError, match="search: a search script's config .*load_with_search"):
                config.load(path)


def _load_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path, lambda: config.load(path)


def test_yaml_aliases_are_refused(tmp_path):
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")]
    text = "quant:\n  weight:\n    fit_options:\n" + "".join(f"      {line}\n" for line in levels)
    assert len(text) < 1024
    path, load = _load_text(tmp_path, text)
    with pytest.raises(ConfigError, match=r"c\.yaml: quant\.weight\.fit_options\.b\[0\]: YAML aliases are not "
                                          r"allowed \(\*a at line 5, column 14\)"):
        load()
    path.write_text("model:\n  name: lenet5\n  kwargs: {x: &x 3, y: *x}\n")
    with pytest.raises(ConfigError, match=r"model\.kwargs\.y: YAML aliases are not allowed .*line 3"):
        load()


@pytest.mark.parametrize("text, key_path, lines", [
    ("training: {epochs: 3}\nname: x\ntraining: {epochs: 5}\n", "training", (3, 1)),
    ("training:\n  lr: 0.1\n  lr: 0.2\n", "training.lr", (3, 2)),
    ("quant:\n  overrides:\n    - {pattern: a, weight: {bits: 3, bits: 4}}\n", "quant.overrides[0].weight.bits", (3, 3)),
])
def test_duplicate_keys_are_refused(tmp_path, text, key_path, lines):
    path, load = _load_text(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"c\.yaml: {re.escape(key_path)}: duplicate key at line {lines[0]}, .*"
                                          rf"\(first at line {lines[1]}, "):
        load()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "..\\x", "a\0b"])
def test_run_name_is_one_path_component(name):
    with pytest.raises(ConfigError, match="one path component") as info:
        RunConfig.from_dict({"name": name})
    assert info.value.key_path == "name"
    assert RunConfig.from_dict({"name": "a..b"}).run_dir.name == "a..b"


@pytest.mark.parametrize("patch, key_path", [
    ({"training": {"seed": -1}}, "training.seed"),
    ({"training": {"seed": 2**32}}, "training.seed"),
    ({"data": {"seed": -1}}, "data.seed"),
    ({"data": {"seed": 2**63}}, "data.seed"),
    ({"data": {"val_size": 0}}, "data.val_size"),
    ({"retrain": {"acc_gain_threshold": float("nan")}}, "retrain.acc_gain_threshold"),
    ({"retrain": {"acc_gain_threshold": float("inf")}}, "retrain.acc_gain_threshold"),
    ({"retrain": {"acc_gain_threshold": -0.1}}, "retrain.acc_gain_threshold"),
])
def test_range_checks(patch, key_path):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(patch)
    assert info.value.key_path == key_path
    cfg = RunConfig.from_dict({"training": {"seed": 2**32 - 1}, "data": {"seed": 2**32 - 1, "val_size": 1},
                               "retrain": {"acc_gain_threshold": 0.0}})
    assert cfg.training.seed == cfg.data.seed == 2**32 - 1


def test_exponent_floats_without_a_dot(tmp_path):
    _, load = _load_text(tmp_path, "training: {lr: 1e-3, weight_decay: 5E-4, gamma: 1.0e-1, epochs: 3}\n"
                                   "data: {path: '1e-3'}\n")
    cfg = load()
    assert cfg.training.lr == 0.001 and cfg.training.weight_decay == 5e-4 and cfg.training.gamma == 0.1
    assert cfg.training.epochs == 3 and cfg.data.path == "1e-3"
    assert yaml.safe_load("x: 1e-3")["x"] == "1e-3"  # the plain SafeLoader is left as it is
