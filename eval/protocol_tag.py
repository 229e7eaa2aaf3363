"""Protocol tags: one short string per distribution metric, so numbers are compared only with numbers measured the
same way (the same count of samples, clip length, source resolution, resize and network weights).

    fvd<N>_<F>f_<H>x<W>_squash224_<net>    N clips of F predicted frames each, generated at H x W, every frame
                                           squashed to 224 x 224 (no crop), I3D features
    fid<N>_<F>f_<H>x<W>_tf299_<net>        N windows x F predicted frames (N*F images per side), TF1-bilinear to 299
    fdvfm<N>_<F>f_<H>x<W>_pca<C>_<net>     the VFM's PCA coefficients (C of them, spatially averaged) of the same
                                           N*F frames: reproduce's FD-VFM, not FID
    eval<N>_<M>c<F>p_<H>x<W>_s<S>          the whole evaluation: N val windows, M context and F predicted frames,
                                           S samples per generative row

<net> names the weights: `random` (seeded random network: comparable only with itself), `w<sha8>` (the weight
file's fingerprint), `vfm<sha8>` (the VFM+PCA fingerprint). Fréchet distances depend strongly on N (their bias
falls like 1/N), so the tag keeps N in front: fvd64 and fvd2048 numbers must never share a table.
"""

from __future__ import annotations

from typing import Any

from pipeline.fingerprint import RANDOM

VFM_PREFIX = "vfm-pca:"  # reproduce's VFMFeatureNet records its provenance so


def _net(weights: str | None) -> str:
    w = str(weights or RANDOM)
    if w == RANDOM:
        return "random"
    if w.startswith(VFM_PREFIX):
        return "vfm" + w[len(VFM_PREFIX):][:8]
    return "w" + w.split(":", 1)[-1][:8]


def protocol_tags(protocol: dict[str, Any], provenance: dict[str, Any], fd_dim: int | None = None) -> dict[str, str]:
    """evaluate's `protocol` and `provenance` -> {"eval": ..., and "fid" / "fvd" when computed}. The "fid" entry is
    tagged fdvfm... when the FID network is reproduce's VFM feature net (`fd_dim` = its C, else read from the tag)."""
    n, m, f = int(protocol.get("windows") or 0), protocol.get("context_frames"), int(protocol.get("predicted_frames") or 0)
    h, w = (protocol.get("resolution") or ["?", "?"])[:2]
    where = f"{n}_{f}f_{h}x{w}"
    tags = {"eval": f"eval{n}_{m}c{f}p_{h}x{w}_s{protocol.get('samples', 1)}"}
    fid_net = provenance.get("fid_net")
    if fid_net and fid_net != "not computed":
        if str(fid_net).startswith(VFM_PREFIX):
            tags["fid"] = f"fdvfm{where}_pca{fd_dim if fd_dim else '?'}_{_net(fid_net)}"
        else:
            tags["fid"] = f"fid{where}_tf299_{_net(fid_net)}"
    fvd_net = provenance.get("fvd_net")
    if fvd_net and fvd_net != "not computed" and "n/a" not in str(protocol.get("fvd", "")):
        tags["fvd"] = f"fvd{where}_squash224_{_net(fvd_net)}"
    return tags


def tags_line(tags: dict[str, str]) -> str:
    """report.md's one line: `Protocol tags: eval64_13c12p_64x128_s1, fdvfm64_12f_64x128_pca64_vfm1a2b3c4d`."""
    return "Protocol tags: " + ", ".join(f"`{t}`" for t in tags.values()) if tags else "Protocol tags: none"
