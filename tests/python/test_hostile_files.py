"""build/qcnn-infer on crafted files: each must exit 1 with `qcnn-infer: error: <message naming the problem>`,
within a time and memory bound (tests/cpp/test_hostile_files.cpp checks the readers themselves)."""
from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
QCNN_INFER = Path(os.environ.get("QCNN_INFER", ROOT / "build" / "qcnn-infer"))
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
import make_seeds  # noqa: E402  (hand-built .qcnn files, standard library only)

pytestmark = pytest.mark.skipif(not QCNN_INFER.exists(), reason="build/qcnn-infer not built (run the CMake build)")

MAX_SECONDS = 20.0
MAX_RSS_MB = 100  # a hostile file must not make the process grow: a tiny model runs in ~10 MB


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str, seconds: float, rss_mb: float):
        self.returncode, self.stdout, self.stderr, self.seconds, self.rss_mb = returncode, stdout, stderr, seconds, rss_mb


# ru_maxrss survives fork and exec: a child of this process (torch loaded, ~250 MB) would report at least
# that. A bare interpreter spawns qcnn-infer instead and reports its exit status and peak RSS (KiB).
_SPAWN = ("import os, sys\n"
          "pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)\n"
          "_, status, usage = os.wait4(pid, 0)\n"
          "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}')\n")


def run_infer(*args, timeout: float = MAX_SECONDS) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats"
        cmd = [sys.executable, "-I", "-S", "-c", _SPAWN, str(stats), str(QCNN_INFER), *map(str, args)]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"qcnn-infer {' '.join(map(str, args))} ran past {timeout} s")
        seconds = time.monotonic() - t0
        code, rss_kib = (int(v) for v in stats.read_text().split())
        return Result(code, out.decode(errors="replace"), err.decode(errors="replace"), seconds, rss_kib / 1024)


def expect_error(*args, needles: tuple[str, ...]) -> Result:
    res = run_infer(*args)
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert res.stderr.startswith("qcnn-infer: error: "), res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)
    assert res.rss_mb < MAX_RSS_MB, f"peak RSS {res.rss_mb:.0f} MB"
    assert res.stdout == ""
    return res


def idx(dims: list[int], data: bytes | None = None) -> bytes:
    n = int(np.prod(dims)) if dims else 0
    return bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + (bytes(n) if data is None else data)


