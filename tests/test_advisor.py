"""The advisor: the paper's findings as a rule (findings.py), and measuring a dataset to apply it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.fid_fixtures import counted, write_tiny_vit
from vpt_jax.analysis import advisor, findings
from vpt_jax.analysis.fid import distance
from vpt_jax.analysis.fid.extractors import vit_extractor
from vpt_jax.analysis.fid.statistics import FeatureStatistics
from vpt_jax.analysis.fid.table import DatasetDistance, write_distances_csv
from vpt_jax.data import parse_dataset_list
from vpt_jax.errors import UserError

N = 24


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return write_tiny_vit(tmp_path_factory.mktemp("vit") / "vit_tiny.npz")


@pytest.fixture(scope="module")
def extractor(checkpoint):
    return vit_extractor(checkpoint)


@pytest.fixture(scope="module")
def reference(extractor):
    return distance.reference_statistics("procedural:pretrain", extractor, num_images=N)


@pytest.mark.parametrize(
    "fid, disparity, method, finding, quadrant",
    [
        (5.0, "low", "VPT", "similar", "low disparity, similar distributions"),
        (10.0, "low", "VPT", "similar", "low disparity, similar distributions"),  # at threshold
        (50.0, "low", "FT", "dissimilar", "low disparity, dissimilar distributions"),
        (5.0, "high", "VPT", "disparity", "high disparity, similar distributions"),
        (50.0, "high", "VPT", "disparity", "high disparity, dissimilar distributions"),
    ],
)
def test_each_quadrant_with_limited_data(fid, disparity, method, finding, quadrant):
    r = findings.recommend(fid=fid, fid_threshold=10.0, disparity=disparity, train_size=800)
    assert (r.method, r.finding, r.quadrant) == (method, finding, quadrant)
    assert "limited data" in r.caveat  # the quadrant findings are VTAB-1k-sized


def test_more_data_moves_low_disparity_similar_tasks_to_ft():
    rule = lambda size, **kw: findings.recommend(
        fid=5.0, fid_threshold=10.0, disparity="low", train_size=size, **kw
    )
    assert rule(9_999).method == "VPT"
    large = rule(findings.LARGE_DATA)
    assert (large.method, large.finding) == ("FT", "scaling")
    assert "10000 training images >= 10000" in large.reason
    assert (rule(3_000, large_data=2_000).method, rule(1_000, large_data=2_000).method) == (
        "FT",
        "VPT",
    )


def test_more_data_keeps_the_other_quadrants_but_changes_the_caveat():
    for disparity, fid, method in [
        ("high", 5.0, "VPT"),
        ("high", 50.0, "VPT"),
        ("low", 50.0, "FT"),
    ]:
        small, large = (
            findings.recommend(fid=fid, fid_threshold=10.0, disparity=disparity, train_size=n)
            for n in (800, 100_000)
        )
        assert small.method == large.method == method
        assert "limited data" in small.caveat and "limited data" not in large.caveat
    high = findings.recommend(fid=5.0, fid_threshold=10.0, disparity="high", train_size=100_000)
    assert "FT may catch up" in high.caveat


def test_near_threshold_is_flagged_where_it_matters():
    near = findings.recommend(fid=10.5, fid_threshold=10.0, disparity="low", train_size=800)
    assert near.method == "FT" and "uncertain" in near.caveat
    far = findings.recommend(fid=12.0, fid_threshold=10.0, disparity="low", train_size=800)
    assert "uncertain" not in far.caveat
    high = findings.recommend(fid=10.5, fid_threshold=10.0, disparity="high", train_size=800)
    assert "uncertain" not in high.caveat  # high disparity does not depend on the FID


def test_rule_refuses_bad_inputs():
    with pytest.raises(UserError, match="low or high"):
        findings.recommend(fid=1.0, fid_threshold=2.0, disparity="medium", train_size=800)
    with pytest.raises(UserError, match="positive"):
        findings.recommend(fid=1.0, fid_threshold=2.0, disparity="low", train_size=0)


def test_advise_on_procedural_data(extractor, reference, tmp_path):
    anchors = distance.dataset_distances(
        parse_dataset_list("procedural"), reference, extractor, num_images=N
    )
    fids = {r.dataset: r.fid for r in anchors}
    median = float(np.median(list(fids.values())))

    advice = advisor.advise(
        "procedural:location", 800, extractor, reference, num_images=N, cache_dir=tmp_path
    )
    assert advice.fid == pytest.approx(fids["procedural:location"], rel=1e-9)
    assert advice.fid_threshold == pytest.approx(median, rel=1e-9)
    assert (
        f"median FID of the {len(parse_dataset_list('procedural'))} procedural tasks"
        in advice.threshold_source
    )
    assert (advice.disparity, advice.disparity_source) == ("high", "structured task")
    assert advice.recommendation.method == "VPT"

    kw = dict(num_images=N, cache_dir=tmp_path)
    similar = advisor.advise("procedural:objects", 800, extractor, reference, **kw)
    assert similar.recommendation.quadrant == "low disparity, similar distributions"
    assert similar.recommendation.method == "VPT"
    forced = advisor.advise(
        "procedural:objects", 800, extractor, reference, fid_threshold=advice.fid / 1e6, **kw
    )
    assert forced.recommendation.method == "FT" and forced.threshold_source == "given"
    grown = advisor.advise("procedural:objects", 50_000, extractor, reference, **kw)
    assert grown.recommendation.method == "FT" and grown.recommendation.finding == "scaling"


def test_advise_on_an_image_folder_needs_the_disparity(extractor, reference, tmp_path):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "birds" / label).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "birds" / label / f"{i}.png")
    fn, counter = counted(extractor)
    with pytest.raises(UserError, match="pass --disparity high"):
        advisor.advise(f"folder:{tmp_path}/birds", 800, fn, reference, fid_threshold=1.0)
    advice = advisor.advise(
        f"folder:{tmp_path}/birds", 800, fn, reference, disparity="high", fid_threshold=1.0
    )
    assert advice.dataset == f"folder:{tmp_path}/birds" and advice.split == "train"
    assert advice.num_images == 8  # 80% of each class: the train split of a folder without val/
    assert advice.recommendation.method == "VPT" and advice.disparity_source == "given"


def test_threshold_from_an_fid_table(extractor, reference, tmp_path):
    rows = [
        DatasetDistance(f"vtab/{t}", "train800val200", "", "", fid, 1000, extractor.name, "r")
        for t, fid in (("dtd", 1.0), ("eurosat", 2.0), ("dmlab", 1e6))
    ]
    write_distances_csv(tmp_path / "fid.csv", rows)
    kw = dict(num_images=N, fid_table=str(tmp_path / "fid.csv"))
    advice = advisor.advise("procedural:textures", 800, extractor, reference, **kw)
    assert advice.fid_threshold == 2.0 and "median FID of the 3 tasks" in advice.threshold_source
    other = [DatasetDistance("vtab/dtd", "", "", "", 1.0, 10, "inception-abc", "r")]
    write_distances_csv(tmp_path / "other.csv", other)
    with pytest.raises(UserError, match="not comparable"):
        advisor.advise(
            "procedural:textures", 800, extractor, reference, fid_table=str(tmp_path / "other.csv")
        )


def test_errors_come_before_any_image_is_embedded(extractor, reference, tmp_path):
    fn, counter = counted(extractor)
    cases = [
        (dict(dataset="tfds:imagenette"), "cannot be known from its name"),
        (dict(dataset="procedural:count", disparity="medium"), "must be low or high"),
        (dict(dataset="procedural:count", train_size=0), "positive"),
        (dict(dataset="procedural:nope"), "unknown procedural task"),
        (dict(dataset="procedural:count", anchors="vtab", data_dir=str(tmp_path)),
         "the FID threshold needs the anchor tasks' FIDs, but TFDS dataset"),
        (dict(dataset="procedural:count", fid_threshold=1.0, anchors="procedural"), "at most one"),
    ]  # fmt: skip
    for kwargs, message in cases:
        kwargs = {"train_size": 800, **kwargs}
        with pytest.raises(UserError, match=message):
            advisor.advise(kwargs.pop("dataset"), kwargs.pop("train_size"), fn, reference, **kwargs)
    with pytest.raises(UserError, match="4-d but the .* 32-d"):
        advisor.advise("procedural:count", 800, fn, FeatureStatistics(np.zeros(4), np.eye(4)))
    assert counter.calls == 0


def test_text_advice_has_the_lines_to_act_on(extractor, reference):
    advice = advisor.advise(
        "procedural:orientation", 800, extractor, reference, fid_threshold=1.0, num_images=N
    )
    lines = dict(line.split(None, 1) for line in advisor.format_advice(advice).splitlines())
    assert lines["recommend"] == "VPT"
    assert lines["disparity"] == "high (structured task)"
    assert lines["threshold"] == "1.00 (given)"
    assert lines["finding"].startswith(findings.FINDINGS["disparity"])
    assert lines["FID"].startswith(f"{advice.fid:.2f} to reference statistics")
    for key in ("dataset", "quadrant", "reason", "caveat"):
        assert lines[key]


def test_command_prints_json(checkpoint, tmp_path, capsys):
    args = ["--dataset", "procedural:orientation", "--train_size", "800", "--num_images", str(N)]
    args += ["--reference", "procedural:pretrain", "--features", "vit", "--checkpoint", checkpoint]
    advisor.main([*args, "--cache_dir", str(tmp_path), "--json"])
    record = json.loads(capsys.readouterr().out)
    assert (record["method"], record["disparity"], record["train_size"]) == ("VPT", "high", 800)
    assert record["reference"] == "procedural:pretrain" and record["num_images"] == N
    assert (
        f"median FID of the {len(parse_dataset_list('procedural'))} procedural tasks"
        in record["threshold_source"]
    )
    assert record["finding_text"] == findings.FINDINGS["disparity"]


def test_command_errors_are_one_line(checkpoint, tmp_path, capsys):
    base = [
        "--train_size",
        "800",
        "--reference",
        "procedural:pretrain",
        "--cache_dir",
        str(tmp_path),
    ]
    vit = ["--features", "vit", "--checkpoint", checkpoint]
    cases = [
        (["--dataset", f"folder:{tmp_path}"], "cannot be known from its name"),
        (["--dataset", "procedural:count"], "--features inception needs --inception"),
        (["--dataset", "procedural:count", "--fid_table", str(tmp_path / "no.csv"), *vit],
         "FID table not found"),
        (["--dataset", "procedural:count", "--disparity", "medium", *vit],
         "flag --disparity=medium: value should be one of <low|high>"),
        (["--dataset", "procedural:count", "--fid_threshold", "1", "--anchors", "vtab", *vit],
         "At most one of (fid_threshold, fid_table, anchors) must have a value"),
        (["--dataset", "procedural:nope", *vit], "unknown procedural task 'nope'"),
        (["--dataset", "procedural:count", "--json=maybe", *vit], "flag --json=maybe"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(SystemExit) as error:
            advisor.main(base + args)
        text = capsys.readouterr().err
        assert error.value.code == 2
        assert text.startswith("error: ") and message in text and text.count("\n") == 1, text
    with pytest.raises(SystemExit) as error:
        advisor.main(["--dataset", "procedural:count", *vit])
    assert error.value.code == 2
    assert "--train_size must have a value" in capsys.readouterr().err
