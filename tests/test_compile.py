"""`train.compile`: torch.compile per transformer block. Identical blocks share one graph, names and state dicts do
not change, outputs and gradients equal eager (with and without activation checkpointing), and the loop turns it
on only where it can run."""

from __future__ import annotations

import shutil

import pytest
import torch

from configs.schema import DiTConfig, Stage1ModelConfig
from models.dit import VideoDiT
from models.foresight import FeatureForesight
from train.loop import compile_problem

# Measured on the CPU (inductor, float32, these sizes): outputs differ from eager by <= 9.6e-7, gradients by <= 6e-8.
ATOL = 1e-5


def _dit() -> tuple[torch.nn.Module, callable]:
    torch.manual_seed(0)
    cfg = DiTConfig(width=32, depth=3, heads=2, adaln_lora_dim=8, latent_channels=4, feature_channels=6)
    model = VideoDiT(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero AdaLN-LoRA W2 so every block's modulation matters
        for name, p in model.named_parameters():
            if "linear_2" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x, c = torch.randn(2, 4, 3, 8, 6, generator=g), torch.rand(2, 3, generator=g)
    mask, feats = (torch.arange(3) < 1).float().expand(2, 3), torch.randn(2, 6, 3, 4, 3, generator=g)
    return model, lambda m: m(x, c, mask, feats)


def _stage1() -> tuple[torch.nn.Module, callable]:
    torch.manual_seed(0)
    model = FeatureForesight(Stage1ModelConfig(width=24, heads=2, depth=3, dropout=0.0, context_frames=2,
                                               in_channels=5, grid_h=3, grid_w=4))
    torch.nn.init.normal_(model.head.weight, std=0.1)
    feats = torch.randn(2, 3, 5, 3, 4, generator=torch.Generator().manual_seed(1))
    return model, lambda m: m(feats)


def _eager_and_compiled(build, backend: str, checkpointing: bool):
    model, forward = build()
    keys = list(model.state_dict())
    results = []
    for compiled in (False, True):
        if compiled:
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            model.compile_blocks(backend=backend)
        model.activation_checkpointing = checkpointing  # Stage2/loop style switch (VideoDiT: attribute too)
        model.zero_grad()
        out = forward(model)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return results, graphs, keys == list(model.state_dict())


@pytest.mark.parametrize("build,checkpointing", [(_dit, False), (_dit, True), (_stage1, False)],
                         ids=["stage2-dit", "stage2-dit-checkpointed", "stage1"])
def test_blocks_share_one_graph_and_match_eager(build, checkpointing):
    """aot_eager: dynamo's capture and AOT autograd without inductor's C++ code generation (fast, no compiler)."""
    (eager, compiled), graphs, same_keys = _eager_and_compiled(build, "aot_eager", checkpointing)
    assert graphs == 1  # three blocks, one compiled graph
    assert same_keys  # checkpoints written by a compiled model load into an uncompiled one
    torch.testing.assert_close(compiled[0], eager[0], atol=ATOL, rtol=0)
    assert compiled[1].keys() == eager[1].keys()
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, atol=ATOL, rtol=0, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(compile_problem(torch.device("cpu")) is not None, reason="torch.compile on the CPU needs a C++ compiler")
def test_inductor_on_the_cpu_matches_eager():
    """The real backend (inductor, C++ kernels): minutes of compiling on 2 cores the first time, cached afterwards."""
    (eager, compiled), graphs, _ = _eager_and_compiled(_dit, "inductor", False)
    assert graphs == 1
    torch.testing.assert_close(compiled[0], eager[0], atol=ATOL, rtol=0)
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, atol=ATOL, rtol=0, msg=name)


def test_compile_problem_names_the_missing_compiler(monkeypatch):
    assert compile_problem(torch.device("cuda")) is None
    monkeypatch.setattr(shutil, "which", lambda name: None)
    problem = compile_problem(torch.device("cpu"))
    assert problem and "C++ compiler" in problem and "g++" in problem


def test_bench_dit_reports_compiled_against_eager(monkeypatch, capsys):
    from eval.bench.dit import OURS_COMPILED, run

    plain = VideoDiT.compile_blocks
    monkeypatch.setattr(VideoDiT, "compile_blocks", lambda self: plain(self, backend="aot_eager"))  # no C++ build
    torch._dynamo.reset()
    result = run(width=32, depth=2, heads=2, frames=2, height=2, width_tokens=3, latent_channels=4, feature_channels=6,
                 adaln_lora_dim=8, text_dim=16, steps=1, compile=True, compare_checkpointing=False)
    assert result["compile_speedup"] == pytest.approx(
        result["models"]["ours (VideoDiT)"]["step_s"] / result["models"][OURS_COMPILED]["step_s"])
    assert result["compile_s"] > 0
    assert "compiled" in capsys.readouterr().out
