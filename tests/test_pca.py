"""Exact streamed PCA against scikit-learn, merging, save/load, and the DINO-Foresight import."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA as SklearnPCA

from pipeline.pca import PCA, PCAAccumulator, fit_pca

DIM = 24


def tokens(n: int = 3000, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Low-rank signal with a distinct spectrum, per-dimension offsets and scales, plus noise (float64)."""
    rng = np.random.default_rng(seed)
    signal = (rng.standard_normal((n, 8)) * np.geomspace(4.0, 0.5, 8)) @ rng.standard_normal((8, dim))
    scale = np.linspace(0.5, 3.0, dim)
    offset = rng.uniform(-5.0, 5.0, dim)
    return (signal + 0.3 * rng.standard_normal((n, dim))) * scale + offset


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)  # population std, as DINO-Foresight


def fitted(x: np.ndarray, k: int) -> PCA:
    acc = PCAAccumulator(x.shape[1])
    acc.add(x)
    return fit_pca(acc, k)


def assert_equal_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float) -> np.ndarray:
    """a, b: [..., K] with one sign per last-axis column; returns the signs."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    signs = np.sign((a2 * b2).sum(0))
    np.testing.assert_allclose(a2 * signs, b2, atol=atol, rtol=0)
    return signs


@pytest.mark.parametrize("k", [6, DIM])
def test_matches_sklearn_full_solver(k):
    x = tokens()
    pca = fitted(x, k)
    sk = SklearnPCA(n_components=k, svd_solver="full").fit(zscore(x))

    np.testing.assert_allclose(pca.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pca.std.numpy(), x.std(0), rtol=1e-10)
    assert_equal_up_to_sign(pca.components.numpy().T, sk.components_.T, atol=1e-6)
    np.testing.assert_allclose(pca.explained_variance.numpy(), sk.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(pca.explained_variance_ratio.numpy(), sk.explained_variance_ratio_, rtol=1e-9)
    assert np.all(np.diff(pca.explained_variance.numpy()) <= 0)

    z = pca.project(torch.from_numpy(x)).numpy()
    assert_equal_up_to_sign(z, sk.transform(zscore(x)), atol=1e-8)

    # Our components are orthonormal and follow sklearn's svd_flip rule: largest-|.| entry positive.
    c = pca.components.numpy()
    np.testing.assert_allclose(c @ c.T, np.eye(k), atol=1e-12)
    assert np.all(c[np.arange(k), np.abs(c).argmax(1)] > 0)


def test_streaming_and_merging_equal_one_accumulator():
    x = tokens(seed=1)
    single = PCAAccumulator(DIM)
    single.add(x)

    chunks = np.array_split(x, 3)
    worker_a, worker_b = PCAAccumulator(DIM), PCAAccumulator(DIM)
    worker_a.add(chunks[0])
    worker_b.add(torch.from_numpy(chunks[1]))  # torch and numpy input alike
    worker_b.add(chunks[2])
    # Ship worker_b's state the way a Ray worker would, then merge.
    merged = worker_a.merge(PCAAccumulator.from_state_dict(worker_b.state_dict()))
    assert merged is worker_a

    assert merged.count == single.count == len(x)
    np.testing.assert_allclose(merged.sum, single.sum, rtol=1e-12)
    np.testing.assert_allclose(merged.sum_outer, single.sum_outer, rtol=1e-12)
    a, b = fit_pca(merged, 8), fit_pca(single, 8)
    np.testing.assert_allclose(a.components.numpy(), b.components.numpy(), atol=1e-9)
    np.testing.assert_allclose(a.explained_variance.numpy(), b.explained_variance.numpy(), rtol=1e-10)


def test_fit_is_deterministic():
    x = tokens(seed=2)
    assert fitted(x, 8).fingerprint == fitted(x, 8).fingerprint


def test_block_conversion_does_not_change_the_sums(monkeypatch):
    x = tokens(n=500, seed=3)
    whole = PCAAccumulator(DIM)
    whole.add(x)
    monkeypatch.setattr("pipeline.pca.FLOAT64_BLOCK_ELEMENTS", 7 * DIM)  # 7-row blocks
    blocked = PCAAccumulator(DIM)
    blocked.add(x)
    np.testing.assert_allclose(blocked.sum_outer, whole.sum_outer, rtol=1e-12)
    assert blocked.count == whole.count


def test_low_precision_input_accumulates_in_float64():
    x = torch.from_numpy(tokens(n=400, seed=4)).to(torch.bfloat16)
    acc = PCAAccumulator(DIM)
    acc.add(x)
    exact = x.double().numpy()
    np.testing.assert_allclose(acc.sum_outer, exact.T @ exact, rtol=1e-12)
    maps = PCAAccumulator(DIM)
    maps.add_maps(x.reshape(4, 10, 10, DIM).permute(0, 3, 1, 2))
    np.testing.assert_allclose(maps.sum_outer, acc.sum_outer, rtol=1e-12)


def test_inverse_full_and_truncated():
    x = tokens(seed=5)
    pca = fitted(x, DIM)
    xt = torch.from_numpy(x)
    z = pca.project(xt)
    torch.testing.assert_close(pca.inverse(z), xt, atol=1e-9, rtol=0)

    for k in (3, 8):
        sk = SklearnPCA(n_components=k, svd_solver="full").fit(zscore(x))
        expected = sk.inverse_transform(sk.transform(zscore(x))) * x.std(0) + x.mean(0)
        np.testing.assert_allclose(pca.inverse(z[:, :k]).numpy(), expected, atol=1e-8)


def test_maps_agree_with_tokens():
    x = tokens(n=2 * 5 * 6, seed=6)
    pca = fitted(x, 10)
    maps = torch.from_numpy(x).reshape(2, 5, 6, DIM).permute(0, 3, 1, 2)  # [B, D, h, w]
    z = pca.project_maps(maps)
    assert z.shape == (2, 10, 5, 6)
    torch.testing.assert_close(z.permute(0, 2, 3, 1).reshape(-1, 10), pca.project(torch.from_numpy(x)))
    back = pca.inverse_maps(z)
    assert back.shape == maps.shape
    torch.testing.assert_close(back.permute(0, 2, 3, 1).reshape(-1, DIM), pca.inverse(pca.project(torch.from_numpy(x))))


def test_constant_dimensions_give_no_nans():
    x = tokens(seed=7)
    x[:, 3] = 2.5  # constant, nonzero
    x[:, 11] = 0.0  # constant zero
    pca = fitted(x, DIM)
    for t in (pca.mean, pca.std, pca.components, pca.explained_variance, pca.explained_variance_ratio):
        assert torch.isfinite(t).all()
    assert pca.std[3] == 1.0 and pca.std[11] == 1.0
    xt = torch.from_numpy(x)
    z = pca.project(xt)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(pca.inverse(z), xt, atol=1e-9, rtol=0)
    # The rest equals sklearn on the non-constant columns.
    keep = [i for i in range(DIM) if i not in (3, 11)]
    sk = SklearnPCA(n_components=5, svd_solver="full").fit(zscore(x[:, keep]))
    assert_equal_up_to_sign(pca.components.numpy()[:5, keep].T, sk.components_.T, atol=1e-6)
    np.testing.assert_allclose(pca.explained_variance_ratio.numpy()[:5], sk.explained_variance_ratio_, rtol=1e-9)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    pca = fitted(tokens(seed=8), 8)
    path = tmp_path / "pca.safetensors"
    pca.save(path)
    loaded = PCA.load(path)
    for key in ("mean", "std", "center", "components", "explained_variance", "explained_variance_ratio"):
        a, b = getattr(pca, key), getattr(loaded, key)
        assert a.dtype == b.dtype and torch.equal(a, b), key
    assert loaded.count == 3000 and loaded.fingerprint == pca.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["pca.safetensors"]  # no temporary left behind

    small = pca.to(torch.float32)
    assert small.components.dtype == torch.float32 and small.fingerprint != pca.fingerprint
    assert small.project(torch.zeros(2, DIM)).dtype == torch.float32


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        PCA.load(missing)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all, garbage")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        PCA.load(corrupt)

    truncated = tmp_path / "truncated.safetensors"
    fitted(tokens(seed=9), 4).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        PCA.load(truncated)

    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match=r"other.safetensors lacks tensors .*mean"):
        PCA.load(other)


def dino_foresight_checkpoint(tmp_path, x: np.ndarray, k: int):
    """What DINO-Foresight's pca.py saves, built the same way on a small matrix."""
    # mean/std from a subset, so the z-scored fit data is not exactly centred and pca.mean_ is clearly nonzero.
    mean, std = x[:500].mean(0), x[:500].std(0)
    model = SklearnPCA(n_components=k, svd_solver="full").fit((x - mean) / std)
    path = tmp_path / "dinov2_pca_test.pth"
    torch.save({"pca_model": model, "mean": mean, "std": std}, path)
    return path, model, mean, std


