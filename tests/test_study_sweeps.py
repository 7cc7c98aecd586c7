"""The study's data-scaling sweep beside the standard splits, significance marks and the advisor's
verdicts in the report: planning and formatting, no training."""

from __future__ import annotations

import math

import pytest

from vpt_jax.analysis.fid.table import DatasetDistance
from vpt_jax.analysis.quadrants import quadrant_table
from vpt_jax.errors import UserError
from vpt_jax.study import protocol, quadrant_report
from vpt_jax.study.config import study_config
from vpt_jax.study.report_tables import paper_table, significance


def sweep_study(sizes=(800, 3200), datasets=("vtab/cifar100",), strategies=("full", "vpt_deep")):
    c = study_config()
    s = c.study
    s.datasets = ("vtab/cifar100", "vtab/dtd", "vtab/clevr_count")
    s.strategies = ("full", "linear", "vpt_deep")
    s.scaling.datasets, s.scaling.strategies, s.scaling.sizes = datasets, strategies, sizes
    return s


def test_a_sweep_adds_its_groups_and_shares_the_standard_size():
    study = sweep_study()
    assert protocol.standard_size(study) == 800  # train800 / val200: the VTAB-1k splits
    groups = protocol.groups(study)
    assert len(groups) == 3 * 3 + 2  # 800 is the standard group itself: only 3200 is added
    assert groups[-2:] == [
        ("vtab/cifar100", "full", 3200, 0),
        ("vtab/cifar100", "vpt_deep", 3200, 0),
    ]
    assert len(set(groups)) == len(groups)
    specs = protocol.search_specs(study, {})
    lrs = {g: len(study.grids[g].lrs) * len(study.grids[g].weight_decays) for g in study.grids}
    expected = 3 * (lrs["finetune"] + 2 * lrs["prompt"]) + lrs["finetune"] + lrs["prompt"]
    assert len(specs) == expected
    assert {s.size for s in specs} == {0, 3200}


def test_a_sweep_size_is_not_shared_when_the_standard_splits_are_not_its_splits():
    study = sweep_study(sizes=(160,))
    study.search.train_split, study.search.eval_split = "train800", "val100"  # not 4:1
    assert protocol.standard_size(study) == 0
    assert ("vtab/cifar100", "full", 160, 0) in protocol.groups(study)


def test_no_sweep_leaves_the_groups_as_the_cross_product():
    study = sweep_study(sizes=())
    assert len(protocol.groups(study)) == 9


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sizes=(800, 30)), "study.scaling.sizes must be positive multiples of 4"),
        (dict(datasets=()), "study.scaling.datasets or .strategies is empty"),
        (dict(strategies=("full", "vpt_dep")), "unknown study.scaling.strategies"),
    ],
)
def test_sweep_mistakes_are_one_line(change, message):
    study = sweep_study(**change)
    with pytest.raises(UserError, match=message) as error:
        protocol.check_study(study)
    assert "\n" not in str(error.value)


def row(task, strategy, mean, std, seeds=3, group="natural"):
    return dict(
        dataset=f"vtab/{task}", task=task, group=group, strategy=strategy, size=0, shots=0,
        seeds=seeds, mean=mean, std=std, tuned_percent=1.0 if strategy != "full" else 100.0,
    )  # fmt: skip


def test_significance_is_a_difference_beyond_the_pooled_std():
    ft = row("a", "full", 50.0, 2.0)
    assert significance(row("a", "v", 53.0, 2.0), ft) == " ▲"  # 3 > 2
    assert significance(row("a", "v", 46.0, 2.0), ft) == " ▼"
    assert significance(row("a", "v", 51.5, 1.0), ft) == ""  # 1.5 <= sqrt((1 + 4) / 2) = 1.58
    assert significance(row("a", "v", 51.7, 1.0), ft) == " ▲"
    assert significance(row("a", "v", 60.0, 0.0, seeds=1), ft) == ""  # one seed: no std to judge
    assert significance(row("a", "v", 60.0, 0.0), None) == ""


