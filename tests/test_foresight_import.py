"""DINO-Foresight checkpoint import: every key mapped or ignored on purpose, identical outputs after conversion.

Two independent checks: (1) a reverse mapping written here turns a random model of ours into the Lightning layout and
back; (2) a small re-statement of DINO-Foresight's module tree (PreNorm / nn.MultiheadAttention / FeedForward,
following the reference spec) produces a state dict in the Lightning layout, and our converted model must compute the
same prediction as that reference forward.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from einops import rearrange
from torch import nn

from configs.schema import Stage1ModelConfig
from models.foresight import FeatureForesight
from models.foresight_import import convert_dino_foresight_state_dict
from train.stage1_init import load_dino_foresight_checkpoint

CFG = Stage1ModelConfig(width=24, heads=4, depth=2, mlp_ratio=2.0, dropout=0.0, context_frames=3,
                        in_channels=6, grid_h=3, grid_w=5)


def randomised(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def to_lightning_layout(ours: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Reverse of the conversion, written independently: our names -> Dino_f Lightning names."""
    sd = {
        "embed.weight": ours["embed.weight"],
        "embed.bias": ours["embed.bias"],
        "replace_vector": ours["mask_token"].reshape(1, 1, 1, 1, -1),
        "maskvit.pos_embd.emb.d_0": ours["pos_time"],
        "maskvit.pos_embd.emb.d_1": ours["pos_row"],
        "maskvit.pos_embd.emb.d_2": ours["pos_col"],
        "maskvit.fc_out.weight": ours["head.weight"],
        "maskvit.fc_out.bias": ours["head.bias"],
    }
    for i in range(depth):
        src = f"maskvit.transformer.layers.{i}"
        for sub, kind in (("0", "t"), ("1", "s")):
            sd[f"{src}.{sub}.norm.weight"] = ours[f"blocks.{i}.norm_{kind}.weight"]
            sd[f"{src}.{sub}.norm.bias"] = ours[f"blocks.{i}.norm_{kind}.bias"]
            sd[f"{src}.{sub}.fn.mha.in_proj_weight"] = ours[f"blocks.{i}.attn_{kind}.qkv.weight"]
            sd[f"{src}.{sub}.fn.mha.in_proj_bias"] = ours[f"blocks.{i}.attn_{kind}.qkv.bias"]
            sd[f"{src}.{sub}.fn.mha.out_proj.weight"] = ours[f"blocks.{i}.attn_{kind}.proj.weight"]
            sd[f"{src}.{sub}.fn.mha.out_proj.bias"] = ours[f"blocks.{i}.attn_{kind}.proj.bias"]
        sd[f"{src}.2.norm.weight"] = ours[f"blocks.{i}.norm_mlp.weight"]
        sd[f"{src}.2.norm.bias"] = ours[f"blocks.{i}.norm_mlp.bias"]
        for j, fc in (("0", "fc1"), ("3", "fc2")):
            sd[f"{src}.2.fn.net.{j}.weight"] = ours[f"blocks.{i}.mlp.{fc}.weight"]
            sd[f"{src}.2.fn.net.{j}.bias"] = ours[f"blocks.{i}.mlp.{fc}.bias"]
    return sd


def extras(components: int = CFG.in_channels, dims: int = 12) -> dict[str, torch.Tensor]:
    """What else a Dino_f checkpoint holds: PCA buffers and the frozen backbone."""
    g = torch.Generator().manual_seed(7)
    return {
        "pca_mean": torch.randn(dims, generator=g),
        "pca_components": torch.randn(components, dims, generator=g),
        "mean": torch.randn(dims, generator=g),
        "std": torch.rand(dims, generator=g) + 0.5,
        "dino_v2.cls_token": torch.zeros(1, 1, 8),
        "dino_v2.blocks.0.attn.qkv.weight": torch.zeros(24, 8),
    }


