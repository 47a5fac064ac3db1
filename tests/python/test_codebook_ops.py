"""Raw codebook ops against independent references (brute force, scikit-learn, SciPy, NumPy, torch)."""
import itertools

import numpy as np
import pytest
import torch

import qcnn  # noqa: F401
from qcnn._ops import codebook as ops

scipy_stats = pytest.importorskip("scipy.stats")


def brute_force_sse(x: np.ndarray, w: np.ndarray, k: int) -> float:
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    vals, inv = np.unique(x, return_inverse=True)
    wts = np.bincount(inv, weights=w)
    n = len(vals)
    best = np.inf
    for cuts in itertools.combinations(range(1, n), k - 1):
        edges = (0, *cuts, n)
        total = 0.0
        for a, b in zip(edges[:-1], edges[1:]):
            m = np.average(vals[a:b], weights=wts[a:b])
            total += float(np.sum(wts[a:b] * (vals[a:b] - m) ** 2))
        best = min(best, total)
    return best


def nearest_sse(x: np.ndarray, c: np.ndarray, w: np.ndarray | None = None) -> float:
    d = (x[:, None] - c[None, :]) ** 2
    e = d.min(axis=1)
    return float(np.sum(e if w is None else w * e))


@pytest.mark.parametrize("trial", range(12))
def test_optimal_equals_brute_force(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(3, 10))
    x = rng.integers(-4, 5, n).astype(np.float64) if trial % 3 == 0 else rng.normal(size=n)
    w = rng.uniform(0.2, 3.0, n) if trial % 2 else np.ones(n)
    distinct = len(np.unique(x))
    for k in range(1, distinct + 1):
        c, sse = ops.kmeans_1d_optimal(torch.from_numpy(x), k, torch.from_numpy(w))
        expected = brute_force_sse(x, w, k)
        assert float(sse) == pytest.approx(expected, rel=1e-10, abs=1e-12)
        assert nearest_sse(x, c.numpy(), w) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("k", [3, 8, 16])
def test_optimal_never_worse_than_sklearn(k):
    cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(k)
    for dist in ("normal", "laplace", "mixture"):
        if dist == "normal":
            x = rng.normal(size=3000)
        elif dist == "laplace":
            x = rng.laplace(size=3000)
        else:
            x = np.concatenate([rng.normal(-2, 0.3, 1500), rng.normal(1, 0.8, 1500)])
        km = cluster.KMeans(n_clusters=k, n_init=10, random_state=0).fit(x[:, None])
        sk_sse = nearest_sse(x, km.cluster_centers_[:, 0])
        _, sse = ops.kmeans_1d_optimal(torch.from_numpy(x), k)
        assert float(sse) <= sk_sse * (1 + 1e-12)


def test_optimal_weights_equal_repetition():
    rng = np.random.default_rng(3)
    x = rng.normal(size=400)
    reps = rng.integers(1, 4, 400)
    c_w, sse_w = ops.kmeans_1d_optimal(torch.from_numpy(x), 7, torch.from_numpy(reps.astype(np.float64)))
    c_r, sse_r = ops.kmeans_1d_optimal(torch.from_numpy(np.repeat(x, reps)), 7)
    torch.testing.assert_close(c_w, c_r)
    assert float(sse_w) == pytest.approx(float(sse_r), rel=1e-10)


def numpy_lloyd(x, w, k, init, max_iter=300, tol=1e-6):
    """Straightforward Lloyd reference: O(nk) assignment by argmin (ties to the lower index)."""
    vals, inv = np.unique(x, return_inverse=True)
    wts = np.bincount(inv, weights=w)
    if init == "linear":
        c = np.linspace(vals[0], vals[-1], k)
    else:
        cum = np.cumsum(wts)
        c = vals[np.searchsorted(cum, (np.arange(k) + 0.5) / k * cum[-1], side="left")]
    span = vals[-1] - vals[0]
    prev = None
    for _ in range(max_iter):
        assign = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        if prev is not None and np.array_equal(assign, prev):
            break
        sums = np.bincount(assign, weights=w * x, minlength=k)
        mass = np.bincount(assign, weights=w, minlength=k)
        assert (mass > 0).all(), "reference hit an empty cluster; pick other data"
        new = sums / mass
        moved = np.max(np.abs(new - c))
        c, prev = new, assign
        if moved <= tol * span:
            break
    return c


