"""Import DINO-Foresight's released Lightning checkpoints (`dinof_lowres.ckpt`, `dinof_highres.ckpt`).

`convert_dino_foresight_state_dict` is a pure function on a dict of tensors: it renames the `simple_replace`,
separable-attention model of the README recipe to `models.foresight.FeatureForesight` and infers the model sizes from
the tensor shapes. Every source key is either mapped or deliberately ignored (the frozen DINOv2 backbone, the DPT head,
the PCA buffers, which are returned separately); anything else raises with its name, so a checkpoint of another
variant can never be half-loaded. Reading the file is `train.stage1_init.load_dino_foresight_checkpoint`'s job.
"""

from __future__ import annotations

import re
from typing import Any

import torch

PCA_KEYS = ("pca_mean", "pca_components", "mean", "std")

# Source prefixes that belong to other modules of the Lightning object and are dropped on purpose.
IGNORED_PREFIXES = {
    "dino_v2.": "frozen DINOv2 backbone (our VFM is loaded separately through timm)",
    "head.": "DPT evaluation head (trained and loaded separately)",
}

# Keys of DINO-Foresight variants that the README recipe does not use and our model does not implement.
UNSUPPORTED = {
    "mask_vector": "masking 'half_half'",
    "unmask_vector": "masking 'half_half'",
    "maskvit.fc_in.weight": "a trainable fc_in (masking other than 'simple_replace')",
    "maskvit.first_layer.": "--use_first_last",
    "maskvit.last_layer.": "--use_first_last",
}

_BLOCK = re.compile(r"^maskvit\.transformer\.layers\.(\d+)\.([012])\.(.+)$")
_ATTN = {"fn.mha.in_proj_weight": "qkv.weight", "fn.mha.in_proj_bias": "qkv.bias",
         "fn.mha.out_proj.weight": "proj.weight", "fn.mha.out_proj.bias": "proj.bias"}
_NORM = {"norm.weight": "weight", "norm.bias": "bias"}
_MLP = {"fn.net.0.weight": "mlp.fc1.weight", "fn.net.0.bias": "mlp.fc1.bias",
        "fn.net.3.weight": "mlp.fc2.weight", "fn.net.3.bias": "mlp.fc2.bias"}
_TOP = {
    "embed.weight": "embed.weight",
    "embed.bias": "embed.bias",
    "replace_vector": "mask_token",
    "maskvit.pos_embd.emb.d_0": "pos_time",
    "maskvit.pos_embd.emb.d_1": "pos_row",
    "maskvit.pos_embd.emb.d_2": "pos_col",
    "maskvit.fc_out.weight": "head.weight",
    "maskvit.fc_out.bias": "head.bias",
}


def _block_key(layer: int, sub: str, rest: str) -> str | None:
    """Our name for `maskvit.transformer.layers.{layer}.{sub}.{rest}` (sub 0 = temporal, 1 = spatial, 2 = MLP)."""
    if sub in ("0", "1"):
        suffix = "t" if sub == "0" else "s"
        if rest in _NORM:
            return f"blocks.{layer}.norm_{suffix}.{_NORM[rest]}"
        if rest in _ATTN:
            return f"blocks.{layer}.attn_{suffix}.{_ATTN[rest]}"
        return None
    if rest in _NORM:
        return f"blocks.{layer}.norm_mlp.{_NORM[rest]}"
    return f"blocks.{layer}.{_MLP[rest]}" if rest in _MLP else None