# --------------------------------------------------------------- DINO-Foresight's module tree, re-stated


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class MHA(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True, bias=True)

    def forward(self, x):
        return self.mha(x, x, x)[0]  # need_weights=True as in DINO-Foresight: the non-fused path


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class PosEmbed(nn.Module):
    def __init__(self, shape: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        self.emb = nn.ParameterDict({f"d_{i}": nn.Parameter(torch.zeros(n, dim // 3)) for i, n in enumerate(shape)})

    def forward(self, x):  # x [B, T, h, w, D]; broadcast each table along the other axes, concat on channels
        t, h, w = x.shape[1:4]
        e0 = self.emb["d_0"].view(1, t, 1, 1, -1).expand(1, t, h, w, -1)
        e1 = self.emb["d_1"].view(1, 1, h, 1, -1).expand(1, t, h, w, -1)
        e2 = self.emb["d_2"].view(1, 1, 1, w, -1).expand(1, t, h, w, -1)
        return x + torch.cat([e0, e1, e2], dim=-1)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, MHA(dim, heads)), PreNorm(dim, MHA(dim, heads)),
                           PreNorm(dim, FeedForward(dim, hidden))])
            for _ in range(depth)
        )

    def forward(self, x, b, t, h, w):  # x [B, (t h w), D]
        for temporal, spatial, ff in self.layers:
            x = rearrange(x, "b (t h w) c -> (b h w) t c", t=t, h=h, w=w)
            x = x + temporal(x)
            x = rearrange(x, "(b h w) t c -> (b t) (h w) c", b=b, h=h, w=w)
            x = x + spatial(x)
            x = rearrange(x, "(b t) (h w) c -> b (t h w) c", b=b, t=t, h=h)
            x = x + ff(x)
        return x


class MaskViT(nn.Module):
    def __init__(self, cfg: Stage1ModelConfig) -> None:
        super().__init__()
        d = cfg.width
        self.pos_embd = PosEmbed((cfg.context_frames + 1, cfg.grid_h, cfg.grid_w), d)
        self.transformer = Transformer(d, cfg.depth, cfg.heads, int(cfg.mlp_ratio * d))
        self.fc_out = nn.Linear(d, cfg.in_channels)


class DinoF(nn.Module):
    """The `simple_replace` Dino_f forward: embed all, mask token at the last frame, positions, blocks, fc_out."""

    def __init__(self, cfg: Stage1ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(cfg.in_channels, cfg.width)
        self.replace_vector = nn.Parameter(torch.zeros(1, 1, 1, 1, cfg.width))
        self.maskvit = MaskViT(cfg)

    def forward(self, x):  # x [B, T, h, w, C] -> prediction of every slot [B, T, h, w, C]
        b, t, h, w, _ = x.shape
        mask = torch.zeros(b, t, h, w, 1, dtype=torch.bool)
        mask[:, -1] = True
        tokens = torch.where(mask, self.replace_vector.expand(b, t, h, w, -1), self.embed(x))
        tokens = rearrange(self.maskvit.pos_embd(tokens), "b t h w c -> b (t h w) c")
        out = self.maskvit.fc_out(self.maskvit.transformer(tokens, b, t, h, w))
        return rearrange(out, "b (t h w) c -> b t h w c", t=t, h=h)


# ------------------------------------------------------------------------------------------- tests


def feats(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, CFG.context_frames + 1, CFG.in_channels, CFG.grid_h, CFG.grid_w, generator=g)


def test_round_trip_maps_every_key_and_keeps_outputs():
    source = randomised(FeatureForesight(CFG), seed=1)
    lightning = to_lightning_layout(source.state_dict(), CFG.depth)
    assert len(lightning) == len(source.state_dict())
    converted, info = convert_dino_foresight_state_dict({**lightning, **extras()}, heads=CFG.heads)

    model = FeatureForesight(Stage1ModelConfig(**{**vars(CFG), **info["model"]})).eval()
    model.load_state_dict(converted, strict=True)
    x = feats()
    assert torch.equal(model(x), source(x))
    assert info["model"] == {"width": 24, "heads": 4, "depth": 2, "mlp_ratio": 2.0, "in_channels": 6,
                             "grid_h": 3, "grid_w": 5, "context_frames": 3}
    assert info["frames"] == CFG.context_frames + 1
    assert sorted(info["pca"]) == ["mean", "pca_components", "pca_mean", "std"]
    assert torch.equal(info["pca"]["std"], extras()["std"])
    assert info["ignored"] == ["dino_v2.blocks.0.attn.qkv.weight", "dino_v2.cls_token"]


def test_matches_dino_foresight_reference_forward():
    torch.manual_seed(0)
    reference = randomised(DinoF(CFG), seed=2)
    checkpoint = {f"state_dict.{k}": v for k, v in reference.state_dict().items()}  # prefixed layout is accepted
    converted, info = convert_dino_foresight_state_dict({**checkpoint, **extras()}, heads=CFG.heads)
    ours = FeatureForesight(Stage1ModelConfig(**{**vars(CFG), **info["model"]})).eval()
    ours.load_state_dict(converted, strict=True)

    x = feats(seed=4)
    with torch.no_grad():
        expected = reference(rearrange(x, "b t c h w -> b t h w c"))[:, -1]
        got = ours(x)
        assert torch.allclose(got, rearrange(expected, "b h w c -> b c h w"), atol=1e-5)
        ours.use_fused_attention(False)
        assert torch.allclose(ours(x), rearrange(expected, "b h w c -> b c h w"), atol=1e-5)


def test_missing_fc_out_bias_becomes_zeros():
    source = randomised(FeatureForesight(CFG), seed=3)
    with torch.no_grad():
        source.head.bias.zero_()
    lightning = to_lightning_layout(source.state_dict(), CFG.depth)
    del lightning["maskvit.fc_out.bias"]
    converted, info = convert_dino_foresight_state_dict(lightning, heads=CFG.heads)
    assert torch.equal(converted["head.bias"], torch.zeros(CFG.in_channels))
    assert info["notes"] and info["pca"] == {}


def test_unknown_missing_and_unsupported_keys_raise():
    lightning = to_lightning_layout(randomised(FeatureForesight(CFG), seed=1).state_dict(), CFG.depth)
    with pytest.raises(ValueError, match="maskvit.something_new"):
        convert_dino_foresight_state_dict({**lightning, "maskvit.something_new": torch.zeros(1)})
    with pytest.raises(ValueError, match="fn.mha.in_proj_typo"):
        convert_dino_foresight_state_dict({**lightning, "maskvit.transformer.layers.0.0.fn.mha.in_proj_typo": torch.zeros(1)})
    partial = {k: v for k, v in lightning.items() if k != "maskvit.transformer.layers.1.2.fn.net.3.weight"}
    with pytest.raises(ValueError, match="blocks.1.mlp.fc2.weight"):
        convert_dino_foresight_state_dict(partial, heads=CFG.heads)
    no_embed = {k: v for k, v in lightning.items() if k != "embed.weight"}
    with pytest.raises(ValueError, match="embed.weight"):
        convert_dino_foresight_state_dict(no_embed, heads=CFG.heads)
    with pytest.raises(ValueError, match="half_half"):
        convert_dino_foresight_state_dict({**lightning, "mask_vector": torch.zeros(1, 1, 1, 1, 12)})
    with pytest.raises(ValueError, match="use_first_last"):
        convert_dino_foresight_state_dict({**lightning, "maskvit.first_layer.0.weight": torch.zeros(24)})
    with pytest.raises(ValueError, match="heads=5"):
        convert_dino_foresight_state_dict(lightning, heads=5)
    bad_pca = {**lightning, "pca_components": torch.zeros(CFG.in_channels + 1, 12)}
    with pytest.raises(ValueError, match="components"):
        convert_dino_foresight_state_dict(bad_pca, heads=CFG.heads)


class NotAllowlisted:
    """Any Python object the safe loader does not know."""

    def __init__(self) -> None:
        self.value = 3


def test_load_lightning_checkpoint_file(tmp_path):
    source = randomised(FeatureForesight(CFG), seed=5)
    lightning = {**to_lightning_layout(source.state_dict(), CFG.depth), **extras()}
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": lightning,
        "hyper_parameters": {"args": argparse.Namespace(hidden_dim=24, heads=4, layers=2)},
    }
    path = tmp_path / "dinof.ckpt"
    torch.save(checkpoint, path)
    converted, info = load_dino_foresight_checkpoint(path, heads=CFG.heads)
    assert info["source"] == str(path) and info["model"]["depth"] == CFG.depth
    model = FeatureForesight(Stage1ModelConfig(**{**vars(CFG), **info["model"]})).eval()
    model.load_state_dict(converted, strict=True)
    assert torch.equal(model(feats()), source(feats()))

    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({**checkpoint, "callbacks": {"x": NotAllowlisted()}}, unsafe)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_dino_foresight_checkpoint(unsafe, heads=CFG.heads)
    converted_unsafe, _ = load_dino_foresight_checkpoint(unsafe, heads=CFG.heads, allow_pickle=True)
    assert converted_unsafe.keys() == converted.keys()

    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_dino_foresight_checkpoint(tmp_path / "missing.ckpt")