@pytest.mark.parametrize("init", ["linear", "quantile"])
@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_1d_matches_numpy_lloyd(init, weighted):
    rng = np.random.default_rng(11)
    for k in (2, 4, 8):
        # bounded, skewed data: the reference has no empty-cluster rule, so avoid far outliers
        x = rng.beta(2.0, 5.0, 5000) if k != 4 else rng.uniform(-1.0, 1.0, 5000) ** 3
        w = rng.uniform(0.5, 2.0, x.size) if weighted else np.ones(x.size)
        ref = numpy_lloyd(x, w, k, init)
        c, sse = ops.kmeans_1d(torch.from_numpy(x), k, torch.from_numpy(w) if weighted else None, init, 300, 1e-6, 0)
        np.testing.assert_allclose(c.numpy(), ref, atol=1e-5)
        assert float(sse) == pytest.approx(nearest_sse(x, c.numpy(), w), rel=1e-9)


def test_kmeans_1d_grouped_and_seeded():
    x = torch.randn(6, 1000)
    c, sse = ops.kmeans_1d(x, 8)
    assert c.shape == (6, 8) and c.dtype == torch.float32 and sse.shape == (6,) and sse.dtype == torch.float64
    for g in range(6):
        c_g, sse_g = ops.kmeans_1d(x[g], 8, seed=0)
        assert torch.all(c_g[1:] >= c_g[:-1])
    again, _ = ops.kmeans_1d(x, 8)
    assert torch.equal(c, again)
    assert not torch.equal(ops.kmeans_1d(x, 8, seed=1)[0], c)
    assert ops.kmeans_1d(x.double(), 8)[0].dtype == torch.float64
    opt, opt_sse = ops.kmeans_1d_optimal(x, 8)
    assert torch.all(opt_sse <= sse * (1 + 1e-9))


def test_kmeans_more_clusters_than_values_pads():
    x = torch.tensor([3.0, 1.0, 3.0, 2.0])
    for fn in (lambda: ops.kmeans_1d(x, 6), lambda: ops.kmeans_1d_optimal(x, 6)):
        c, sse = fn()
        assert c.tolist() == [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
        assert float(sse) == 0.0


def max_lloyd_reference(k: int, iters: int = 100000) -> np.ndarray:
    """Lloyd-Max for N(0, 1) with exact conditional means: E[X | a < X < b] = (phi(a) - phi(b)) / (Phi(b) - Phi(a))."""
    from scipy.special import ndtr, ndtri

    def pdf(t):
        return np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)

    levels = ndtri((np.arange(k) + 0.5) / k)
    for _ in range(iters):
        t = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
        new = (pdf(t[:-1]) - pdf(t[1:])) / (ndtr(t[1:]) - ndtr(t[:-1]))
        done = np.max(np.abs(new - levels)) < 1e-14
        levels = new
        if done:
            break
    return levels


