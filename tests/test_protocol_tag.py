"""Protocol tags: built from the protocol as run, different whenever numbers would not be comparable, shown in
evaluate's report.md and reproduce's."""

from __future__ import annotations

import pytest

from eval.protocol_tag import protocol_tags, tags_line
from eval.report import render_report
from eval.reproduce import study_tags

PROTOCOL = {"windows": 64, "context_frames": 13, "predicted_frames": 12, "resolution": [64, 128], "samples": 1,
            "fvd": "one clip of 12 predicted frames per window ..."}


def test_tags_spell_out_the_protocol():
    tags = protocol_tags(PROTOCOL, {"fid_net": "file:0123456789abcdef", "fvd_net": "file:fedcba9876543210"})
    assert tags == {"eval": "eval64_13c12p_64x128_s1", "fid": "fid64_12f_64x128_tf299_w01234567",
                    "fvd": "fvd64_12f_64x128_squash224_wfedcba98"}


def test_reproduce_distribution_metric_is_tagged_fd_vfm_not_fid():
    tags = protocol_tags(PROTOCOL, {"fid_net": "vfm-pca:abcdef0123456789", "fvd_net": "not computed"}, fd_dim=64)
    assert tags == {"eval": "eval64_13c12p_64x128_s1", "fid": "fdvfm64_12f_64x128_pca64_vfmabcdef01"}
    seed_evals = {"figure3": {"protocol_tags": tags},
                  "fid_fvd": {"protocol_tags": {"eval": "x", "fid": "fid64_12f_64x128_tf299_random"}}}
    assert study_tags(seed_evals) == {"eval": "eval64_13c12p_64x128_s1", "fd_vfm": "fdvfm64_12f_64x128_pca64_vfmabcdef01",
                                      "fid": "fid64_12f_64x128_tf299_random"}


@pytest.mark.parametrize("change", [{"windows": 32}, {"predicted_frames": 10}, {"resolution": [432, 768]}])
def test_any_change_that_makes_numbers_incomparable_changes_the_tag(change):
    prov = {"fid_net": "random", "fvd_net": "random"}
    base, other = protocol_tags(PROTOCOL, prov), protocol_tags({**PROTOCOL, **change}, prov)
    assert base["fid"] != other["fid"] and base["fvd"] != other["fvd"] and base["eval"] != other["eval"]
    assert base["fid"].endswith("_random") and base["fvd"].endswith("_random")
    assert protocol_tags(PROTOCOL, {"fid_net": "file:aaaaaaaa00", "fvd_net": "random"})["fid"] != base["fid"]  # weights


def test_no_fid_fvd_when_not_computed_or_clips_too_short():
    assert set(protocol_tags(PROTOCOL, {"fid_net": "not computed", "fvd_net": "not computed"})) == {"eval"}
    short = protocol_tags({**PROTOCOL, "fvd": "n/a (clips too short)"}, {"fid_net": "random", "fvd_net": "random"})
    assert set(short) == {"eval", "fid"}


def test_evaluate_report_carries_the_tags():
    tags = protocol_tags(PROTOCOL, {"fid_net": "random", "fvd_net": "random"})
    text = render_report({"rows": {}, "protocol": PROTOCOL, "provenance": {}, "protocol_tags": tags})
    assert tags_line(tags) in text and "`fvd64_12f_64x128_squash224_random`" in text