def test_the_table_marks_significant_cells_and_counts_them_in_wins():
    rows = [
        row("a", "full", 50.0, 1.0),
        row("b", "full", 50.0, 1.0),
        row("c", "full", 50.0, 1.0),
        row("a", "vpt_deep", 55.0, 1.0),  # significant win
        row("b", "vpt_deep", 50.5, 1.0),  # a win within the noise
        row("c", "vpt_deep", 40.0, 1.0),  # significant loss
    ]
    table = paper_table(rows, "full")
    vpt = next(line for line in table.splitlines() if line.startswith("| vpt_deep"))
    cells = [c.strip() for c in vpt.strip("|").split("|")]
    assert cells[1:4] == ["55.0 ± 1.0 ▲", "50.5 ± 1.0", "40.0 ± 1.0 ▼"]
    assert cells[-2] == "2/3 (1▲ 1▼)"
    ft = next(line for line in table.splitlines() if line.startswith("| full"))
    assert "▲" not in ft and "▼" not in ft


def test_verdicts_put_the_advisor_beside_the_measured_winner():
    def distance(task, fid, group):
        disparity = "high" if group == "structured" else "low"
        return DatasetDistance(f"vtab/{task}", "test", group, disparity, fid, 100, "vit-x", "ref")

    distances = [
        distance("near", 10.0, "natural"),
        distance("far", 90.0, "natural"),
        distance("count", 30.0, "structured"),
    ]
    rows = [
        row("near", "full", 50.0, 1.0),
        row("near", "vpt_deep", 60.0, 1.0),
        row("far", "full", 70.0, 2.0),
        row("far", "vpt_deep", 69.0, 2.0),
        row("count", "full", 40.0, 1.0, group="structured"),
        row("count", "vpt_deep", 35.0, 1.0, group="structured"),
    ]
    results = {r["dataset"]: {} for r in rows}
    for r in rows:
        results[r["dataset"]][r["strategy"]] = r["mean"]
    table = quadrant_table(distances, results, ft="full", vpt="vpt_deep", fid_threshold=50.0)
    text = quadrant_report.verdicts(table, rows, "full", "vpt_deep", 800)
    lines = [line for line in text.splitlines() if line.startswith("| vtab/")]
    assert [line.split(" | ")[0][2:] for line in lines] == ["vtab/near", "vtab/count", "vtab/far"]
    cells = {line.split(" | ")[0][2:]: [c.strip() for c in line.split("|")[1:-1]] for line in lines}
    # task, FID, disparity, distributions, paper, advisor, winner, margin, pooled std, significant
    assert cells["vtab/near"][3:] == ["similar", "VPT", "VPT", "VPT", "+10.0", "1.0", "yes ▲"]
    assert cells["vtab/far"][3:] == ["dissimilar", "FT", "FT", "FT", "-1.0", "2.0", "no"]
    assert cells["vtab/count"][3:] == ["similar", "VPT", "VPT", "FT", "-5.0", "1.0", "yes ▼"]
    assert "matches the advisor in 2 of 3 tasks" in text
    assert not math.isnan(table.fid_threshold)


def test_the_quadrant_section_checks_its_settings_before_any_run():
    from vpt_jax.study.config import study_config

    c = study_config()
    quadrant_report.check(c)  # no reference: no section, nothing to check
    c.study.quadrants.reference = "procedural:pretrain"
    c.study.quadrants.features = "inception"
    with pytest.raises(UserError, match="needs study.quadrants.inception"):
        quadrant_report.check(c)
    c.study.quadrants.features = "dino"
    with pytest.raises(UserError, match="must be vit or inception"):
        quadrant_report.check(c)
    c.study.quadrants.features = "vit"
    c.study.quadrants.num_images = 1
    with pytest.raises(UserError, match="num_images must be >= 2"):
        quadrant_report.check(c)