@pytest.mark.parametrize("k,table", [
    (2, [0.7979]),
    (4, [0.4528, 1.510]),
    (8, [0.2451, 0.7560, 1.344, 2.152]),
])
def test_lloyd_max_reproduces_max_1960(k, table):
    grid = torch.linspace(-10, 10, 40001, dtype=torch.float64)
    density = torch.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    step = grid[1] - grid[0]
    for init in ("optimal", "quantile", "linear"):
        levels, mse = ops.lloyd_max(density, grid[0], step, k, init, 100000, 1e-13)
        positive = levels[k // 2:].numpy()
        np.testing.assert_allclose(positive, table, atol=5e-4)
        np.testing.assert_allclose(levels.numpy(), -levels.flip(0).numpy(), atol=1e-7)
    ref = max_lloyd_reference(k)
    np.testing.assert_allclose(ref[k // 2:], table, atol=5e-4)  # the table itself, independently
    np.testing.assert_allclose(levels.numpy(), ref, atol=1e-6)


def kde_test_values(n, weighted):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, n // 2), rng.laplace(3, 0.5, n - n // 2)])
    return x, (rng.uniform(0.1, 1.0, n) if weighted else None)


# Issue 11 changed the estimator: it is variance-corrected (Jones 1991) and Scott / Silverman carry a
# finite-population correction, so plain scipy.stats.gaussian_kde is no longer the reference as such.
@pytest.mark.parametrize("weighted", [False, True])
def test_kde_density_matches_scipy_on_the_rescaled_values(weighted):
    for n in (150, 5000):  # direct kernel sum and binned convolution
        x, w = kde_test_values(n, weighted)
        wn = np.ones(n) if w is None else w
        mean = np.average(x, weights=wn)
        var0 = np.average((x - mean) ** 2, weights=wn)
        h0 = 0.3 * float(np.sqrt(scipy_stats.gaussian_kde(x, bw_method=1.0, weights=w).covariance[0, 0]))
        shrink = np.sqrt(var0 / (var0 + h0 ** 2))
        # the plain KDE (factor 0.3) of the values rescaled about their mean: variance var0, not var0 + h0^2
        kde = scipy_stats.gaussian_kde(mean + shrink * (x - mean), bw_method=0.3, weights=w)
        density, start, step, h = ops.kde_grid_density(
            torch.from_numpy(x), None if w is None else torch.from_numpy(w), 0, "factor", 0.3, 2048, 0)
        assert float(h) == pytest.approx(float(np.sqrt(kde.covariance[0, 0])), rel=1e-10)
        assert float(h) == pytest.approx(shrink * h0, rel=1e-10)
        # [min - 3h, max + 3h] plus one padding step on each side
        assert float(start + step) == pytest.approx(x.min() - 3 * float(h))
        assert float(start) + 2046 * float(step) == pytest.approx(x.max() + 3 * float(h))
        grid = float(start) + float(step) * np.arange(2048)
        ref = kde(grid)
        tol = 1e-9 if n <= 256 else 2e-3
        np.testing.assert_allclose(density.numpy(), ref, atol=tol * ref.max())


@pytest.mark.parametrize("rule", ["scott", "silverman"])
@pytest.mark.parametrize("weighted", [False, True])
def test_kde_rules_use_the_finite_population_correction(rule, weighted):
    x, w = kde_test_values(5000, weighted)
    xt, wt = torch.from_numpy(x), None if w is None else torch.from_numpy(w)
    density, _, _, h = ops.kde_grid_density(xt, wt, 0, rule, 1.0, 2048, 0)  # every value: h = 0
    assert float(h) == 0.0
    assert torch.equal(density, ops.kde_grid_density(xt, wt, 0, "none", 1.0, 2048, 0)[0])
    # 4000 of 5000 sampled: scipy's rule for 4000 / (1 - 0.8) samples, not 4000 (h 1.38x larger), up
    # to the sample's std, the post-stratified weights' effective size and the variance correction
    h = float(ops.kde_grid_density(xt, wt, 4000, rule, 1.0, 2048, 0)[3])
    m_eff = 4000 / 0.2 * (1.0 if rule == "scott" else 0.75)
    assert h == pytest.approx(float(np.sqrt(np.cov(x, aweights=w))) * m_eff ** -0.2, rel=0.05)


def test_kde_sampling_is_seeded():
    x = torch.randn(3, 50000)
    a = ops.kde_grid_density(x, None, 500, "scott", 1.0, 512, 7)[0]
    b = ops.kde_grid_density(x, None, 500, "scott", 1.0, 512, 7)[0]
    c = ops.kde_grid_density(x, None, 500, "scott", 1.0, 512, 8)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # groups draw different samples
    integral = a.sum(dim=1) * ops.kde_grid_density(x, None, 500, "scott", 1.0, 512, 7)[2]
    torch.testing.assert_close(integral, torch.ones(3, dtype=torch.float64), atol=1e-3, rtol=0)


def argmin_reference(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    groups = 1 if codebook.dim() == 1 else codebook.shape[0]
    rows = w.double().reshape(groups, -1)
    books = codebook.float().double().reshape(groups, -1)
    d = (rows[:, :, None] - books[:, None, :]).abs()
    return d.argmin(dim=2).reshape(w.shape)  # first minimum: ties go to the lower index


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_quantize_to_codebook_matches_argmin_with_ties(dtype):
    gen = torch.Generator().manual_seed(0)
    codebook = torch.sort(torch.randint(-8, 9, (13,), generator=gen).float() * 0.5)[0]  # has duplicates
    w = (torch.randint(-40, 41, (7, 5, 3), generator=gen).float() * 0.125).to(dtype)  # hits midpoints
    idx, deq = ops.quantize_to_codebook(w, codebook)
    assert idx.dtype == torch.uint8 and deq.dtype == dtype and idx.shape == w.shape
    assert torch.equal(idx.long(), argmin_reference(w, codebook))
    assert torch.equal(deq, codebook[idx.long()].to(dtype))
    per_group = torch.sort(torch.randn(7, 6, generator=gen), dim=1)[0]
    w2 = torch.randn(7, 20, generator=gen).to(dtype)
    idx2, deq2 = ops.quantize_to_codebook(w2, per_group)
    assert torch.equal(idx2.long(), argmin_reference(w2, per_group))


def test_quantize_to_codebook_large_k_and_groups():
    codebook = torch.sort(torch.randn(2, 1000))[0]
    w = torch.randn(6, 300)
    idx, deq = ops.quantize_to_codebook(w, codebook)
    assert idx.dtype == torch.int16
    assert torch.equal(idx.long(), argmin_reference(w, codebook))
    rows = torch.arange(6)[:, None] // 3
    assert torch.equal(deq, codebook[rows, idx.long()])


def test_op_argument_errors():
    x = torch.randn(100)
    with pytest.raises(ValueError, match="k must be"):
        ops.kmeans_1d(x, 0)
    with pytest.raises(ValueError, match="k must be"):
        ops.kmeans_1d_optimal(x, -3)
    with pytest.raises(ValueError, match="init"):
        ops.kmeans_1d(x, 4, None, "random")
    with pytest.raises(ValueError, match="NaN"):
        ops.kmeans_1d(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="NaN"):
        ops.kmeans_1d_optimal(torch.tensor([1.0, float("inf")]), 2)
    with pytest.raises(ValueError, match="empty"):
        ops.kmeans_1d(torch.empty(0), 2)
    with pytest.raises(TypeError, match="x must be"):
        ops.kmeans_1d(torch.arange(10), 2)
    with pytest.raises(ValueError, match="2-D"):
        ops.kmeans_1d(torch.randn(2, 3, 4), 2)
    with pytest.raises(ValueError, match="sample_weight"):
        ops.kmeans_1d(x, 2, torch.ones(99))
    with pytest.raises(ValueError, match="sample_weight"):
        ops.kmeans_1d(x, 2, -torch.ones(100))
    with pytest.raises(ValueError, match="positive weight"):
        ops.kmeans_1d_optimal(x, 2, torch.zeros(100))
    with pytest.raises(ValueError, match="max_iter"):
        ops.kmeans_1d(x, 2, None, "linear", 0)
    with pytest.raises(ValueError, match="sorted"):
        ops.quantize_to_codebook(x, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        ops.quantize_to_codebook(torch.tensor([float("nan")]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="divide"):
        ops.quantize_to_codebook(torch.randn(5, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="w must be"):
        ops.quantize_to_codebook(torch.arange(4), torch.zeros(4))
    with pytest.raises(ValueError, match="bandwidth"):
        ops.kde_grid_density(x, None, 10, "wide")
    with pytest.raises(ValueError, match="bandwidth_factor"):
        ops.kde_grid_density(x, None, 10, "factor", -1.0)
    with pytest.raises(ValueError, match="grid_size"):
        ops.kde_grid_density(x, None, 10, "scott", 1.0, 1)
    with pytest.raises(ValueError, match="zero total mass"):
        ops.lloyd_max(torch.zeros(10, dtype=torch.float64), torch.tensor(0.0), torch.tensor(1.0), 2)
    with pytest.raises(ValueError, match="grid_step"):
        ops.lloyd_max(torch.ones(10), torch.tensor(0.0), torch.tensor(0.0), 2)
    with pytest.raises(ValueError, match="grid_start"):
        ops.lloyd_max(torch.ones(3, 10), torch.zeros(2), torch.ones(3), 2)


def test_opcheck():
    x = torch.randn(3, 200)
    sw = torch.rand(3, 200) + 0.1
    torch.library.opcheck(torch.ops.qcnn.kmeans_1d.default, (x, 4, sw, "kmeans++", 50, 1e-6, 0))
    torch.library.opcheck(torch.ops.qcnn.kmeans_1d_optimal.default, (x, 4, None))
    dens, start, step, _ = ops.kde_grid_density(x, None, 100, "scott", 1.0, 256, 0)
    torch.library.opcheck(torch.ops.qcnn.kde_grid_density.default, (x, sw, 100, "silverman", 1.0, 256, 0))
    torch.library.opcheck(torch.ops.qcnn.lloyd_max.default, (dens, start, step, 4, "quantile", 100, 1e-9))
    torch.library.opcheck(torch.ops.qcnn.distinct_values.default, (x, 8))
    torch.library.opcheck(torch.ops.qcnn.quantize_to_codebook.default, (x, torch.sort(torch.randn(3, 8))[0]))
    torch.library.opcheck(torch.ops.qcnn.quantize_to_codebook.default, (x.half(), torch.sort(torch.randn(300))[0]))
