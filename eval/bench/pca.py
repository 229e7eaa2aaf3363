"""`bench pca`: our streamed exact PCA against scikit-learn on the same token matrix (time, memory, agreement).

The matrix is written once to a temporary .npy (synthetic, or a real token matrix given by `path`), and every
method runs in its own freshly spawned process that loads it, so each memory figure is clean:
- `peak RSS extra`: the process's peak resident memory (getrusage ru_maxrss) during the method, minus its resident
  memory just before, with the matrix already loaded. It counts everything (numpy, BLAS/LAPACK workspace, torch).
- `numpy peak`: tracemalloc's peak over the method, which sees numpy array allocations only.
Methods:
- `ours`: PCAAccumulator.add over `chunk`-row slices of the raw matrix, then fit_pca. It never needs the matrix;
  the slices here stand in for chunks streaming out of the VFM.
- `sklearn/<solver>`: DINO-Foresight's recipe: z-score per dimension (population std, done in place here, so its
  copy is not charged), then sklearn PCA(n_components) with that solver. `randomized` is what sklearn's default
  ('auto') picks at DINO-Foresight's size; `full` is the exact SVD (only when it fits the time budget);
  `covariance_eigh` is sklearn's own in-memory version of our method.
Agreement with ours: mean |cos| between same-index components (top 16 and 64) and the largest difference in
explained-variance ratio over all components.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.console import console, progress, summary

# `full` (an exact SVD of the whole matrix) is run by default only below this many tokens x dim^2 (about 40 s on
# 2 cores at 20k x 3072).
FULL_SVD_BUDGET = 2.0e11
GENERATE_ROWS = 4096  # rows generated per step, so writing the matrix never needs it in memory


def synthetic_tokens(path: Path, tokens: int, dim: int, seed: int) -> None:
    """VFM-like tokens: power-law spectrum over dim/2 latent factors, isotropic noise, per-dim offsets and scales."""
    rng = np.random.default_rng(seed)
    rank = max(1, dim // 2)
    mixing = (rng.standard_normal((rank, dim)) / np.sqrt(dim)).astype(np.float32)
    spectrum = (np.arange(1, rank + 1, dtype=np.float32) ** -0.7) * 4.0
    scale = np.exp(rng.normal(0.0, 0.5, dim)).astype(np.float32)
    offset = rng.normal(0.0, 2.0, dim).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(tokens, dim))
    for start in range(0, tokens, GENERATE_ROWS):
        rows = min(GENERATE_ROWS, tokens - start)
        latent = rng.standard_normal((rows, rank), dtype=np.float32) * spectrum
        noise = 0.05 * rng.standard_normal((rows, dim), dtype=np.float32)
        out[start : start + rows] = (latent @ mixing + noise) * scale + offset
    out.flush()
    del out


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux: fall back to the peak so far
        return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _zscore_in_place(x: np.ndarray, chunk: int) -> None:
    mean = x.mean(0, dtype=np.float64)
    var = np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        var += ((x[start : start + chunk] - mean) ** 2).sum(0)
    std = np.sqrt(var / len(x))
    std[std == 0] = 1.0
    for start in range(0, len(x), chunk):
        x[start : start + chunk] -= mean.astype(np.float32)
        x[start : start + chunk] /= std.astype(np.float32)


def run_method(method: str, matrix: str, out_dir: str, components: int, chunk: int, seed: int) -> dict:
    """One method in this (fresh) process; writes its components and explained-variance ratio to out_dir."""
    import torch  # noqa: F401  (imported before the baseline so library loading is not charged to a method)
    from sklearn.decomposition import PCA as SklearnPCA

    from pipeline.pca import PCAAccumulator, fit_pca

    # Warm up BLAS/LAPACK threads and lazy imports on a tiny problem so the timing is the method's own.
    warm = np.random.default_rng(seed).standard_normal((600, 64))
    for solver in ("randomized", "covariance_eigh", "full"):
        SklearnPCA(n_components=8, svd_solver=solver, random_state=seed).fit(warm)
    warm_acc = PCAAccumulator(64)
    warm_acc.add(warm)
    fit_pca(warm_acc, 8)

    x = np.load(matrix)
    rss_before = _rss_bytes()
    tracemalloc.start()
    start = time.perf_counter()
    if method == "ours":
        accumulator = PCAAccumulator(x.shape[1])
        for i in range(0, len(x), chunk):
            accumulator.add(x[i : i + chunk])
        pca = fit_pca(accumulator, components)
        result_components, ratio = pca.components.numpy(), pca.explained_variance_ratio.numpy()
    else:
        solver = method.split("/", 1)[1]
        _zscore_in_place(x, chunk)
        model = SklearnPCA(n_components=components, svd_solver=solver, random_state=seed).fit(x)
        result_components, ratio = model.components_, model.explained_variance_ratio_
    seconds = time.perf_counter() - start
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    name = method.replace("/", "_")
    np.save(Path(out_dir) / f"{name}_components.npy", result_components)
    np.save(Path(out_dir) / f"{name}_ratio.npy", ratio)
    return {
        "seconds": seconds,
        "peak_rss_extra_mib": max(0, _peak_rss_bytes() - rss_before) / 2**20,
        "numpy_peak_mib": numpy_peak / 2**20,
    }


def _agreement(ours: np.ndarray, theirs: np.ndarray, ours_ratio: np.ndarray, theirs_ratio: np.ndarray) -> dict:
    cos = np.abs((ours * theirs).sum(1)) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    return {
        "mean_abs_cos_16": float(cos[:16].mean()),
        "mean_abs_cos_64": float(cos[:64].mean()),
        "max_ratio_diff": float(np.abs(ours_ratio - theirs_ratio).max()),
    }


def run(
    tokens: int = 20_000,
    dim: int = 3072,
    components: int = 1152,
    chunk: int = 5_000,
    seed: int = 0,
    path: str | None = None,
    full: bool | None = None,
) -> dict:
    """Time and measure ours vs sklearn on one token matrix; print a table; return the figures.

    path: a real token matrix (.npy, [N, D]) to use instead of the synthetic one (tokens and dim then come from it).
    full: also run sklearn's exact `full` SVD (None: only if tokens x dim^2 <= FULL_SVD_BUDGET).
    """
    with tempfile.TemporaryDirectory(prefix="bench_pca_") as tmp:
        if path is None:
            matrix = Path(tmp) / "tokens.npy"
            console.print(f"writing a synthetic {tokens} x {dim} float32 token matrix")
            synthetic_tokens(matrix, tokens, dim, seed)
            source = "synthetic"
        else:
            matrix = Path(path)
            if not matrix.exists():
                raise FileNotFoundError(f"bench pca: token matrix {matrix} does not exist (expected a .npy [N, D])")
            source = str(matrix)
        shape = np.load(matrix, mmap_mode="r").shape
        if len(shape) != 2:
            raise ValueError(f"bench pca: {matrix} has shape {shape}; expected a token matrix [N, D]")
        tokens, dim = shape
        if not 1 <= components <= min(tokens, dim):
            raise ValueError(
                f"bench pca: components must be in [1, min(tokens, dim)] = [1, {min(tokens, dim)}], got {components}"
            )
        if full is None:
            full = tokens * dim**2 <= FULL_SVD_BUDGET
        methods = ["ours", "sklearn/randomized", "sklearn/covariance_eigh"] + (["sklearn/full"] if full else [])

        figures: dict[str, dict] = {}
        with progress() as bar:
            task = bar.add_task("bench pca", total=len(methods), status="")
            for method in methods:
                bar.update(task, status=method)
                # A fresh process per method: clean peak-RSS figures, no memory shared between methods.
                with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                    job = pool.submit(run_method, method, str(matrix), tmp, components, chunk, seed)
                    figures[method] = job.result()
                console.print(f"{method}: {figures[method]['seconds']:.1f} s")
                bar.advance(task)

        ours = np.load(Path(tmp) / "ours_components.npy")
        ours_ratio = np.load(Path(tmp) / "ours_ratio.npy")
        for method, row in figures.items():
            name = method.replace("/", "_")
            theirs = np.load(Path(tmp) / f"{name}_components.npy")
            theirs_ratio = np.load(Path(tmp) / f"{name}_ratio.npy")
            row.update(_agreement(ours, theirs, ours_ratio, theirs_ratio))
            row["explained_ratio_total"] = float(theirs_ratio.sum())

    table = Table(title=f"bench pca: {tokens} tokens x {dim} dims -> {components} components ({source})")
    for column in ("method", "seconds", "RSS+ MiB", "numpy MiB", "|cos| 16", "|cos| 64", "max Δratio", "Σ ratio"):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True)
    for method, r in figures.items():
        table.add_row(method, f"{r['seconds']:.1f}", f"{r['peak_rss_extra_mib']:.0f}", f"{r['numpy_peak_mib']:.0f}",
                      f"{r['mean_abs_cos_16']:.6f}", f"{r['mean_abs_cos_64']:.6f}", f"{r['max_ratio_diff']:.2e}",
                      f"{r['explained_ratio_total']:.4f}")
    # The table is wider than a non-terminal's default 80 columns; give it room rather than truncate the figures.
    Console(stderr=True, highlight=False, width=max(console.width, 120)).print(table)
    matrix_mib = tokens * dim * 4 / 2**20
    summary(
        f"bench pca: ours {figures['ours']['seconds']:.1f} s / {figures['ours']['peak_rss_extra_mib']:.0f} MiB extra, "
        f"sklearn randomized {figures['sklearn/randomized']['seconds']:.1f} s / "
        f"{figures['sklearn/randomized']['peak_rss_extra_mib']:.0f} MiB extra (matrix {matrix_mib:.0f} MiB)"
    )
    return {"tokens": tokens, "dim": dim, "components": components, "chunk": chunk, "seed": seed, "source": source,
            "matrix_mib": matrix_mib, "methods": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--components", type=int, default=1152)
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", default=None, help="a real token matrix (.npy [N, D]) instead of synthetic tokens")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    run(args.tokens, args.dim, args.components, args.chunk, args.seed, args.path, args.full)


if __name__ == "__main__":
    main()
