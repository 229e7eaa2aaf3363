"""VideoDiT: shapes, Predict2 facts (patch orders, AdaLN-LoRA init, per-frame modulation), early fusion,
agreement with diffusers' CosmosTransformer3DModel, paper-size parameter count, checkpointing, and a tiny overfit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from configs.schema import DiTConfig, load_config
from models.dit import (
    VideoDiT,
    noise_sinusoid,
    patchify,
    state_dict_from_diffusers_cosmos,
    unpatchify,
)


def small_cfg(**overrides) -> DiTConfig:
    base = dict(width=48, depth=2, heads=2, adaln_lora_dim=8, latent_channels=4, feature_channels=6)
    base.update(overrides)
    return DiTConfig(**base)


def inputs(cfg: DiTConfig, b=2, t=3, h=8, w=6, feature_hw=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.latent_channels, t, h, w, generator=g)
    c_noise = torch.rand(b, t, generator=g)
    cond_mask = (torch.arange(t) < 1).float().expand(b, t)
    fh, fw = feature_hw or (h // cfg.patch_size, w // cfg.patch_size)
    features = torch.randn(b, max(cfg.feature_channels, 1), t, fh, fw, generator=g)
    return x, c_noise, cond_mask, features


def randomise(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Give the zero-initialised AdaLN-LoRA W2 weights non-zero values so per-layer terms matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "linear_2" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_shapes_at_tiny_size():
    cfg = load_config("tiny")
    model_cfg = dataclasses.replace(cfg.stage2.model, latent_channels=cfg.codec.channels,
                                    feature_channels=cfg.pca.components)
    torch.manual_seed(0)
    model = VideoDiT(model_cfg)
    h, w = cfg.latent_hw
    gh, gw = cfg.token_grid
    t = cfg.latent_frames
    x = torch.randn(1, cfg.codec.channels, t, h, w)
    feats = torch.randn(1, cfg.pca.components, t, gh, gw)
    mask = (torch.arange(t) < cfg.context_latent_frames).float()[None]
    out, hidden = model(x, torch.rand(1, t), mask, feats, return_block=model_cfg.depth)
    assert out.shape == x.shape
    assert hidden.shape == (1, t, gh, gw, model_cfg.width)
    assert torch.isfinite(out).all()


def test_patchify_order_is_channel_outermost_and_unpatchify_has_the_cosmos_quirk():
    b, c, t, h, w, p = 1, 3, 2, 4, 6, 2
    x = torch.arange(b * c * t * h * w, dtype=torch.float32).view(b, c, t, h, w)
    tokens = patchify(x, p)
    assert tokens.shape == (b, t, h // p, w // p, c * p * p)
    # feature index (ch, m, n) -> ch*p*p + m*p + n, pixel (row*p + m, col*p + n)
    for ch, m, n in [(0, 0, 1), (2, 1, 0), (1, 1, 1)]:
        assert tokens[0, 1, 1, 2, ch * p * p + m * p + n] == x[0, ch, 1, 1 * p + m, 2 * p + n]
    # Output order (p1 p2 C): feature index m*p*C + n*C + ch.
    out_tokens = torch.randn(b, t, h // p, w // p, p * p * c)
    y = unpatchify(out_tokens, p, c)
    for ch, m, n in [(0, 0, 1), (2, 1, 0), (1, 1, 1)]:
        assert y[0, ch, 1, 1 * p + m, 2 * p + n] == out_tokens[0, 1, 1, 2, m * p * c + n * c + ch]
    assert not torch.equal(unpatchify(patchify(x, p), p, c), x)


def test_noise_sinusoid_is_cos_first_without_shift():
    emb = noise_sinusoid(torch.tensor([[0.0, 0.5]]), 8)
    assert emb.shape == (1, 2, 8)
    torch.testing.assert_close(emb[0, 0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(1e4)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[0, 1], torch.cat([(0.5 * freqs).cos(), (0.5 * freqs).sin()]))


def test_zero_initialised_lora_leaves_the_shared_modulation():
    torch.manual_seed(0)
    model = VideoDiT(small_cfg())
    d = model.cfg.width
    emb, adaln_lora = model.noise_embedding(torch.rand(2, 3), torch.float32)
    assert adaln_lora.abs().sum() > 0
    for block in model.blocks:
        for layer in (block.adaln_attn, block.adaln_mlp):
            shift, scale, gate = layer(emb, adaln_lora)
            torch.testing.assert_close(shift, adaln_lora[..., :d])
            torch.testing.assert_close(scale, adaln_lora[..., d:2 * d])
            torch.testing.assert_close(gate, adaln_lora[..., 2 * d:])
    shift, scale = model.final_layer.adaln(emb, adaln_lora)
    torch.testing.assert_close(torch.cat([shift, scale], -1), adaln_lora[..., :2 * d])


def test_modulation_of_frame_j_depends_only_on_c_noise_of_frame_j():
    torch.manual_seed(0)
    model = VideoDiT(small_cfg())
    randomise(model)
    c = torch.rand(2, 4)
    c2 = c.clone()
    c2[:, 2] = 0.9
    mods = []
    for cn in (c, c2):
        emb, lora = model.noise_embedding(cn, torch.float32)
        mods.append(torch.cat(model.blocks[0].adaln_attn(emb, lora) + model.final_layer.adaln(emb, lora), -1))
    changed = (mods[0] - mods[1]).abs().amax(dim=(0, 2))
    assert changed[2] > 1e-3
    assert torch.all(changed[[0, 1, 3]] == 0)


def test_output_depends_on_every_input():
    torch.manual_seed(0)
    cfg = small_cfg()
    model = VideoDiT(cfg)
    randomise(model)
    x, c, mask, feats = inputs(cfg)
    base = model(x, c, mask, feats)
    c2 = c.clone()
    c2[:, 1] += 0.3
    assert not torch.allclose(model(x, c2, mask, feats), base)
    assert not torch.allclose(model(x, c, torch.ones_like(mask), feats), base)
    assert not torch.allclose(model(x, c, mask, feats * 2), base)
    # Frames are processed jointly: changing one latent frame changes the others' outputs through attention.
    x2 = x.clone()
    x2[:, :, 0] += 1
    assert not torch.allclose(model(x2, c, mask, feats)[:, :, 2], base[:, :, 2])


def test_early_fusion_keeps_token_count_and_resizes_feature_grids():
    torch.manual_seed(0)
    cfg = small_cfg()
    fused = VideoDiT(cfg)
    x, c, mask, feats = inputs(cfg)
    _, hidden = fused(x, c, mask, feats, return_block=1)
    plain = VideoDiT(dataclasses.replace(cfg, conditioning="none"))
    _, hidden_plain = plain(x, c, mask, None, return_block=1)
    assert hidden.shape == hidden_plain.shape == (2, 3, 4, 3, cfg.width)
    # Feature embedding is a bias-free sum: all-zero features add exactly nothing.
    assert fused.feature_embed.bias is None
    tokens_zero = fused.embed_features(torch.zeros_like(feats), 3, (4, 3))
    assert torch.all(tokens_zero == 0)
    # A coarser grid is bilinearly resized to the token grid before embedding.
    small = torch.randn(2, cfg.feature_channels, 3, 2, 2)
    manual = F.interpolate(small.permute(0, 2, 1, 3, 4).flatten(0, 1), size=(4, 3), mode="bilinear",
                           align_corners=False).view(2, 3, cfg.feature_channels, 4, 3).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(fused.embed_features(small, 3, (4, 3)), fused.embed_features(manual, 3, (4, 3)))
    torch.testing.assert_close(fused(x, c, mask, small), fused(x, c, mask, manual))


def test_unconditioned_model_ignores_features_and_conditioned_model_requires_them():
    torch.manual_seed(0)
    cfg = small_cfg(conditioning="none")
    model = VideoDiT(cfg)
    assert model.feature_embed is None
    x, c, mask, feats = inputs(cfg)
    torch.testing.assert_close(model(x, c, mask, None), model(x, c, mask, feats))
    fused = VideoDiT(small_cfg())
    with pytest.raises(ValueError, match="pass `features`"):
        fused(x, c, mask)
    with pytest.raises(ValueError, match="features must be"):
        fused(x, c, mask, feats[:, :3])
    assert VideoDiT(small_cfg(feature_channels=0)).feature_embed is None


def test_bad_inputs_and_configs_raise_clear_errors():
    cfg = small_cfg()
    model = VideoDiT(cfg)
    x, c, mask, feats = inputs(cfg)
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :3], c, mask, feats)
    with pytest.raises(ValueError, match="must both be"):
        model(x, c[:, :2], mask, feats)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(x[..., :5], c, mask, feats)
    with pytest.raises(ValueError, match="return_block"):
        model(x, c, mask, feats, return_block=3)
    with pytest.raises(ValueError, match="latent_channels"):
        VideoDiT(small_cfg(latent_channels=0))
    with pytest.raises(ValueError, match="conditioning"):
        VideoDiT(small_cfg(conditioning="text"))
    with pytest.raises(ValueError, match="divisible by heads"):
        VideoDiT(small_cfg(heads=5))
    # A per-sample c_noise is broadcast over frames.
    torch.testing.assert_close(model(x, c[:, 0], mask, feats), model(x, c[:, :1].expand_as(c), mask, feats))


def test_matches_diffusers_cosmos_with_empty_text_context():
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    cfg = small_cfg(conditioning="none", feature_channels=0, rope_ntk_t=1.0, rope_ntk_h=3.0, rope_ntk_w=3.0)
    c, t, h, w = cfg.latent_channels, 3, 8, 6
    ref = CosmosTransformer3DModel(
        in_channels=c + 1, out_channels=c, num_attention_heads=cfg.heads, attention_head_dim=cfg.width // cfg.heads,
        num_layers=cfg.depth, text_embed_dim=8, adaln_lora_dim=cfg.adaln_lora_dim, max_size=(16, 32, 32),
        patch_size=(1, 2, 2), rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True, extra_pos_embed_type=None,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    for module in ref.modules():  # diffusers' QK-norm eps defaults to 1e-5; Predict2 uses 1e-6 (reference §5b)
        if type(module).__name__ == "RMSNorm":
            module.eps = 1e-6
    model = VideoDiT(cfg).eval()
    model.load_state_dict(state_dict_from_diffusers_cosmos(ref.state_dict()), strict=True)

    x, c_noise, mask, _ = inputs(cfg, t=t, h=h, w=w)
    with torch.no_grad():
        ours = model(x, c_noise, mask)
        theirs = ref(
            x, c_noise[:, None, :, None, None], torch.zeros(2, 1, 8),
            condition_mask=mask[:, None, :, None, None].expand(2, 1, t, h, w),
            padding_mask=torch.zeros(1, 1, h, w), return_dict=False,
        )[0]
    assert theirs.abs().max() > 1
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def expected_parameter_count(cfg: DiTConfig) -> int:
    d, r, p, c = cfg.width, cfg.adaln_lora_dim, cfg.patch_size, cfg.latent_channels
    hidden = int(d * cfg.mlp_ratio)
    lora = lambda chunks: d * r + r * chunks * d  # noqa: E731
    block = 4 * d * d + 2 * d * hidden + 2 * lora(3) + 2 * (d // cfg.heads)
    features = cfg.feature_channels * d if cfg.conditioning == "features" else 0
    return ((c + 1) * p * p * d + features + 4 * d * d + d + cfg.depth * block + lora(2) + d * p * p * c)


def test_paper_size_parameter_count_on_meta_device():
    counts = {}
    for conditioning in ("none", "features"):
        cfg = DiTConfig(latent_channels=16, feature_channels=1152, conditioning=conditioning)
        with torch.device("meta"):
            model = VideoDiT(cfg)
        counts[conditioning] = sum(p.numel() for p in model.parameters())
        assert counts[conditioning] == expected_parameter_count(cfg)
    # Paper Table 1: Baseline 782M. The fused model adds one Linear(1152 -> 2048).
    assert counts["none"] == 781_989_376
    assert counts["features"] - counts["none"] == 1152 * 2048


def test_activation_checkpointing_gives_identical_outputs_and_gradients():
    torch.manual_seed(0)
    cfg = small_cfg()
    model = VideoDiT(cfg)
    randomise(model)
    x, c, mask, feats = inputs(cfg)
    results = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_activation_checkpointing(enabled)
        out, hidden = model(x, c, mask, feats, return_block=1)
        (out.square().mean() + hidden.mean()).backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_training_loss_gradients_are_equal_with_and_without_checkpointing_and_it_saves_less():
    """The whole Stage 2 training loss (denoiser + DiT), switched the way the loop switches it (the module's
    `activation_checkpointing` attribute): float32 gradients equal within 1e-6, and the bytes saved for backward
    (block inputs kept for the recomputation included) drop, so the switch is not a no-op."""
    from configs.schema import DiffusionConfig
    from eval.bench.dit import saved_activation_bytes
    from models.stage2 import TRAINING_DIFFUSION_FIELDS, Stage2Model, Stage2ModelSpec

    torch.manual_seed(0)
    cfg = small_cfg(depth=3)
    diffusion = {k: getattr(DiffusionConfig(), k) for k in TRAINING_DIFFUSION_FIELDS}
    model = Stage2Model(Stage2ModelSpec(dit=cfg, diffusion=diffusion))
    randomise(model)
    x, _, mask, feats = inputs(cfg)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    grads, saved = [], []
    for enabled in (False, True):
        model.zero_grad()
        model.activation_checkpointing = enabled
        kept = list(model.net.blocks) if enabled else ()
        with saved_activation_bytes(params, kept) as count:
            loss, _ = model(x, mask, feats, generator=torch.Generator().manual_seed(3))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        saved.append(count[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=0, msg=name)
    block_input = x.shape[0] * x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2) * cfg.width * 4  # [B, T, S, D] fp32
    assert cfg.depth * block_input <= saved[1] < saved[0] / 2


def test_bench_dit_reports_the_checkpointing_ratio_and_cost(capsys):
    from eval.bench.dit import run

    result = run(width=32, depth=2, heads=2, frames=2, height=2, width_tokens=3, latent_channels=4,
                 feature_channels=6, adaln_lora_dim=8, text_dim=16, steps=1)
    on, off = result["models"]["ours + activation checkpointing"], result["models"]["ours (VideoDiT)"]
    assert result["checkpointing_saved_ratio"] == pytest.approx(on["saved_mib"] / off["saved_mib"])
    assert 0 < result["checkpointing_saved_ratio"] < 1 and result["checkpointing_time_ratio"] > 0
    # Under checkpointing what stays is at least every block's [B, T, S, D] input (float32).
    assert on["saved_mib"] * 2**20 >= 2 * result["tokens"] * 32 * 4
    assert "activation checkpointing keeps" in capsys.readouterr().out


def test_bf16_model_accepts_fp32_inputs():
    torch.manual_seed(0)
    cfg = small_cfg()
    model = VideoDiT(cfg).to(torch.bfloat16)
    x, c, mask, feats = inputs(cfg)
    out = model(x, c, mask, feats)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    cos, _ = model.rope(3, 4, 3)
    assert cos.dtype == torch.float32  # RoPE tables stay float32 in a bf16 model


def test_tiny_dit_overfits_a_fixed_regression():
    torch.manual_seed(0)
    cfg = small_cfg(width=32, heads=2, depth=2)
    model = VideoDiT(cfg)
    x, c, mask, feats = inputs(cfg, b=2, t=2, h=4, w=4, seed=1)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = F.mse_loss(model(x, c, mask, feats), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10


def test_bench_dit_runs_and_reports_both_networks(capsys):
    from eval.bench.dit import run

    result = run(width=32, depth=1, heads=2, frames=2, height=2, width_tokens=3, latent_channels=4,
                 feature_channels=6, adaln_lora_dim=8, text_dim=16, steps=1)
    assert result["tokens"] == 2 * 2 * 3
    assert {"ours (VideoDiT)", "diffusers Cosmos"} <= set(result["models"])
    for figures in result["models"].values():
        assert figures["step_s"] > 0 and figures["tokens_per_s"] > 0 and figures["saved_mib"] > 0
    assert "bench dit:" in capsys.readouterr().out


def test_a_token_wider_than_the_model_warns_naming_both_numbers():
    import warnings

    from configs.schema import DiTConfig
    from models.dit import VideoDiT

    with pytest.warns(UserWarning, match=r"768 numbers \(192 latent channels x 2x2 patch\).*width is 96"):
        VideoDiT(DiTConfig(width=96, depth=1, heads=4, adaln_lora_dim=8, latent_channels=192))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VideoDiT(DiTConfig(width=96, depth=1, heads=4, adaln_lora_dim=8, latent_channels=16))