def header_and_data(model: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", model[:8])[0]
    return json.loads(model[8:8 + n]), model[8 + n:]


def rebuild(header: dict | str, data: bytes) -> bytes:
    h = header if isinstance(header, str) else json.dumps(header)
    return struct.pack("<Q", len(h.encode())) + h.encode() + data


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    seeds = make_seeds.hand_built()
    paths = {"dir": d}
    for name, data in seeds.items():
        (d / name).write_bytes(data)
    paths["tiny"] = d / "tiny_linear.qcnn"           # input [1, 2, 2], 3 classes
    paths["two_channel"] = d / "requant_add_pools.qcnn"  # input [2, 4, 4], 2 classes
    (d / "images").write_bytes(idx([3, 2, 2], bytes(range(12))))
    (d / "labels").write_bytes(idx([3], bytes([0, 1, 2])))
    paths["images"], paths["labels"] = d / "images", d / "labels"
    return paths


def test_a_valid_run_reports_isa_and_cost(files):
    res = run_infer(files["tiny"], "--images", files["images"], "--labels", files["labels"], "--batch", "2")
    assert res.returncode == 0, res.stderr
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["images"] == 3 and line["batch"] == 2
    assert line["isa"] in ("amx", "avx512vnni", "avx2", "scalar")  # without qcnn: the engine_isas() names
    assert line["macs_per_image"] == 12
    assert line["peak_activation_bytes"] > 0
    assert "path" not in line


def test_missing_and_directory_paths(files):
    d = files["dir"]
    expect_error(d / "nope.qcnn", "--images", files["images"], "--labels", files["labels"],
                 needles=(str(d / "nope.qcnn"), "No such file"))
    expect_error(d, "--images", files["images"], "--labels", files["labels"], needles=(f"{d}: is a directory",))
    expect_error(files["tiny"], "--images", d, "--labels", files["labels"], needles=(f"{d}: is a directory",))
    expect_error(files["tiny"], "--images", files["images"], "--labels", d / "none",
                 needles=(str(d / "none"), "No such file"))


def test_deeply_nested_header_and_metadata(files, tmp_path):
    header, data = header_and_data(files["tiny"].read_bytes())
    deep = tmp_path / "deep_header.qcnn"
    text = json.dumps(header)
    deep.write_bytes(rebuild(text[:-1] + ', "x": ' + "[" * 500000 + "]" * 500000 + "}", data))
    expect_error(deep, "--images", files["images"], "--labels", files["labels"], needles=(str(deep), "nesting"))
    doc = json.loads(header["__metadata__"]["qcnn"])
    doc["input"]["extra"] = json.loads("[" * 60 + "]" * 60)  # within the limit: an ignored field
    header["__metadata__"]["qcnn"] = json.dumps(doc)[:-1] + ', "x": ' + "{\"a\":" * 300000 + "1" + "}" * 300000 + "}"
    deep.write_bytes(rebuild(header, data))
    expect_error(deep, "--images", files["images"], "--labels", files["labels"], needles=("metadata", "nesting"))


def test_overlapping_and_out_of_range_offsets(files, tmp_path):
    header, data = header_and_data(files["tiny"].read_bytes())
    bad = tmp_path / "bad.qcnn"
    h = json.loads(json.dumps(header))
    h["fc.output.bias"]["data_offsets"] = h["fc.output.scale"]["data_offsets"]  # aliased
    bad.write_bytes(rebuild(h, data))
    expect_error(bad, "--images", files["images"], "--labels", files["labels"],
                 needles=("fc.output.bias", "fc.output.scale", "overlap"))
    h = json.loads(json.dumps(header))
    h["fc.output.bias"]["data_offsets"] = [len(data) - 4, len(data) + 8]
    bad.write_bytes(rebuild(h, data))
    expect_error(bad, "--images", files["images"], "--labels", files["labels"],
                 needles=("fc.output.bias", "outside the data section"))
    h = json.loads(json.dumps(header))
    h["fc.output.bias"]["shape"] = [2 ** 33, 2 ** 33, 4]
    bad.write_bytes(rebuild(h, data))
    expect_error(bad, "--images", files["images"], "--labels", files["labels"],
                 needles=("fc.output.bias", "overflows"))


def test_truncated_model_files(files, tmp_path):
    data = files["tiny"].read_bytes()
    cut = tmp_path / "cut.qcnn"
    for length in list(range(0, 16)) + list(range(16, len(data), max(1, len(data) // 40))):
        cut.write_bytes(data[:length])
        expect_error(cut, "--images", files["images"], "--labels", files["labels"], needles=(str(cut),))


def test_idx_sizes_are_checked_before_allocating(files, tmp_path):
    p = tmp_path / "bad.idx"
    for dims, needle in [([0xFFFFFFFF] * 4, "more than the limit"), ([65536, 65536], "IDX data truncated"),
                         ([3, 2, 2, 0xFFFFFFFF], "more than the limit")]:
        p.write_bytes(idx(dims, b"\0" * 64))
        expect_error(files["tiny"], "--images", p, "--labels", files["labels"], needles=(str(p), needle))
    p.write_bytes(idx([3, 2, 2]) + b"extra")
    expect_error(files["tiny"], "--images", p, "--labels", files["labels"], needles=("5 trailing bytes",))
    gz = tmp_path / "bad.idx.gz"
    gz.write_bytes(gzip.compress(idx([65536, 65536], b"\0" * 1000)))
    expect_error(files["tiny"], "--images", gz, "--labels", files["labels"], needles=("compressed bytes can hold",))
    gz.write_bytes(gzip.compress(idx([3, 2, 2])) + b"garbage")
    expect_error(files["tiny"], "--images", gz, "--labels", files["labels"], needles=("trailing garbage",))
    gz.write_bytes(gzip.compress(idx([3, 2, 2]))[:-6])
    expect_error(files["tiny"], "--images", gz, "--labels", files["labels"], needles=("truncated",))
    # A bomb: 256 MiB of zeros behind a header declaring 12 bytes; only a few bytes are decompressed.
    gz.write_bytes(gzip.compress(idx([3, 2, 2]) + bytes(256 << 20), compresslevel=1))
    res = expect_error(files["tiny"], "--images", gz, "--labels", files["labels"], needles=("trailing data",))
    assert res.seconds < 5


def test_image_layout_must_match_the_model(files, tmp_path):
    p = tmp_path / "images"
    # [N, H, W, C] for a [C, H, W] model is rejected, naming both shapes.
    p.write_bytes(idx([3, 2, 2, 1]))
    expect_error(files["tiny"], "--images", p, "--labels", files["labels"],
                 needles=("[3, 2, 2, 1]", "[1, 2, 2]", "expected [3, 1, 2, 2] or [3, 2, 2]"))
    p.write_bytes(idx([3, 4]))
    expect_error(files["tiny"], "--images", p, "--labels", files["labels"], needles=("[3, 4]", "[1, 2, 2]"))
    for dims in ([3, 1, 2, 2], [3, 2, 2]):  # both accepted for a one-channel model
        p.write_bytes(idx(dims))
        assert run_infer(files["tiny"], "--images", p, "--labels", files["labels"]).returncode == 0
    two = files["two_channel"]
    for dims in ([3, 4, 4, 2], [3, 4, 4], [3, 2, 16], [3, 32]):
        p.write_bytes(idx(dims))
        expect_error(two, "--images", p, "--labels", files["labels"],
                     needles=(str(dims).replace("'", ""), "[2, 4, 4]", "expected [3, 2, 4, 4]"))
    p.write_bytes(idx([3, 2, 4, 4]))
    labels = tmp_path / "labels01"
    labels.write_bytes(idx([3], bytes([0, 1, 1])))
    assert run_infer(two, "--images", p, "--labels", labels).returncode == 0


def test_labels_must_be_one_per_image(files, tmp_path):
    p = tmp_path / "labels"
    for dims in ([4], [2], [3, 1]):
        p.write_bytes(idx(dims))
        expect_error(files["tiny"], "--images", files["images"], "--labels", p,
                     needles=(str(p), str(dims), "expected [3]"))
    p.write_bytes(idx([3], bytes([0, 7, 1])))
    expect_error(files["tiny"], "--images", files["images"], "--labels", p, needles=("label 7 of image 1", "3 classes"))


@pytest.mark.parametrize("flags, needle", [
    (["--batch", "0"], "--batch needs an integer"), (["--batch", "-3"], "--batch"), (["--batch", "2x"], "--batch"),
    (["--batch", "99999999999999999999999"], "--batch"), (["--batch", " 5"], "--batch"),
    (["--threads", "0"], "--threads"), (["--limit", "0"], "--limit"), (["--max-macs", "0"], "--max-macs"),
    (["--max-activation-bytes", "-1"], "--max-activation-bytes"), (["--path", "dense"], "unknown option --path"),
    (["--batch"], "--batch needs a value"), (["extra"], "unexpected argument extra"),
])
def test_bad_flags_are_usage_errors(files, flags, needle):
    res = expect_error(files["tiny"], "--images", files["images"], "--labels", files["labels"], *flags,
                       needles=(needle, "usage: qcnn-infer"))
    assert res.returncode == 1


def test_required_arguments_and_help(files):
    expect_error("--images", files["images"], needles=("MODEL, --images and --labels are required",))
    res = run_infer("--help")
    assert res.returncode == 0 and "usage: qcnn-infer" in res.stdout


def test_work_limits_reject_the_model(files):
    common = (files["tiny"], "--images", files["images"], "--labels", files["labels"])
    assert run_infer(*common, "--max-macs", "12").returncode == 0
    expect_error(*common, "--max-macs", "11", needles=(str(files["tiny"]),))
    expect_error(*common, "--max-activation-bytes", "1", needles=(str(files["tiny"]),))


def test_logits_file(files, tmp_path):
    out = tmp_path / "logits.npy"
    preds = tmp_path / "pred.txt"
    out.write_bytes(b"old")
    res = run_infer(files["tiny"], "--images", files["images"], "--labels", files["labels"], "--logits", out,
                    "--predictions", preds, "--batch", "2")
    assert res.returncode == 0, res.stderr
    with open(out, "rb") as f:
        assert f.read(8) == b"\x93NUMPY\x01\x00"
    logits = np.load(out)
    assert logits.dtype == np.dtype("<f4") and logits.shape == (3, 3)
    assert logits.flags.c_contiguous
    assert [int(v) for v in preds.read_text().split()] == list(logits.argmax(1))
    # TinyModel: logits = acc * scale + bias with acc = sum over pixels of level[index] * pixel
    levels, indices = [-2, -1, 1, 2], [(i * 7 + 3) % 4 for i in range(12)]
    px = np.arange(12).reshape(3, 4)
    w = np.array([levels[i] for i in indices]).reshape(3, 4)
    expect = (px @ w.T) * np.array([0.01, 0.02, 0.03]) + np.array([0.5, -0.5, -1.5])
    np.testing.assert_allclose(logits, expect.astype(np.float32), rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npy", "pred.txt"]  # no temporary left
    limited = run_infer(files["tiny"], "--images", files["images"], "--labels", files["labels"], "--logits", out,
                        "--limit", "1")
    assert limited.returncode == 0 and np.load(out).shape == (1, 3)
    expect_error(files["tiny"], "--images", files["images"], "--labels", files["labels"],
                 "--logits", tmp_path / "no" / "such" / "dir.npy", needles=("cannot write --logits file",))


def test_work_besides_macs_is_bounded(files, tmp_path):
    bomb = tmp_path / "pool_bomb.qcnn"
    bomb.write_bytes(make_seeds.pool_bomb())
    (tmp_path / "img").write_bytes(idx([1, 1, 1, 1], b"\x07"))
    (tmp_path / "lab").write_bytes(idx([1], b"\x00"))
    res = expect_error(bomb, "--images", tmp_path / "img", "--labels", tmp_path / "lab",
                       needles=("node 1 'pool'", "element operations per image", "--max-ops"))
    assert res.seconds < 5
    common = (files["tiny"], "--images", files["images"], "--labels", files["labels"])
    report = json.loads(run_infer(*common).stdout)
    assert report["ops_per_image"] == 19  # flatten reads and writes 4; linear reads 4, writes 3, pads 4
    assert run_infer(*common, "--max-ops", "19").returncode == 0
    expect_error(*common, "--max-ops", "18", needles=("18 element operations",))


@pytest.fixture
def infer_to(files):
    """Runs the tiny model writing its predictions to a path; returns (result, the predictions it should write)."""
    def run(path, *extra):
        return run_infer(files["tiny"], "--images", files["images"], "--labels", files["labels"], "--predictions",
                         path, *extra)
    first = run(os.devnull)  # a device: written in place, never replaced (as root a rename would replace it)
    assert first.returncode == 0, first.stderr
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    return run


def test_predictions_through_a_symlink_replace_its_target(infer_to, tmp_path):
    target = tmp_path / "sub" / "preds.txt"
    target.parent.mkdir()
    target.write_text("stale\n" * 10)
    target.chmod(0o640)
    link = tmp_path / "link.txt"
    link.symlink_to("sub/preds.txt")
    assert infer_to(link).returncode == 0
    assert link.is_symlink() and os.readlink(link) == "sub/preds.txt"
    lines = target.read_text().split()
    assert len(lines) == 3 and all(v.isdigit() for v in lines)
    assert target.stat().st_mode & 0o777 == 0o640  # the replaced file's mode is kept
    dangling = tmp_path / "dangling"
    dangling.symlink_to("made_by_the_run.txt")
    assert infer_to(dangling).returncode == 0
    assert dangling.is_symlink() and (tmp_path / "made_by_the_run.txt").read_text().split() == lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link.txt", "made_by_the_run.txt", "sub"]


def test_predictions_into_a_fifo_and_standard_output(infer_to, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    import threading
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    res = infer_to(fifo)
    reader.join(timeout=MAX_SECONDS)
    assert res.returncode == 0, res.stderr
    assert len(got[0].split()) == 3 and fifo.exists() and not fifo.is_file()
    res = infer_to("/dev/stdout")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:3] == got[0].splitlines() and json.loads(lines[3])["images"] == 3


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_write_errors_are_errors(infer_to, files, tmp_path):
    res = infer_to("/dev/full")
    assert res.returncode == 1 and "cannot write --predictions file /dev/full: No space left on device" in res.stderr
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")
    res = infer_to(tmp_path)
    assert res.returncode == 1 and "Is a directory" in res.stderr
    # the JSON result itself: standard output on a full device
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([str(QCNN_INFER), str(files["tiny"]), "--images", str(files["images"]), "--labels",
                               str(files["labels"])], stdout=full, stderr=subprocess.PIPE, timeout=MAX_SECONDS)
    assert proc.returncode == 1 and b"cannot write the result to standard output" in proc.stderr


def test_temporaries_of_dead_writers_are_removed(infer_to, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".preds.txt.tmp{dead.pid}"  # left by a writer killed mid-write
    live = tmp_path / f".preds.txt.tmp{os.getpid()}"  # a running writer's: kept
    other = tmp_path / f".other.txt.tmp{dead.pid}"  # another file's: not this run's business
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert infer_to(tmp_path / "preds.txt").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "preds.txt"])
