"""A reduced `python cli.py reproduce`: one seed, two Stage 2 steps, two variants, a tiny synthetic set; then a
second call that must reuse every finished run and evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from configs.schema import load_config
from eval.reproduce import run_reproduce
from eval.variants import BASELINE, RE2PIX, curve_steps, variant_config

REDUCED = [
    "stage1.train.steps=2", "stage1.train.batch_size=2", "stage1.train.ckpt_every=2", "stage1.train.val_every=2",
    "stage2.train.batch_size=2", "stage2.train.val_batches=1",
    "heads.train.steps=2", "heads.train.batch_size=2", "heads.train.ckpt_every=2", "heads.train.val_every=2",
    "stage2.diffusion.steps=2", "cache.shard_size=2",
    "vfm_pretrain.steps=2", "vfm_pretrain.snippets=4", "vfm_pretrain.frames_per_snippet=2", "vfm_pretrain.batch_size=4",
    "vfm_pretrain.probe_snippets=4", "vfm_pretrain.probe_val_snippets=2", "vfm_pretrain.probe_steps=2", "stage2.nested_dropout_levels=[8, 64]",
]


def test_variant_configs_differ_only_where_the_paper_says():
    cfg = load_config("tiny")
    large = variant_config(cfg, "Baseline-Large", 5, 40)
    assert large.stage2.model.conditioning == "none" and large.stage2.model.depth > cfg.stage2.model.depth
    assert large.stage2.train.seed == 5 and large.seed == 5 and large.stage2.train.steps == 40
    assert large.stage2.train.ckpt_every == 10  # four points per curve (Figure 3)
    assert large.stage2.train.keep_every == 10  # and pruning keeps all four (keep_last alone dropped the first)
    assert curve_steps(200) == [50, 100, 150, 200] and curve_steps(2) == [1, 2] and curve_steps(10) == [2, 4, 6, 8, 10]
    repa = variant_config(cfg, "REPA", 0, 40)
    assert repa.stage2.alignment == "repa" and 1 <= repa.stage2.align_block <= repa.stage2.model.depth
    assert variant_config(cfg, "Re2Pix, predicted features only", 0, 40).stage2.mixed_supervision_prob == 1.0
    assert variant_config(cfg, RE2PIX, 0, 40).stage2.model == cfg.stage2.model


@pytest.mark.slow
def test_reduced_reproduce_writes_the_files_and_resumes(tmp_path):
    cfg = load_config("tiny", REDUCED)
    kw = dict(seeds=1, steps=2, variants=[RE2PIX, BASELINE], train_snippets=3, val_snippets=2, workers=1, eval_limit=2, jobs=2)
    first = run_reproduce(cfg, tmp_path, **kw)
    results = json.loads((tmp_path / "reproduce.json").read_text())
    assert set(results["claims"]) == {"table1", "components", "guidance", "convergence"}
    t1 = results["claims"]["table1"]
    assert {RE2PIX, BASELINE, "Copy last frame"} <= set(t1["rows"])
    assert t1["rows"][RE2PIX]["psnr"]["values"] and t1["rows"][RE2PIX]["fd_vfm"]["n"] == 1
    assert t1["holds"] is None and all(c["holds"] is None for c in t1["comparisons"])  # one seed: no verdict
    assert t1["correction"] == "holm" and t1["decisive_metrics"] and not {"psnr", "ssim"} & set(t1["decisive_metrics"])
    for c in t1["comparisons"]:  # paired on the evaluation's windows, with its interval and p-values
        assert c["paired"] is True and c["n_windows"] == 2 and c["n_seeds"] == 1 and c["p_holm"] is not None
    assert t1["rows"][RE2PIX]["fd_vfm_clip"]["n"] == 1
    assert results["claims"]["components"]["comparisons"][0]["test"] == "trend"
    assert (tmp_path / "evals" / "seed0" / "figure3" / "windows.npz").is_file()
    assert results["claims"]["convergence"]["steps"] == [1, 2]
    assert "Re2Pix, C = 8" in results["claims"]["components"]["rows"]
    assert results["estimate"]["total_seconds"] > 0 and results["estimate"]["stage2_seconds_per_step"][BASELINE] > 0
    assert results["params"][RE2PIX] > 0 and results["params"][BASELINE] > 0
    report = (tmp_path / "report.md").read_text()
    for text in ("The rule", "Holm", "min detectable", "NOT FID", "NOT FVD", "Table 1", "Figure 3", "Provenance", "## Time",
                 "Estimated time", "Only 2 val windows", "Protocol tags: `eval", "smallest effect detectable at 80 % power"):
        assert text in report, text
    assert (tmp_path / "plots" / "psnr_vs_step.png").is_file()
    assert (tmp_path / "qualitative" / "figure3.png").is_file()
    assert len(first.trained) == 2 and first.evaluated

    # resume: nothing is trained or evaluated again; the finished markers and checkpoints are untouched
    run = tmp_path / "runs" / "seed0" / "re2pix"
    marker, ckpts = (run / "finished.json").read_text(), sorted(p.name for p in (run / "checkpoints").iterdir())
    again = run_reproduce(cfg, tmp_path, **kw)
    assert again.trained == [] and again.evaluated == []
    assert (run / "finished.json").read_text() == marker
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ckpts
    assert json.loads((tmp_path / "reproduce.json").read_text())["rows"] == results["rows"]

    # a Figure 3 run missing a curve checkpoint (an older version pruned them) is moved aside, not deleted, and
    # trained again; only the evaluation that scores it runs again
    baseline = tmp_path / "runs" / "seed0" / "baseline"
    shutil.rmtree(baseline / "checkpoints" / "step_0000001")
    third = run_reproduce(cfg, tmp_path, **kw)
    assert third.trained == [str(baseline)] and (tmp_path / "runs" / "seed0" / "baseline.stale" / "finished.json").is_file()
    assert [Path(e).name for e in third.evaluated] == ["figure3"]
    assert (baseline / "checkpoints" / "step_0000001").is_dir()


def test_cli_reproduce_help_and_bad_variant(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["reproduce", "--help"]).output
    for option in ("--config", "--dataset", "--root", "--seeds", "--steps", "--out"):
        assert option in help_text
    bad = runner.invoke(app, ["reproduce", "--variant", "Nope", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "choose from" in bad.output
