"""The quadrant figure and table: placement rules, winners, inputs, and the command on procedural data."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from tests.fid_fixtures import write_tiny_vit
from vpt_jax.analysis import quadrants
from vpt_jax.analysis.fid import distance
from vpt_jax.analysis.fid.extractors import vit_extractor
from vpt_jax.analysis.fid.table import DatasetDistance, read_distances_csv, write_distances_csv
from vpt_jax.data import parse_dataset_list
from vpt_jax.errors import UserError


def row(dataset: str, fid: float, disparity: str = "") -> DatasetDistance:
    return DatasetDistance(dataset, "train800val200", "", disparity, fid, 100, "f", "ref")


@pytest.fixture(scope="module")
def procedural_fid_csv(tmp_path_factory) -> str:
    """A real FID table: the procedural tasks against procedural:pretrain in a tiny ViT's space."""
    directory = tmp_path_factory.mktemp("quadrants")
    extractor = vit_extractor(write_tiny_vit(directory / "vit_tiny.npz"))
    reference = distance.reference_statistics("procedural:pretrain", extractor, num_images=24)
    rows = distance.dataset_distances(
        parse_dataset_list("procedural"),
        reference,
        extractor,
        num_images=24,
        reference_name="pretrain",
    )
    write_distances_csv(directory / "fid.csv", rows)
    return str(directory / "fid.csv")


def test_winner_by_mean_accuracy():
    assert quadrants.winner({"full": 0.7, "vpt_deep": 0.8}) == "VPT"
    assert quadrants.winner({"full": 0.9, "vpt_deep": 0.8}) == "FT"
    assert quadrants.winner({"full": 0.8, "vpt_deep": 0.8}) == "tie"
    assert quadrants.winner({"full": 0.8}) == "unknown"
    assert quadrants.winner(None) == "unknown"
    assert quadrants.winner({"ft": 0.9, "vpt_shallow": 0.95}, ft="ft", vpt="vpt_shallow") == "VPT"


def test_each_quadrant_gets_the_papers_preference():
    rows = [
        row("vtab/cifar100", 10.0, "low"),
        row("vtab/patch_camelyon", 90.0, "low"),
        row("vtab/clevr_count", 20.0, "high"),
        row("vtab/dsprites_location", 100.0, "high"),
    ]
    table = quadrants.quadrant_table(rows, fid_threshold=20.0)
    got = {r.task: (r.distributions, r.quadrant, r.paper) for r in table.rows}
    assert got == {
        "vtab/cifar100": ("similar", "low disparity, similar distributions", "VPT"),
        "vtab/patch_camelyon": ("dissimilar", "low disparity, dissimilar distributions", "FT"),
        "vtab/clevr_count": ("similar", "high disparity, similar distributions", "VPT"),  # FID == t
        "vtab/dsprites_location": ("dissimilar", "high disparity, dissimilar distributions", "VPT"),
    }
    assert table.threshold_source == "given"
    results = {
        "cifar100": {"full": 0.6, "vpt_deep": 0.7},  # VPT, as the paper's quadrant predicts
        "patch_camelyon": {"full": 0.8, "vpt_deep": 0.9},  # VPT where the paper predicts FT
        "clevr_count": {"full": 0.5, "vpt_deep": 0.5},  # a tie counts for neither
    }
    markdown = quadrants.quadrant_table(rows, results, fid_threshold=20.0).markdown()
    assert "matches the paper's quadrant preference in 1 of 2 tasks" in markdown
    assert (
        "| vtab/patch_camelyon | - | low | 90.00 | dissimilar | FT | 0.8 | 0.9 | VPT |" in markdown
    )


def test_default_threshold_is_the_median_and_disparity_can_be_given():
    rows = [row("vtab/dtd", 5.0, "low"), row("folder:/x", 7.0), row("vtab/dmlab", 30.0, "high")]
    table = quadrants.quadrant_table(rows)
    assert table.fid_threshold == 7.0 and "median" in table.threshold_source
    unknown = table.rows[1]
    assert (unknown.disparity, unknown.quadrant, unknown.paper) == ("", "", "")
    table = quadrants.quadrant_table(rows, disparities={"folder:/x": "high"})
    assert table.rows[1].quadrant == "high disparity, similar distributions"
    with pytest.raises(UserError, match="must be low or high"):
        quadrants.quadrant_table(rows, disparities={"folder:/x": "medium"})


def test_results_are_matched_by_canonical_task_names():
    rows = [row("vtab/oxford_iiit_pet", 5.0, "low"), row("vtab/kitti_distance", 50.0, "high")]
    results = {"pets": {"full": 0.8, "vpt_deep": 0.9}, "svhn": {"full": 0.5, "vpt_deep": 0.4}}
    table = quadrants.quadrant_table(rows, results)
    assert [(r.task, r.winner, r.ft_accuracy) for r in table.rows] == [
        ("vtab/oxford_iiit_pet", "VPT", 0.8),
        ("vtab/kitti_distance", "unknown", None),
    ]
    assert table.unmatched == ("vtab/svhn_cropped",)


@pytest.mark.parametrize(
    "results, message",
    [
        ([1, 2], "must be a mapping"),
        ({"dtd": [0.5]}, "entry 'dtd' must map strategy"),
        ({"dtd": {"full": "high"}}, "'dtd'/'full' is 'high', not an accuracy"),
        ({"dtd": {"full": float("nan")}}, "not an accuracy"),
        ({"pets": {"full": 1.0}, "oxford_iiit_pet": {"full": 1.0}}, "twice"),
    ],
)
def test_malformed_results_are_refused(results, message):
    with pytest.raises(UserError, match=message):
        quadrants.validate_results(results)


