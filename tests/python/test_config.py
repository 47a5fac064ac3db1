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
