"""Codebook fitting: qcnn's 1-D k-means, optimal k-means, KDE-KM and KDE-LM against scikit-learn KMeans,
flash1dkmeans and Ckmeans.1d.dp (ckwrap).

Every case fits a k-entry codebook to n weights (float32) and reports the fitting time, scikit-learn's
time (anchor: KMeans(n_clusters=k, n_init=1), its default greedy k-means++ and Lloyd), and the SSE of
quantizing all n weights with each codebook. KDE rows also compare with full kmeans_1d on the same data.
The `vs flash1dkmeans` rows set kmeans_1d against flash1dkmeans.kmeans_1d (the same greedy k-means++ and
Lloyd on sorted data, numba; compiled before timing), the `vs ckwrap` rows set kmeans_1d_optimal against
ckwrap.ckmeans (Ckmeans.1d.dp's linear-time DP, also optimal); both peers get the same float32 array.

  python benchmarks/bench_codebook.py [--json PATH] [--quick] [--state-dict PATH]
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

import qcnn  # noqa: F401
from common import machine, parser, report, row, time_call
from qcnn._ops import codebook as ops

# scikit-learn's Lloyd costs O(n k) per iteration: above this n * k it takes minutes, so it is skipped.
SKLEARN_MAX_NK = 3e8
# The optimal DP costs O(k n) with a large constant (and 2x when its table exceeds 256 MiB).
OPTIMAL_MAX_NK = 3e8


def timed(fn, repeats: int):
    """(median seconds, result): one call first; cheap calls are then repeated and the median taken."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    if first > 2.0 or repeats <= 1:
        return first, result
    return time_call(fn, repeats=repeats, warmup=0), result


def sse_of(x: torch.Tensor, codebook) -> float:
    book = torch.sort(torch.as_tensor(codebook, dtype=torch.float32).reshape(-1))[0]
    _, deq = ops.quantize_to_codebook(x, book)
    return float((deq.double() - x.double()).square_().sum())


# qcnn.codebook.fit's KDE defaults: 100 000 sampled values (block-stratified, exact tails,
# post-stratified on 64 strata), Scott with the finite-population correction, variance-corrected.
KDE_SAMPLE_SIZE = 100_000
KDE_GRID_SIZE = 2048


def kde_codebook(x: torch.Tensor, k: int, method: str):
    density, start, step, _ = ops.kde_grid_density(x, None, KDE_SAMPLE_SIZE, "scott", 1.0, KDE_GRID_SIZE, 0)
    if method == "kde_kmeans":
        grid = start + step * torch.arange(KDE_GRID_SIZE, dtype=torch.float64)
        return ops.kmeans_1d(grid, k, density, "optimal")[0]
    return ops.lloyd_max(density, start, step, k)[0]