def test_results_files(tmp_path):
    with pytest.raises(UserError, match="results file not found"):
        quadrants.load_results(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{'dtd': 1}")
    with pytest.raises(UserError, match="not valid JSON"):
        quadrants.load_results(tmp_path / "bad.json")


def test_figure_needs_a_task_of_known_disparity(tmp_path):
    table = quadrants.quadrant_table([row("folder:/x", 3.0), row("tfds:y", 4.0)])
    with pytest.raises(UserError, match="--disparity TASK=low"):
        quadrants.plot_quadrants(table, tmp_path / "q.png")


def test_command_draws_figure_and_table_from_procedural_data(procedural_fid_csv, tmp_path, capsys):
    results = {
        "procedural:objects": {"full": 0.81, "vpt_deep": 0.86},
        "procedural:textures": {"full": 0.9, "vpt_deep": 0.7},
        "procedural:count": {"full": 0.6, "vpt_deep": 0.6},
        "procedural:location": {"full": 0.5},
        "cifar100": {"full": 0.5, "vpt_deep": 0.6},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "figs" / "quadrants.png"
    quadrants.main(
        ["--fid", procedural_fid_csv, "--results", str(tmp_path / "results.json")]
        + ["--out", str(out)]
    )
    png = out.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    import matplotlib.image

    pixels = matplotlib.image.imread(out)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500 and pixels.std() > 0.05

    fids = {r.dataset: r.fid for r in read_distances_csv(procedural_fid_csv)}
    threshold = float(np.median(list(fids.values())))
    with open(tmp_path / "figs" / "quadrants.csv") as f:
        table = {r["task"]: r for r in csv.DictReader(f)}
    assert set(table) == set(fids) == set(map(str, parse_dataset_list("procedural")))
    expected_winner = {
        "procedural:objects": "VPT",
        "procedural:textures": "FT",
        "procedural:count": "tie",
        "procedural:location": "unknown",
        "procedural:distance": "unknown",
        "procedural:orientation": "unknown",
    }
    for task, record in table.items():
        assert float(record["fid"]) == fids[task]
        assert record["winner"] == expected_winner.get(task, "unknown")
        assert record["distributions"] == ("similar" if fids[task] <= threshold else "dissimilar")
        low = ("objects", "textures", "shapes", "digits")
        high = task not in {f"procedural:{t}" for t in low}
        assert record["disparity"] == ("high" if high else "low")
        if task in results and "vpt_deep" in results[task]:
            assert float(record["vpt_accuracy"]) == results[task]["vpt_deep"]
    markdown = (tmp_path / "figs" / "quadrants.md").read_text()
    assert f"FID threshold {threshold:.2f} (median FID of the {len(fids)} tasks)" in markdown
    assert f"| procedural:objects | natural | low | {fids['procedural:objects']:.2f} |" in markdown
    assert "Results without an FID: vtab/cifar100." in markdown
    assert markdown in capsys.readouterr().out


def test_names_in_results_and_labels(tmp_path):
    assert quadrants.canonical_task(" pets ") == "vtab/oxford_iiit_pet"
    assert quadrants.canonical_task("folder:birds") == f"folder:{os.path.abspath('birds')}"
    assert quadrants.canonical_task(" my own task ") == "my own task"  # kept as given
    assert quadrants.task_label("vtab/oxford_iiit_pet") == "oxford_iiit_pet"
    assert quadrants.task_label("procedural:count") == "count"
    assert quadrants.task_label("tfds:eurosat/rgb") == "eurosat/rgb"
    assert quadrants.task_label("my own task") == "my own task"


def test_command_errors_are_one_line(tmp_path, capsys):
    write_distances_csv(tmp_path / "fid.csv", [row("vtab/dtd", 3.0, "low")])
    (tmp_path / "text.csv").write_text("task,score\ndtd,3\n")
    cases = [
        (["--fid", str(tmp_path / "none.csv")], "FID table not found"),
        (["--fid", str(tmp_path / "text.csv")], "has no dataset and fid column"),
        (["--fid", str(tmp_path / "fid.csv"), "--disparity", "dtd"], "--disparity takes TASK="),
        (["--fid", str(tmp_path / "fid.csv"), "--results", str(tmp_path / "r.json")],
         "results file not found"),
        (["--fid", str(tmp_path / "fid.csv"), "--fid_threshold", "x"],
         "flag --fid_threshold=x: could not convert string to float"),
        ([], "--fid must have a value"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(SystemExit) as error:
            quadrants.main([*args, "--out", str(tmp_path / "q.png")])
        text = capsys.readouterr().err
        assert error.value.code == 2
        assert text.startswith("error: ") and message in text and text.count("\n") == 1, text
    assert not (tmp_path / "q.png").exists()


def test_command_takes_repeated_disparities(tmp_path, capsys):
    rows = [row("folder:/x", 3.0), row("tfds:y", 4.0), row("vtab/dtd", 5.0, "low")]
    write_distances_csv(tmp_path / "fid.csv", rows)
    argv = ["--fid", str(tmp_path / "fid.csv"), "--out", str(tmp_path / "q.png")]
    quadrants.main([*argv, "--disparity", "folder:/x=high", "--disparity=tfds:y=low"])
    with open(tmp_path / "q.csv") as f:
        disparities = {r["task"]: r["disparity"] for r in csv.DictReader(f)}
    assert disparities == {"folder:/x": "high", "tfds:y": "low", "vtab/dtd": "low"}
    assert "wrote" in capsys.readouterr().out