def test_dino_foresight_import(tmp_path):
    x = tokens(seed=10)
    path, model, mean, std = dino_foresight_checkpoint(tmp_path, x, 10)
    pca = PCA.from_dino_foresight(path, allow_pickle=True)
    assert np.abs(model.mean_).max() > 1e-2 and torch.equal(pca.center, torch.from_numpy(model.mean_))

    f = torch.from_numpy(x[:50])
    expected = (((x[:50] - mean) / std) - model.mean_) @ model.components_.T
    np.testing.assert_allclose(pca.project(f).numpy(), expected, atol=1e-12)
    z = pca.project(f)
    expected_back = (z.numpy() @ model.components_ + model.mean_) * std + mean
    np.testing.assert_allclose(pca.inverse(z).numpy(), expected_back, atol=1e-12)
    np.testing.assert_allclose(pca.explained_variance_ratio.numpy(), model.explained_variance_ratio_)
    assert pca.count == len(x) and pca.n_components == 10 and pca.dim == DIM

    # It survives our own save/load, and PCA.open picks the right reader by suffix.
    pca.save(tmp_path / "imported.safetensors")
    assert PCA.load(tmp_path / "imported.safetensors").fingerprint == pca.fingerprint
    assert PCA.open(tmp_path / "imported.safetensors").fingerprint == pca.fingerprint
    assert PCA.open(path, allow_pickle=True).fingerprint == pca.fingerprint
    assert "dino_foresight" in repr(pca)