def make_data(dist: str, n: int, real: torch.Tensor | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    if dist == "gaussian":
        return torch.randn(n, generator=g) * 0.05
    if dist == "laplacian":
        u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
        return (-0.05 * torch.sign(u) * torch.log1p(-2 * u.abs())).float()
    return real


def load_real(path: str) -> torch.Tensor:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    parts = [t.detach().float().reshape(-1) for name, t in state.items()
             if isinstance(t, torch.Tensor) and name.endswith("weight") and t.dim() >= 2 and t.numel() >= 10_000]
    if not parts:
        raise SystemExit(f"{path}: no conv/linear weight with >= 1e4 elements")
    return torch.cat(parts)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="n = 1e5 and 1e6 only, k = 4 and 16")
    p.add_argument("--state-dict", default=None, help="torch state dict whose conv/linear weights form the 'real' rows")
    args = p.parse_args()
    try:
        import ckwrap
        import flash1dkmeans
        from sklearn.cluster import KMeans
    except ImportError as err:
        raise SystemExit(f"bench_codebook needs its peers (pip install -r benchmarks/requirements.txt): {err}")
    flash1dkmeans.kmeans_1d(np.linspace(-1.0, 1.0, 1000, dtype=np.float32), 4, random_state=0)  # numba compile

    sizes = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
    ks = [4, 16] if args.quick else [4, 16, 256]
    real = load_real(args.state_dict) if args.state_dict else None
    if real is None:
        print("note: no --state-dict given, the rows on real trained weights are skipped")
    cases = [(d, n) for d in ("gaussian", "laplacian") for n in sizes]
    if real is not None:
        cases.append(("real", real.numel()))
    anchor = "sklearn KMeans(n_init=1)"
    rows = []
    for dist, n in cases:
        x = make_data(dist, n, real)
        x_np = x.numpy().reshape(-1, 1)
        for k in ks:
            tag = f"{dist} n={n:.0e} k={k}"
            sk_s = sk_sse = None
            note = ""
            if n * k <= SKLEARN_MAX_NK:
                sk_s, km = timed(lambda: KMeans(n_clusters=k, n_init=1, random_state=0).fit(x_np), 1)
                sk_sse = sse_of(x, km.cluster_centers_[:, 0])
            else:
                note = f"sklearn skipped: n*k = {n * k:.1e} > {SKLEARN_MAX_NK:.0e} (minutes per fit)"

            def add(method: str, seconds: float, sse: float, peer: str = anchor, peer_s: float | None = sk_s,
                    peer_sse: float | None = sk_sse, **extra):
                r = row(f"{tag} {method}", seconds, peer, peer_s if peer_s is not None else float("nan"), **extra)
                if peer_s is None:
                    r["anchor_s"] = None
                    r["ratio"] = None
                r["sse"] = sse
                r["sse_ratio"] = sse / peer_sse if peer_sse else None
                if note and peer == anchor:
                    r["note"] = note
                rows.append(r)
                print(f"{r['case']}: {seconds:.4g} s, sse {sse:.6g}"
                      + (f", {r['ratio']:.1f}x vs {peer}, sse ratio {r['sse_ratio']:.5f}" if peer_s else ""),
                      flush=True)

            km_s, (c, _) = timed(lambda: ops.kmeans_1d(x, k), args.repeats)
            km_sse = sse_of(x, c)
            add("kmeans_1d", km_s, km_sse)
            fl_s, (fl_c, _) = timed(lambda: flash1dkmeans.kmeans_1d(x_np[:, 0], k, random_state=0), args.repeats)
            add("kmeans_1d vs flash1dkmeans", km_s, km_sse, "flash1dkmeans.kmeans_1d", fl_s, sse_of(x, fl_c))
            if n * k <= OPTIMAL_MAX_NK:
                opt_s, (c, _) = timed(lambda: ops.kmeans_1d_optimal(x, k), args.repeats)
                opt_sse = sse_of(x, c)
                add("kmeans_1d_optimal", opt_s, opt_sse)
                ck_s, ck = timed(lambda: ckwrap.ckmeans(x_np[:, 0], k), args.repeats)
                add("kmeans_1d_optimal vs ckwrap", opt_s, opt_sse, "ckwrap.ckmeans", ck_s, sse_of(x, ck.centers))
            else:
                rows.append({"case": f"{tag} kmeans_1d_optimal", "qcnn_s": None, "anchor": anchor, "anchor_s": None,
                             "ratio": None, "note": f"skipped: n*k = {n * k:.1e} > {OPTIMAL_MAX_NK:.0e}"})
            for method in ("kde_kmeans", "kde_lloyd_max"):
                kde_s, c = timed(lambda: kde_codebook(x, k, method), args.repeats)
                sse = sse_of(x, c)
                add(method, kde_s, sse, speedup_vs_kmeans_1d=km_s / kde_s, sse_vs_kmeans_1d=sse / km_sse)
    report("codebook", rows, args.json)
    summarize(rows)


def summarize(rows: list[dict]) -> None:
    def get(case):
        return next((r for r in rows if r["case"] == case), None)

    print("\n## goals")
    for dist in ("gaussian", "laplacian"):
        r = get(f"{dist} n=1e+06 k=16 kmeans_1d")
        if r and r.get("ratio"):
            print(f"{dist}: kmeans_1d at n=1e6, k=16: {r['ratio']:.1f}x faster than sklearn (goal 50x), "
                  f"SSE ratio {r['sse_ratio']:.5f} (goal <= 1.005)")
        r = get(f"{dist} n=1e+07 k=16 kde_lloyd_max")
        if r:
            print(f"{dist}: KDE-LM at n=1e7, k=16: {r['speedup_vs_kmeans_1d']:.1f}x faster than kmeans_1d (goal 10x), "
                  f"SSE ratio {r['sse_vs_kmeans_1d']:.5f} (goal <= 1.01)")
    kde = [r for r in rows if r["case"].split()[-1] in ("kde_kmeans", "kde_lloyd_max") and r.get("sse_vs_kmeans_1d")
           and int(r["case"].split()[2][2:]) <= 16]
    if kde:
        worst = max(kde, key=lambda r: r["sse_vs_kmeans_1d"])
        print(f"KDE fits at k <= 16: worst SSE ratio to kmeans_1d {worst['sse_vs_kmeans_1d']:.5f} ({worst['case']}; "
              "goal <= 1.01)")
    opt = [r for r in rows if r["case"].endswith("kmeans_1d_optimal") and r.get("ratio")]
    if opt:
        worst_sse = max(r["sse_ratio"] for r in opt)
        slowest = min(r["ratio"] for r in opt)
        print(f"kmeans_1d_optimal vs sklearn over {len(opt)} cases: worst SSE ratio {worst_sse:.6f} (goal <= 1), "
              f"lowest speed ratio {slowest:.2f} (goal >= 1)")
    for peer in ("flash1dkmeans", "ckwrap"):
        peer_rows = [r for r in rows if r["case"].endswith(f"vs {peer}")]
        if peer_rows:
            slowest = min(peer_rows, key=lambda r: r["ratio"])
            worst = max(peer_rows, key=lambda r: r["sse_ratio"])
            print(f"{peer} over {len(peer_rows)} cases: lowest speed ratio {slowest['ratio']:.2f} ({slowest['case']}), "
                  f"worst SSE ratio {worst['sse_ratio']:.6f} ({worst['case']})")
    print(f"machine: {machine().get('cpu_model', '?')}, {machine()['cpu_count']} cpus")


if __name__ == "__main__":
    main()
