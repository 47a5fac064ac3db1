"""The training loops: exact resumption after an interruption, convergence rule, outputs."""
import importlib.util
import json
import re

import pytest
import torch

import qcnn
from qcnn import config as qconfig, engine, models, retrain
from qcnn.data import build_loaders

HAVE_QUANT_OPS = hasattr(qcnn.ops, "fake_quant") and importlib.util.find_spec("qcnn.codebook") is not None


def _cfg(tmp_path, name, **quant):
    data = {"train_subset": 256, "val_subset": 128, "test_subset": 128, "batch_size": 64}
    cfg = {"name": name, "out_dir": str(tmp_path), "data": data,
           "model": {"name": "vgg_small", "kwargs": {"width": 4}},
           "training": {"epochs": 3, "lr": 0.05}}
    if quant:
        cfg["quant"] = quant
        cfg["retrain"] = {"max_rounds": 2, "min_rounds": 2, "epochs_per_round": 2, "lr": 0.01}
    return qconfig.from_dict(cfg)


def _fresh(cfg, quantize=True):
    engine.seed_everything(0)
    model = models.create(cfg.model.name, **cfg.model.kwargs)
    splits = build_loaders(cfg.data)
    if cfg.quant is not None and quantize:
        qcnn.quantize_(model, cfg.quant)
    return model, splits


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_float_training_resumes_exactly(tmp_path):
    full_cfg, cut_cfg = _cfg(tmp_path, "full"), _cfg(tmp_path, "cut")
    model, splits = _fresh(full_cfg)
    assert retrain.train_float(model, full_cfg, splits.train, splits.val, progress=False)["finished"]

    cut, cut_splits = _fresh(cut_cfg)
    assert not retrain.train_float(cut, cut_cfg, cut_splits.train, cut_splits.val, stop_after_epochs=1,
                                   progress=False)["finished"]
    torch.manual_seed(1234)  # the resumed process starts from other RNG states and another init
    resumed, res_splits = _fresh(cut_cfg)
    for p in resumed.parameters():
        p.data.normal_()
    assert retrain.train_float(resumed, cut_cfg, res_splits.train, res_splits.val, resume=True,
                               progress=False)["finished"]
    _assert_same_state(model, resumed)
    history = [json.loads(line) for line in (tmp_path / "cut" / "epochs.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(0.0 <= h["val_f1"] <= 100.0 for h in history)


def test_an_unfinished_run_is_neither_overwritten_nor_resumed_under_another_config(tmp_path):
    cfg = _cfg(tmp_path, "cut")
    model, splits = _fresh(cfg)
    assert not retrain.train_float(model, cfg, splits.train, splits.val, stop_after_epochs=1, progress=False)["finished"]
    checkpoint = (tmp_path / "cut" / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="holds an unfinished float run; pass --resume"):
        retrain.train_float(model, cfg, splits.train, splits.val, progress=False)
    changed = cfg.replace(training=cfg.training.replace(lr=0.9), data=cfg.data.replace(seed=5))
    with pytest.raises(ValueError, match=r"config differs .* at \['data.seed', 'training.lr'\]"):
        retrain.train_float(model, changed, splits.train, splits.val, resume=True, progress=False)
    assert (tmp_path / "cut" / "checkpoint.pt").read_bytes() == checkpoint
    # neither the run directory's place nor the threads change the results: a run may resume with others
    import shutil
    shutil.copytree(tmp_path / "cut", tmp_path / "moved" / "cut")
    moved = cfg.replace(out_dir=str(tmp_path / "moved"), training=cfg.training.replace(threads=2))
    assert retrain.train_float(model, moved, splits.train, splits.val, resume=True, progress=False)["finished"]
    # a finished run under a changed config is a new run
    longer = moved.replace(training=cfg.training.replace(epochs=4))
    result = retrain.train_float(model, longer, splits.train, splits.val, resume=True, progress=False)
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4]


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("content", ["pickle", "empty", "truncated", "list"])
def test_resume_reads_a_hostile_checkpoint_as_data_only(tmp_path, content):
    cfg = _cfg(tmp_path, "hostile")
    model, splits = _fresh(cfg)
    path = tmp_path / "hostile" / "checkpoint.pt"
    path.parent.mkdir()
    marker = tmp_path / "code_ran"
    if content == "pickle":
        torch.save({"model": _RunsCode(marker)}, path)
    elif content == "list":
        torch.save([1, 2], path)
    else:
        engine.atomic_save({"model": model.state_dict()}, path)
        path.write_bytes(b"" if content == "empty" else path.read_bytes()[:300])
    with pytest.raises(ValueError, match=f"checkpoint {path}: not a .*qcnn checkpoint"):
        retrain.train_float(model, cfg, splits.train, splits.val, resume=True, progress=False)
    assert not marker.exists()


def test_checkpoint_is_atomic(tmp_path):
    engine.atomic_save({"a": torch.ones(3)}, tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert torch.equal(engine.load_checkpoint(tmp_path / "c.pt")["a"], torch.ones(3))


def test_lr_schedules():
    tcfg = qconfig.TrainingConfig(warmup_fraction=0.2, step_size=1, gamma=0.5)
    one = [engine.lr_factor("onecycle", s, 100, 10, tcfg) for s in range(101)]
    assert one[0] == pytest.approx(0.1) and max(one) == pytest.approx(1.0, abs=0.01) and one[-1] == pytest.approx(0.0)
    assert engine.lr_factor("step", 25, 100, 10, tcfg) == pytest.approx(0.25)
    assert engine.lr_factor("cosine", 50, 100, 10, tcfg) == pytest.approx(0.5)


def test_run_requires_quantized_model(tmp_path):
    cfg = _cfg(tmp_path, "noquant")
    model, splits = _fresh(cfg)
    with pytest.raises(ValueError, match="quantize_"):
        retrain.run(model, cfg, splits.train, splits.val, progress=False)


CODEBOOK_QUANT = {"weight": {"kind": "codebook", "bits": 2, "method": "kmeans", "granularity": "channel"},
                  "act": {"bits": 4}, "calibration_batches": 2}


@pytest.mark.skipif(not HAVE_QUANT_OPS, reason="qcnn.ops.fake_quant / quantize_to_codebook not built yet")
def test_a_misspelt_histogram_layer_stops_the_loop_before_round_0(tmp_path):
    cfg = _cfg(tmp_path, "hist", **CODEBOOK_QUANT)
    cfg = cfg.replace(retrain=cfg.retrain.replace(histogram_layer="features.99"))
    model, splits = _fresh(cfg)
    with pytest.raises(qconfig.ConfigError, match=r"retrain.histogram_layer: 'features.99' is not a quantized layer"):
        retrain.run(model, cfg, splits.train, splits.val, progress=False)
    assert not (tmp_path / "hist" / "rounds.jsonl").exists()


@pytest.mark.skipif(not HAVE_QUANT_OPS, reason="qcnn.ops.fake_quant / quantize_to_codebook not built yet")
@pytest.mark.parametrize("variant", ["iterative", "incremental"])
@pytest.mark.slow
def test_retrain_loop_resumes_exactly(tmp_path, variant):
    quant = dict(CODEBOOK_QUANT)
    if variant == "incremental":
        quant["weight"] = {**quant["weight"], "train_centroids": True}
    full_cfg, cut_cfg = _cfg(tmp_path, "full", **quant), _cfg(tmp_path, "cut", **quant)
    if variant == "incremental":
        rc = full_cfg.retrain.replace(incremental=True, incremental_fractions=[0.6, 1.0])
        full_cfg, cut_cfg = full_cfg.replace(retrain=rc), cut_cfg.replace(retrain=rc)
    model, splits = _fresh(full_cfg)
    result = retrain.run(model, full_cfg, splits.train, splits.val, progress=False)
    assert result["finished"] and len(result["rounds"]) == 2
    vals = [r["val_acc"] for r in result["rounds"]]
    if variant == "iterative":  # ends in the state of the best validation round (the first of equals)
        assert result["best_round"] == vals.index(max(vals))
        final = engine.evaluate(model, splits.val)
        assert final["acc"] == vals[result["best_round"]]
        assert final["f1"] == result["rounds"][result["best_round"]]["val_f1"]
    else:  # INQ keeps its last round: the earlier ones are only partly quantized
        assert result["best_round"] == 1

    for stop in (1, 1, None):  # interrupted mid-round, then at the round boundary, then to the end
        resumed, res_splits = _fresh(cut_cfg)
        out = retrain.run(resumed, cut_cfg, res_splits.train, res_splits.val, resume=True,
                          stop_after_epochs=stop, progress=False)
    assert out["finished"]
    _assert_same_state(model, resumed)
    assert [r["val_acc"] for r in out["rounds"]] == [r["val_acc"] for r in result["rounds"]]
    rounds = [json.loads(l) for l in (tmp_path / "cut" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[0]["change_fraction"] is None and 0.0 <= rounds[1]["change_fraction"] <= 1.0
    assert [r["val_f1"] for r in rounds] == [r["val_f1"] for r in result["rounds"]]
    assert all(0.0 <= r["val_f1"] <= 100.0 and 0.0 <= r["val_f1_before"] <= 100.0 for r in rounds)
    assert (tmp_path / "cut" / "accuracy.png").stat().st_size > 0
    assert (tmp_path / "cut" / "histogram.png").stat().st_size > 0
    if variant == "incremental":
        assert [r["frozen_fraction"] for r in rounds] == pytest.approx([0.6, 1.0], abs=0.01)


def test_convergence_rule():
    cfg = qconfig.from_dict({"retrain": {"max_rounds": 5, "min_rounds": 2, "acc_gain_threshold": 0.1,
                                         "change_threshold": 0.02}})
    r = lambda acc, change: {"val_acc": acc, "change_fraction": change}  # noqa: E731
    assert not retrain._converged(cfg, [r(90.0, None)])
    assert retrain._converged(cfg, [r(90.0, None), r(90.05, 0.01)])
    assert not retrain._converged(cfg, [r(90.0, None), r(90.05, 0.05)])   # clusters still moving
    assert not retrain._converged(cfg, [r(90.0, None), r(90.5, 0.01)])    # accuracy still rising
    assert retrain._converged(cfg, [r(90.0, None)] + [r(91.0 + i, 0.5) for i in range(4)])  # round limit


@pytest.mark.skipif(not HAVE_QUANT_OPS, reason="qcnn.ops.fake_quant / quantize_to_codebook not built yet")
@pytest.mark.slow
def test_demo_quick(tmp_path):
    from qcnn.cli import demo, deploy
    if not deploy.DEFAULT_INFER.is_file():
        pytest.skip(f"{deploy.DEFAULT_INFER} not built (make setup builds it)")
    summary = demo.main(["--quick", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved["float_test_acc"] == summary["float_test_acc"] and 0.0 <= saved["quant_test_acc"] <= 100.0
    assert len(saved["round_table"]) == saved["rounds"] >= 1
    # The exported file runs in both integer runtimes and predicts what the fake-quant model predicts.
    dep = saved["deploy"]
    assert (tmp_path / "demo" / "model.qcnn").stat().st_size == dep["file_bytes_packed"]
    assert dep["fake_quant_test_acc"] == pytest.approx(saved["quant_test_acc"], abs=1e-9)
    assert dep["images"] == 256 and dep["file_bytes_packed"] < dep["float32_bytes"]
    assert dep["load_agreement"] >= 98.0 and dep["infer_agreement"] >= 98.0
    assert dep["infer_agreement_with_load"] == 100.0 and dep["logits_identical"] is True
    again = demo.main(["--quick", "--out-dir", str(tmp_path)])  # reuses the matching baseline
    assert again["float_test_acc"] == summary["float_test_acc"]


@pytest.mark.skipif(not HAVE_QUANT_OPS, reason="quantization ops not built")
def test_each_round_retrains_from_the_decayed_learning_rate(tmp_path, monkeypatch):
    """retrain.lr_decay: round r's optimizer starts from lr * lr_decay^r."""
    cfg = _cfg(tmp_path, "decay", weight={"kind": "codebook", "bits": 2}, act={"bits": 8})
    cfg.retrain.max_rounds = cfg.retrain.min_rounds = 3
    cfg.retrain.epochs_per_round = 1
    cfg.retrain.lr_decay = 0.5
    model, splits = _fresh(cfg)
    seen = []
    build = engine.build_optimizer
    monkeypatch.setattr(engine, "build_optimizer", lambda m, t, lr: seen.append(lr) or build(m, t, lr))
    assert retrain.run(model, cfg, splits.train, splits.val, progress=False)["finished"]
    assert seen == pytest.approx([0.01, 0.005, 0.0025])


@pytest.mark.skipif(not HAVE_QUANT_OPS, reason="quantization ops not built")
def test_batchnorm_reestimation_averages_the_batch_statistics_of_the_quantized_model():
    """reestimate_batchnorm: running mean / variance become the plain average of the per-batch statistics that
    the quantized network produces, with dropout and the quantizers left in eval mode; a loader with no batches
    is an error that leaves the old statistics."""
    from qcnn import quantize as qz
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3, momentum=0.3), torch.nn.ReLU(),
                              torch.nn.Dropout(0.5), torch.nn.Flatten(), torch.nn.Linear(3 * 26 * 26, 4))
    qcnn.quantize_(net, qconfig.from_dict({"quant": {"weight": {"kind": "codebook", "bits": 2},
                                                     "act": {"bits": 8}}}).quant)
    batches = [(torch.randn(8, 1, 28, 28) * (1 + i), torch.zeros(8, dtype=torch.long)) for i in range(3)]
    qz.calibrate_activations(net, batches, 1)
    qz.refit_weights(net)
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
        feats = [net[0](x) for x, _ in batches[:2]]  # the quantized conv's outputs
    means = [f.mean((0, 2, 3)) for f in feats]
    variances = [f.var((0, 2, 3), unbiased=True) for f in feats]
    before = {k: v.clone() for k, v in net.state_dict().items() if "bn" not in k and not k.startswith("1.")}
    net.train()
    assert qz.reestimate_batchnorm(net, batches, 2) == 2
    assert net.training and bn.momentum == 0.3
    torch.testing.assert_close(bn.running_mean, (means[0] + means[1]) / 2)
    torch.testing.assert_close(bn.running_var, (variances[0] + variances[1]) / 2)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, codebooks, act steps unchanged
    kept = bn.running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        qz.reestimate_batchnorm(net, [], 4)
    assert torch.equal(bn.running_mean, kept) and bn.momentum == 0.3
    assert qz.reestimate_batchnorm(torch.nn.Linear(2, 2), batches, 2) == 0  # nothing to re-estimate


@pytest.mark.skipif(not HAVE_QUANT_OPS, reason="quantization ops not built")
@pytest.mark.slow
def test_loop_with_batchnorm_reestimation_resumes_exactly(tmp_path, monkeypatch):
    """retrain.bn_batches re-estimates BN after each refit; a run cut mid-round ends where an uncut one does."""
    from qcnn import quantize as qz
    full_cfg, cut_cfg = (_cfg(tmp_path, name, **CODEBOOK_QUANT) for name in ("bn_full", "bn_cut"))
    for cfg in (full_cfg, cut_cfg):
        cfg.retrain.bn_batches = 2
    model, splits = _fresh(full_cfg)
    calls = []
    real = qz.reestimate_batchnorm
    monkeypatch.setattr(qz, "reestimate_batchnorm", lambda *a: calls.append(a[2]) or real(*a))
    result = retrain.run(model, full_cfg, splits.train, splits.val, progress=False)
    assert result["finished"] and calls == [2, 2]
    for stop in (1, None):
        resumed, res_splits = _fresh(cut_cfg)
        retrain.run(resumed, cut_cfg, res_splits.train, res_splits.val, resume=True, stop_after_epochs=stop,
                    progress=False)
    _assert_same_state(model, resumed)


@pytest.mark.skipif(not HAVE_QUANT_OPS, reason="quantization ops not built")
@pytest.mark.slow
def test_refit_probe_reproduces_the_loop_and_localizes_the_refit(tmp_path):
    """training/refit_probe.py on a finished run: the kept state scores the run's recorded validation accuracy,
    refitting all layers scores what refit_weights on that state scores, and every layer gets its own row."""
    from training_scripts import load_training_script
    retrain_script, refit_probe = load_training_script("retrain"), load_training_script("refit_probe")
    cfg = _cfg(tmp_path, "probe", **CODEBOOK_QUANT)
    cfg.retrain.epochs_per_round = 1
    float_model, _ = _fresh(cfg, quantize=False)
    baseline = tmp_path / "baseline" / "model.pt"
    baseline.parent.mkdir()
    torch.save(float_model.state_dict(), baseline)
    cfg.baseline = str(baseline)
    summary = retrain_script.main(["--config", "unused.yaml", "--no-progress"], cfg=cfg)
    result = refit_probe.probe(tmp_path / "probe", bn_batches=2, progress=False)
    assert result["kept_val_acc"] == summary["val_acc"]
    model, _ = refit_probe.load_quantized(tmp_path / "probe")
    from qcnn import quantize as qz
    qz.refit_weights(model)
    assert result["rows"][0]["refit"] == "all layers"
    assert result["rows"][0]["val_acc"] == engine.evaluate(model, build_loaders(cfg.data).val)["acc"]
    layers = list(qz.quant_layers(model))
    assert [r["refit"] for r in result["rows"][1:]] == layers == list(result["drift"])
    assert all(0.0 <= r["change_fraction"] <= 1.0 and 0.0 <= r["val_acc_bn"] <= 100.0 for r in result["rows"])
    assert json.loads((tmp_path / "probe" / "refit_probe.json").read_text()) == result


def test_refit_weights_of_named_layers_only():
    """refit_weights(layers=...) refits those layers and weighs their change by their weight counts; an unknown
    name is an error that names it."""
    from qcnn import quantize as qz
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3))
    qcnn.quantize_(net, qconfig.from_dict({"quant": {"weight": {"kind": "codebook", "bits": 2},
                                                     "act": {"bits": 8}}}).quant)
    qz.refit_weights(net)
    with torch.no_grad():
        for p in (net[0].weight, net[3].weight):
            p.add_(0.3 * torch.randn_like(p))
    linear_before = net[3].weight_quant.codebook.clone()
    result = qz.refit_weights(net, layers=["0"])
    assert set(result["layer_change"]) == {"0"} and result["change_fraction"] == result["layer_change"]["0"]
    assert torch.equal(net[3].weight_quant.codebook, linear_before)
    both = qz.refit_weights(net, refit=False, layers=["0", "3"])
    counts = {"0": net[0].weight.numel(), "3": net[3].weight.numel()}
    expected = sum(both["layer_change"][n] * counts[n] for n in counts) / sum(counts.values())
    assert both["change_fraction"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="'classifier'"):
        qz.refit_weights(net, layers=["classifier"])


def test_baseline_trained_on_the_validation_images_is_refused(tmp_path):
    from training_scripts import load_training_script
    script = load_training_script("retrain")
    run = tmp_path / "base"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")
    qconfig.dump(qconfig.from_dict({"name": "base", "data": {"val_size": 5000, "seed": 3}}), run / "config.yaml")

    def check(**data):
        cfg = qconfig.from_dict({"name": "q", "baseline": str(run / "model.pt"), "data": data})
        script.check_baseline_split(cfg, run / "model.pt", "retrain.py")

    check(val_size=5000, seed=3)
    check(val_size=1000, seed=3)  # a prefix of the baseline's own validation split
    with pytest.raises(SystemExit, match=r"data.val_size=5000, data.seed=3.*val_size=10000"):
        check(val_size=10000, seed=3)
    with pytest.raises(SystemExit, match=r"data.seed=0"):
        check(val_size=5000, seed=0)
    (run / "config.yaml").write_text("data: {val_size: -4}\n")
    with pytest.raises(SystemExit, match=r"cannot read the float baseline's config .*data.val_size"):
        check(val_size=5000, seed=3)
    (run / "config.yaml").unlink()
    check(val_size=10000, seed=0)  # a model file without its run: nothing to compare


@pytest.mark.parametrize("content", [b"", b"name: not a checkpoint\n", b"PK\x03\x04" + bytes(60)])
def test_a_baseline_that_is_not_a_state_dict_is_refused_by_name(tmp_path, content):
    from training_scripts import load_training_script
    script = load_training_script("retrain")
    (tmp_path / "model.pt").write_bytes(content)
    cfg = qconfig.from_dict({"name": "q", "baseline": str(tmp_path / "model.pt")})
    with pytest.raises(SystemExit, match=r"search.py: float baseline .*model.pt is not a state dict of model "
                                         r"'vgg_small'"):
        script.load_baseline(cfg, "search.py")


def _script_stderr(script: str, *args) -> str:
    """A training script's stderr, after it stopped with exit status 2 and no traceback."""
    import subprocess
    import sys
    from training_scripts import TRAINING
    done = subprocess.run([sys.executable, str(TRAINING / script), *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


@pytest.mark.slow


def test_a_script_stops_on_a_bad_config_with_one_line_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: q\nsearch: {acc_bits: 99}\n")
    assert (f"search_accumulator.py: {bad}: search.acc_bits: must be in [2, 32], got 99"
            in _script_stderr("search_accumulator.py", "--config", bad))


SMALL_DATA = "data: {train_subset: 64, val_subset: 32, test_subset: 32, batch_size: 32}\n"


@pytest.mark.parametrize("kwargs, message", [
    ("{num_classes: 5}", "model.kwargs.num_classes: the model gives outputs of shape [5] per image; the data has 10"),
    ("{in_channels: 3}", "model: 'vgg_small' with kwargs {'in_channels': 3} cannot run on the data's [1, 28, 28]"),
])
@pytest.mark.slow
def test_train_refuses_a_model_that_does_not_fit_the_data_before_training(tmp_path, kwargs, message):
    config = tmp_path / "c.yaml"
    config.write_text(f"name: fit\nout_dir: {tmp_path}\n{SMALL_DATA}model: {{name: vgg_small, kwargs: {kwargs}}}\n")
    assert message in _script_stderr("train.py", "--config", config, "--no-progress")
    assert not (tmp_path / "fit" / "checkpoint.pt").exists()


@pytest.mark.slow


def test_scripts_check_their_outputs_and_options_before_the_work(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    torch.save(models.create("vgg_small", width=4).state_dict(), tmp_path / "base.pt")
    config = tmp_path / "c.yaml"
    config.write_text(f"name: fxp\nout_dir: {not_a_dir}\nbaseline: {tmp_path / 'base.pt'}\n{SMALL_DATA}"
                      "model: {name: vgg_small, kwargs: {width: 4}}\n")
    # the search would take its time first; the run directory is made before it
    assert f"Not a directory: '{not_a_dir}/fxp'" in _script_stderr("search_fixed_point.py", "--config", config)
    assert "--threads must be in [1, 4096], got 100000" in _script_stderr("deploy.py", "--run", tmp_path,
                                                                         "--threads", 100000)


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT or RANK is not set: start the script with torchrun"),
    ({"LOCAL_RANK": "x"}, "environment variable LOCAL_RANK='x' must be an integer >= 0"),
])
def test_a_distributed_environment_without_torchrun_is_named(monkeypatch, env, message):
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        engine.setup_distributed("cpu")