def convert_dino_foresight_state_dict(
    sd: dict[str, torch.Tensor], heads: int = 8
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """DINO-Foresight Lightning state dict -> (FeatureForesight state dict, info).

    info["model"]: the Stage1ModelConfig fields the tensors determine (width, depth, mlp_ratio, in_channels, grid_h,
    grid_w, context_frames) plus `heads` (not recoverable from shapes: the recipe uses 8); info["frames"]: T;
    info["pca"]: the PCA tensors found (pca_mean, pca_components, mean, std); info["ignored"]: the dropped keys;
    info["notes"]: exact adjustments made (e.g. a missing fc_out bias becomes zeros)."""
    sd = {k.removeprefix("state_dict."): v for k, v in sd.items()}
    unsupported = sorted(k for k in sd for bad in UNSUPPORTED if k == bad or (bad.endswith(".") and k.startswith(bad)))
    if unsupported:
        reasons = sorted({r for bad, r in UNSUPPORTED.items() for k in unsupported if k == bad or k.startswith(bad)})
        raise ValueError(
            f"DINO-Foresight checkpoint uses {', '.join(reasons)} (keys {unsupported[:6]}); only the README recipe "
            "(--masking simple_replace --seperable_attention, no --use_first_last) can be imported"
        )

    out: dict[str, torch.Tensor] = {}
    pca: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    layers: set[int] = set()
    for key, value in sd.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in PCA_KEYS:
            pca[key] = value
        elif any(key.startswith(p) for p in IGNORED_PREFIXES):
            ignored.append(key)
        elif (match := _BLOCK.match(key)) and (ours := _block_key(int(match[1]), match[2], match[3])):
            out[ours] = value
            layers.add(int(match[1]))
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"DINO-Foresight checkpoint has {len(unknown)} key(s) that are neither mapped nor known to be ignorable: "
            f"{sorted(unknown)[:12]}; is this a DINO-Foresight (Sta8is/DINO-Foresight) Dino_f checkpoint?"
        )

    required = ("embed.weight", "embed.bias", "mask_token", "pos_time", "pos_row", "pos_col", "head.weight")
    missing = [k for k in required if k not in out]
    if missing or not layers:
        raise ValueError(
            f"DINO-Foresight checkpoint lacks {missing or ['maskvit.transformer.layers.*']}; "
            "the file is truncated or not a Dino_f checkpoint"
        )
    depth = max(layers) + 1
    notes: list[str] = []
    if "head.bias" not in out:  # trained without --use_fc_bias: a zero bias is the same function
        out["head.bias"] = torch.zeros(out["head.weight"].shape[0], dtype=out["head.weight"].dtype)
        notes.append("maskvit.fc_out had no bias (no --use_fc_bias): head.bias set to zeros")
    per_block = [f"norm_{s}.{p}" for s in ("t", "s", "mlp") for p in ("weight", "bias")]
    per_block += [f"attn_{s}.{p}.{q}" for s in ("t", "s") for p in ("qkv", "proj") for q in ("weight", "bias")]
    per_block += [f"mlp.fc{i}.{q}" for i in (1, 2) for q in ("weight", "bias")]
    absent = [f"blocks.{i}.{k}" for i in range(depth) for k in per_block if f"blocks.{i}.{k}" not in out]
    if absent:
        raise ValueError(f"DINO-Foresight checkpoint is missing block parameters (our names): {absent[:12]}")

    out["mask_token"] = out["mask_token"].reshape(-1)  # stored as [1, 1, 1, 1, width]
    width, in_channels = out["embed.weight"].shape
    hidden = out["blocks.0.mlp.fc1.weight"].shape[0]
    if width % 3 or width % heads:
        raise ValueError(f"hidden size {width} must be divisible by 3 and by heads={heads}; pass the heads used in training")
    for name in ("pos_time", "pos_row", "pos_col"):
        if out[name].ndim != 2 or out[name].shape[1] != width // 3:
            raise ValueError(f"{name} has shape {list(out[name].shape)}, expected [L, {width // 3}] (width {width} / 3)")
    if "pca_components" in pca and pca["pca_components"].shape[0] != in_channels:
        raise ValueError(
            f"pca_components has {pca['pca_components'].shape[0]} components but the embedding reads {in_channels}"
        )

    frames = out["pos_time"].shape[0]
    model = {
        "width": int(width),
        "heads": int(heads),
        "depth": int(depth),
        "mlp_ratio": hidden / width,
        "in_channels": int(in_channels),
        "grid_h": int(out["pos_row"].shape[0]),
        "grid_w": int(out["pos_col"].shape[0]),
        "context_frames": int(frames - 1),
    }
    info = {"model": model, "frames": int(frames), "pca": pca, "ignored": sorted(ignored), "notes": notes}
    return out, info