def test_dino_foresight_import_refuses_pickle_and_bad_files(tmp_path):
    path, *_ = dino_foresight_checkpoint(tmp_path, tokens(seed=11), 4)
    with pytest.raises(ValueError, match="allow_pickle"):
        PCA.from_dino_foresight(path)
    with pytest.raises(ValueError, match="allow_pickle"):
        PCA.open(path)
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": {}}, wrong)
    with pytest.raises(ValueError, match="wrong.pth.*pca_model"):
        PCA.from_dino_foresight(wrong, allow_pickle=True)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        PCA.from_dino_foresight(tmp_path / "absent.pth", allow_pickle=True)


def test_bad_input_is_refused_clearly():
    acc = PCAAccumulator(DIM)
    with pytest.raises(ValueError, match=r"\[N, 24\]"):
        acc.add(np.zeros((2, 3, DIM)))
    bad = tokens(n=10)
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        acc.add(bad)
    assert acc.count == 0 and not acc.sum_outer.any()  # the bad chunk left nothing behind
    with pytest.raises(ValueError, match="different dims"):
        acc.merge(PCAAccumulator(DIM + 1))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        fit_pca(acc, 2)
    acc.add(tokens(n=10))
    with pytest.raises(ValueError, match="components"):
        fit_pca(acc, 11)
    pca = fit_pca(acc, 4)
    with pytest.raises(ValueError, match="last dim 24"):
        pca.project(torch.zeros(3, DIM - 1))
    with pytest.raises(ValueError, match="1..4 coefficients"):
        pca.inverse(torch.zeros(3, 5))


def test_bench_methods_agree_on_a_tiny_matrix(tmp_path):
    """The bench's per-method worker, run in-process on a tiny synthetic matrix (the spawned run is `bench pca`)."""
    from eval.bench.pca import _agreement, run_method, synthetic_tokens

    matrix = tmp_path / "tokens.npy"
    synthetic_tokens(matrix, tokens=600, dim=32, seed=0)
    x = np.load(matrix)
    assert x.shape == (600, 32) and x.dtype == np.float32 and np.isfinite(x).all()
    for method in ("ours", "sklearn/full"):
        figures = run_method(method, str(matrix), str(tmp_path), components=12, chunk=250, seed=0)
        assert set(figures) >= {"seconds", "numpy_peak_mib"}  # what the bench table prints (values are machine-dependent)
    agreement = _agreement(
        np.load(tmp_path / "ours_components.npy"), np.load(tmp_path / "sklearn_full_components.npy"),
        np.load(tmp_path / "ours_ratio.npy"), np.load(tmp_path / "sklearn_full_ratio.npy"),
    )
    assert agreement["mean_abs_cos_16"] > 1 - 1e-4  # sklearn fits float32 data; ours sums in float64
    assert agreement["max_ratio_diff"] < 1e-5
