"""Exact PCA of VFM tokens from streamed float64 sums, and the PCA object every stage uses.

Fitting never holds the token matrix: each worker keeps a `PCAAccumulator` (token count, sum [D], sum of outer
products [D, D], all float64), accumulators are merged, and `fit_pca` turns the merged sums into the covariance of
the per-dimension z-scored tokens and does ONE symmetric eigendecomposition. Memory is O(D^2) whatever the token
count, the result is deterministic, and it equals scikit-learn's exact PCA fitted on the z-scored matrix (as
DINO-Foresight standardises: population mean/std per dimension, then sklearn PCA).

Derivation (x = one token, n tokens, S1 = sum x, S2 = sum x x^T):
    mu  = S1 / n
    Cx  = S2 / n - mu mu^T                       population covariance of x
    sd  = sqrt(diag(Cx))                         population std (ddof 0), as DINO-Foresight's np.std
    z   = (x - mu) / sd                          has mean exactly 0, so
    Cz  = Cx / (sd sd^T)                         population covariance of z (a correlation matrix)
    Cz v_k = lambda_k v_k                        eigh, sorted descending
    explained_variance_k = lambda_k * n / (n-1)  sklearn divides squared singular values by n - 1

`PCA.center` is the mean that is subtracted from z before projecting. It is 0 for our fits (z has mean 0 by
construction) and sklearn's `mean_` for an imported DINO-Foresight PCA (about, not exactly, 0 there).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from functools import cached_property
from typing import Any

import fsspec
import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from pipeline import atomic

FORMAT = "re2pix-pca-v1"
TENSOR_KEYS = ("mean", "std", "center", "components", "explained_variance", "explained_variance_ratio")

# A dimension whose population variance is at most this fraction of its mean square is treated as constant:
# float64 cancellation in S2/n - mu^2 leaves ~1e-15 * mean square of noise, so anything below 1e-12 is no signal.
# Such dimensions get std = 1 (their z-score is then 0 instead of 0/0 = NaN) and take no part in the covariance.
CONSTANT_DIM_RELATIVE_VARIANCE = 1e-12

# add() converts rows to float64 in blocks of about this many elements (64 MiB), so a large float32 chunk never
# gets a full-size float64 copy.
FLOAT64_BLOCK_ELEMENTS = 1 << 23


def _as_2d_tokens(x: torch.Tensor | np.ndarray, dim: int) -> torch.Tensor | np.ndarray:
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(
            f"PCA tokens must have shape [N, {dim}], got {tuple(x.shape)}; flatten feature maps first "
            "(e.g. f.permute(0, 2, 3, 1).reshape(-1, D), or use add_maps for [B, D, h, w])"
        )
    return x


class PCAAccumulator:
    """Streaming float64 sums over tokens: count, sum [D], sum of outer products [D, D]. Merge across workers."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"PCAAccumulator dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.count = 0
        self.sum = np.zeros(self.dim, dtype=np.float64)
        self.sum_outer = np.zeros((self.dim, self.dim), dtype=np.float64)

    def add(self, x: torch.Tensor | np.ndarray) -> None:
        """Accumulate tokens x [N, D] (any float dtype). A CUDA tensor's products are formed on its GPU."""
        x = _as_2d_tokens(x, self.dim)
        # Checked before anything is added, so a bad chunk leaves the sums untouched.
        finite = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())
        if not finite:
            raise ValueError("PCA tokens contain NaN or inf; fix the features before fitting the PCA")
        rows = max(1, FLOAT64_BLOCK_ELEMENTS // self.dim)
        for start in range(0, x.shape[0], rows):
            block = x[start : start + rows]
            if isinstance(block, torch.Tensor):
                block = block.detach().to(torch.float64)
                if block.device.type != "cpu":
                    self._add_on_device(block)
                    continue
            block64 = np.asarray(block, dtype=np.float64)
            # `a.T @ a` on the same buffer makes numpy call BLAS syrk: half the work of a general product.
            self.sum_outer += block64.T @ block64
            self.sum += block64.sum(0)
            self.count += block64.shape[0]

    def _add_on_device(self, block64: torch.Tensor) -> None:
        """Form the float64 products on the tensor's own device (a GPU), then bring the D x D result home."""
        self.sum_outer += (block64.T @ block64).cpu().numpy()
        self.sum += block64.sum(0).cpu().numpy()
        self.count += block64.shape[0]

    def add_maps(self, f: torch.Tensor) -> None:
        """Accumulate every token of feature maps f [B, D, h, w]."""
        if f.ndim != 4 or f.shape[1] != self.dim:
            raise ValueError(f"feature maps must have shape [B, {self.dim}, h, w], got {tuple(f.shape)}")
        self.add(f.permute(0, 2, 3, 1).reshape(-1, self.dim))

    def merge(self, other: PCAAccumulator) -> PCAAccumulator:
        """Add another accumulator's sums into this one (in place); returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge PCA accumulators of different dims ({self.dim} and {other.dim})")
        self.count += other.count
        self.sum += other.sum
        self.sum_outer += other.sum_outer
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "count": np.asarray(self.count, dtype=np.int64),
            "sum": self.sum.copy(),
            "sum_outer": self.sum_outer.copy(),
        }

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray]) -> PCAAccumulator:
        missing = {"count", "sum", "sum_outer"} - set(d)
        if missing:
            raise ValueError(f"PCA accumulator state is missing {sorted(missing)}")
        total = np.asarray(d["sum"], dtype=np.float64)
        outer = np.asarray(d["sum_outer"], dtype=np.float64)
        if total.ndim != 1 or outer.shape != (total.shape[0], total.shape[0]):
            raise ValueError(
                f"PCA accumulator state has inconsistent shapes: sum {total.shape}, sum_outer {outer.shape}"
            )
        accumulator = cls(total.shape[0])
        accumulator.count = int(d["count"])
        accumulator.sum[:] = total
        accumulator.sum_outer[:] = outer
        return accumulator


def fit_pca(accumulator: PCAAccumulator, components: int, standardize: bool = True) -> PCA:
    """Exact PCA (z-score, covariance, one eigendecomposition) of everything the accumulator has seen.

    `standardize=False` skips the z-score (std = 1 everywhere): the PCA of the raw covariance, which minimises the
    reconstruction error in the input's own units (what a pixel codec wants; see pipeline/codec_linear.py)."""
    n, dim = accumulator.count, accumulator.dim
    if n < 2:
        raise ValueError(f"fitting a PCA needs at least 2 tokens, the accumulator has {n}")
    if not 1 <= components <= min(n, dim):
        raise ValueError(f"PCA components must be in [1, min(tokens={n}, dim={dim})], got {components}")

    # In-place steps: a few D x D float64 buffers at a time, whatever the token count.
    mean = accumulator.sum / n
    cov_z = accumulator.sum_outer / n
    cov_z -= np.outer(mean, mean)  # Cx
    variance = np.diag(cov_z).copy()
    mean_square = np.diag(accumulator.sum_outer) / n
    constant = variance <= CONSTANT_DIM_RELATIVE_VARIANCE * mean_square
    std = np.where(constant, 1.0, np.sqrt(np.maximum(variance, 0.0)))
    if not standardize:
        std = np.ones_like(std)

    cov_z /= std[:, None]
    cov_z /= std[None, :]  # Cz = Cx / (sd sd^T)
    cov_z[constant, :] = 0.0
    cov_z[:, constant] = 0.0
    cov_z += cov_z.T  # exact symmetry for eigh (numpy buffers the overlapping transpose)
    cov_z *= 0.5

    eigenvalues, eigenvectors = np.linalg.eigh(cov_z)  # ascending
    eigenvalues = np.maximum(eigenvalues[::-1], 0.0)  # rounding can leave tiny negatives on a PSD matrix
    vectors = eigenvectors[:, ::-1].T[:components].copy()  # [K, D]

    # sklearn's svd_flip(u_based_decision=False): the largest-|.| entry of every component is positive.
    largest = np.argmax(np.abs(vectors), axis=1)
    vectors *= np.sign(vectors[np.arange(components), largest])[:, None]

    explained_variance = eigenvalues * n / (n - 1)
    total = explained_variance.sum()
    ratio = explained_variance / total if total > 0 else np.zeros_like(explained_variance)
    return PCA(
        mean=torch.from_numpy(mean),
        std=torch.from_numpy(std),
        components=torch.from_numpy(vectors),
        explained_variance=torch.from_numpy(explained_variance[:components].copy()),
        explained_variance_ratio=torch.from_numpy(ratio[:components].copy()),
        center=torch.zeros(dim, dtype=torch.float64),
        count=n,
        source="fit",
    )


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with fsspec.open(str(path), "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"PCA file {path} does not exist; fit one (pipeline PCA pass) or fix the path"
        ) from None


def _safetensors_metadata(data: bytes, path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a safetensors file: 8-byte little-endian header length, then a JSON header."""
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        return dict(header.get("__metadata__") or {})
    except (struct.error, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(
            f"PCA file {path} is not a valid safetensors file ({e}); delete it and fit the PCA again"
        ) from e


class PCA:
    """A fitted PCA on VFM channels: z-score per dimension, subtract `center`, project on `components`."""

    def __init__(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        components: torch.Tensor,
        explained_variance: torch.Tensor,
        explained_variance_ratio: torch.Tensor,
        center: torch.Tensor | None = None,
        count: int = 0,
        source: str = "fit",
    ):
        if components.ndim != 2:
            raise ValueError(f"PCA components must be [K, D], got {tuple(components.shape)}")
        k, d = components.shape
        center = torch.zeros_like(mean) if center is None else center
        for name, t, shape in (
            ("mean", mean, (d,)),
            ("std", std, (d,)),
            ("center", center, (d,)),
            ("explained_variance", explained_variance, (k,)),
            ("explained_variance_ratio", explained_variance_ratio, (k,)),
        ):
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"PCA {name} must have shape {shape} to match components {tuple(components.shape)}, "
                    f"got {tuple(t.shape)}"
                )
        if not bool((std > 0).all()):
            raise ValueError("PCA std must be positive in every dimension (constant dimensions use std = 1)")
        self.mean = mean
        self.std = std
        self.center = center
        self.components = components
        self.explained_variance = explained_variance
        self.explained_variance_ratio = explained_variance_ratio
        self.count = int(count)  # tokens the PCA was fitted on (0 if unknown)
        self.source = source

    def __repr__(self) -> str:
        return (f"PCA(dim={self.dim}, n_components={self.n_components}, count={self.count}, source={self.source!r}, "
                f"explained={float(self.explained_variance_ratio.sum()):.4f}, dtype={self.components.dtype}, "
                f"fingerprint={self.fingerprint})")

    @property
    def dim(self) -> int:
        return self.components.shape[1]

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key) for key in TENSOR_KEYS}

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over name, dtype, shape and bytes of every tensor (first 16 hex digits); device-independent."""
        h = hashlib.sha256()
        for key, t in self._tensors().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]

    def _check(self, x: torch.Tensor, size: int, what: str) -> torch.Tensor:
        if x.shape[-1] != size:
            raise ValueError(f"PCA {what} expects last dim {size}, got shape {tuple(x.shape)}")
        if x.device != self.components.device:
            raise ValueError(f"input is on {x.device} but the PCA is on {self.components.device}; call pca.to(device)")
        return x.to(self.components.dtype)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., K]: (((x - mean) / std) - center) @ components^T."""
        x = self._check(x, self.dim, "project")
        return (((x - self.mean) / self.std) - self.center) @ self.components.T

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """[..., K'] -> [..., D] for any K' <= K leading coefficients: (z @ components[:K'] + center) * std + mean."""
        k = z.shape[-1]
        if not 1 <= k <= self.n_components:
            raise ValueError(f"PCA inverse takes 1..{self.n_components} coefficients, got shape {tuple(z.shape)}")
        z = self._check(z, k, "inverse")
        return (z @ self.components[:k] + self.center) * self.std + self.mean

    def project_maps(self, f: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] -> [B, K, h, w]."""
        if f.ndim != 4:
            raise ValueError(f"project_maps expects [B, {self.dim}, h, w], got {tuple(f.shape)}")
        return self.project(f.movedim(1, -1)).movedim(-1, 1)

    def inverse_maps(self, z: torch.Tensor) -> torch.Tensor:
        """[B, K', h, w] -> [B, D, h, w]."""
        if z.ndim != 4:
            raise ValueError(f"inverse_maps expects [B, K, h, w], got {tuple(z.shape)}")
        return self.inverse(z.movedim(1, -1)).movedim(-1, 1)

    def to(self, *args: Any, **kwargs: Any) -> PCA:
        """A copy with every tensor moved/cast like `Tensor.to` (device and/or dtype)."""
        moved = {key: t.to(*args, **kwargs) for key, t in self._tensors().items()}
        return PCA(**moved, count=self.count, source=self.source)

    def save(self, path: str | os.PathLike) -> None:
        """Write safetensors (atomically; local path or fsspec URL) with format, fit count, source and fingerprint."""
        tensors = {key: t.detach().cpu().contiguous() for key, t in self._tensors().items()}
        metadata = {
            "format": FORMAT,
            "count": str(self.count),
            "source": self.source,
            "fingerprint": self.fingerprint,
            "dim": str(self.dim),
            "n_components": str(self.n_components),
        }
        atomic.write_bytes(path, save_safetensors(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCA:
        data = _read_bytes(path)
        metadata = _safetensors_metadata(data, path)
        try:
            tensors = load_safetensors(data)
        except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
            raise ValueError(f"PCA file {path} is corrupt ({e}); delete it and fit the PCA again") from e
        missing = [key for key in TENSOR_KEYS if key not in tensors]
        if missing:
            raise ValueError(
                f"PCA file {path} lacks tensors {missing} (has {sorted(tensors)}); it is not a Re2Pix PCA. "
                "A DINO-Foresight .pth checkpoint is imported with PCA.from_dino_foresight"
            )
        try:
            pca = cls(**{key: tensors[key] for key in TENSOR_KEYS}, count=int(metadata.get("count", 0)),
                      source=metadata.get("source", "fit"))
        except ValueError as e:
            raise ValueError(f"PCA file {path} is inconsistent: {e}") from e
        stored = metadata.get("fingerprint")
        if stored is not None and stored != pca.fingerprint:
            raise ValueError(f"PCA file {path} fingerprint {pca.fingerprint} != recorded {stored}: the file is corrupt")
        return pca

    @classmethod
    def open(cls, path: str | os.PathLike, allow_pickle: bool = False) -> PCA:
        """Either kind of PCA file by its suffix: DINO-Foresight's pickled .pth/.pt, else our .safetensors."""
        if str(path).lower().endswith((".pth", ".pt")):
            return cls.from_dino_foresight(path, allow_pickle=allow_pickle)
        return cls.load(path)

    @classmethod
    def from_dino_foresight(cls, path: str | os.PathLike, allow_pickle: bool = False) -> PCA:
        """Import DINO-Foresight's released PCA (`dinov2_pca_448_l[2_5_8_11]_1152.pth`).

        That file is a torch.save'd pickle {'pca_model': sklearn PCA, 'mean': ndarray(D,), 'std': ndarray(D,)};
        projecting with it is (((f - mean) / std) - pca_model.mean_) @ pca_model.components_^T. All tensors are
        upcast to float64 (lossless); use `.to(torch.float32)` for speed.
        """
        if not allow_pickle:
            raise ValueError(
                f"refusing to load {path}: DINO-Foresight's PCA is a pickle, and unpickling runs arbitrary code. "
                "Only if you trust the file, pass allow_pickle=True (config: pca.allow_pickle = true)"
            )
        try:
            import sklearn  # noqa: F401  (the pickle holds a sklearn PCA object)
        except ImportError:
            raise ImportError(f"importing {path} needs scikit-learn (pip install scikit-learn)") from None
        if not atomic.is_url(path) and not os.path.exists(path):
            raise FileNotFoundError(f"DINO-Foresight PCA file {path} does not exist")
        with fsspec.open(str(path), "rb") as f:
            try:
                checkpoint = torch.load(f, map_location="cpu", weights_only=False)
            except Exception as e:
                raise ValueError(
                    f"cannot unpickle {path} ({type(e).__name__}: {e}); it needs a compatible sklearn"
                ) from e
        if not isinstance(checkpoint, dict) or not {"pca_model", "mean", "std"} <= set(checkpoint):
            keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(
                f"{path} is not a DINO-Foresight PCA checkpoint: expected keys pca_model, mean, std; got {keys}"
            )
        model = checkpoint["pca_model"]
        for attr in ("components_", "mean_", "explained_variance_", "explained_variance_ratio_"):
            if not hasattr(model, attr):
                raise ValueError(f"{path}: pca_model has no {attr}; it is not a fitted sklearn PCA")

        def f64(a: Any) -> torch.Tensor:
            return torch.from_numpy(np.array(a, dtype=np.float64))

        try:
            return cls(
                mean=f64(checkpoint["mean"]),
                std=f64(checkpoint["std"]),
                components=f64(model.components_),
                explained_variance=f64(model.explained_variance_),
                explained_variance_ratio=f64(model.explained_variance_ratio_),
                center=f64(model.mean_),
                count=int(getattr(model, "n_samples_", 0)),
                source=f"dino_foresight:{os.path.basename(str(path))}",
            )
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
