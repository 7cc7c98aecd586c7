"""The whole paper in one command: its plan (counted independently here), shared runs, inputs,
step-time projections, and a tiny end-to-end run that writes every table and figure."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os

import pytest

from vpt_jax import main as main_lib
from vpt_jax.data import VTAB_TASKS, max_scaling_size
from vpt_jax.data.fgvc import FGVC_TASKS
from vpt_jax.errors import UserError
from vpt_jax.paper import plan as plan_lib
from vpt_jax.paper.parts import PARTS, part_studies
from vpt_jax.paper.published import PATH as PUBLISHED
from vpt_jax.paper.report import FIGURES, TABLES
from vpt_jax.study import protocol
from vpt_jax.study.config import FINETUNE_LRS, PAPER_SEEDS, PROMPT_LRS, PROMPT_WDS
from vpt_jax.study.cost import StepTimes, split_size, vtab_test_size
from vpt_jax.study.pool import run_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def paper_config(arg: str | None = None):
    path = os.path.join(ROOT, "configs", "study", "paper.py")
    spec = importlib.util.spec_from_file_location("paper_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.get_config(arg)


@pytest.fixture(scope="module")
def full_plan():
    module, c = paper_config()
    return module, c, plan_lib.make_plan(c, check_inputs=False)


# Independently of the planner: a grid run count per strategy and group under the reference
# recipe (prompt methods: 10 lr x 4 wd; FT: 4 lr x (the official AdamW 0.01, and 0 = SGD)), and
# five seeded final runs per group.
PROMPT_GRID = len(PROMPT_LRS) * len(PROMPT_WDS)
FT_GRID = len(FINETUNE_LRS) * 2
SEEDS = len(PAPER_SEEDS)
GROUP = {"full": FT_GRID + SEEDS, "vpt_deep": PROMPT_GRID + SEEDS, "mixed": PROMPT_GRID + SEEDS,
         "ft_then_pt": PROMPT_GRID + SEEDS, "linear": PROMPT_GRID + SEEDS,
         "mlp": PROMPT_GRID + SEEDS, "lora": PROMPT_GRID + SEEDS}  # fmt: skip
FT_VPT = GROUP["full"] + GROUP["vpt_deep"]


def supported(task: str, sizes) -> list[int]:
    return [n for n in sizes if n <= max_scaling_size(VTAB_TASKS[task])]


def test_the_full_plan_counts_every_part_as_the_paper_runs_it(full_plan):
    module, _, plan = full_plan
    parts = {p.part: p for p in plan.parts}
    assert list(parts) == list(PARTS)
    tasks = list(VTAB_TASKS)
    tables1_2 = 19 * (GROUP["full"] + GROUP["vpt_deep"] + GROUP["mixed"] + GROUP["ft_then_pt"])
    assert (parts["tables1_2"].runs, parts["tables1_2"].shared) == (tables1_2, 0) == (2812, 0)
    assert parts["one_shot"].runs == 19 * FT_VPT == 1102
    # Tables 5-6: 400, 5,000 and 10,000 where a task supports them; 800 is Tables 1-2's runs.
    extra = sum(len(supported(t, (400, 5000, 10000))) for t in tasks)
    assert (parts["tables5_6"].runs, parts["tables5_6"].shared) == (extra * FT_VPT, 19 * FT_VPT)
    # Figure 4: 12 tasks; its 400/800/5,000/10,000 points are Tables 5-6's and 1-2's.
    chosen = [d.split("/")[1] for d in module.figure4_tasks()]
    assert len(chosen) == 12 and len(set(chosen)) == 12
    points = sum(len(supported(t, module.FIGURE4_SIZES)) for t in chosen)
    new = sum(len(supported(t, (1600, 3200, 20000))) for t in chosen)
    assert (parts["figure4"].runs, parts["figure4"].shared) == (
        new * FT_VPT,
        (points - new) * FT_VPT,
    )
    # Loss curves, FID and attribution train nothing of their own.
    overfitting = 3 * 2 * FT_VPT  # 3 tasks x 5,000 / 10,000, all Tables 5-6's
    assert (parts["loss_curves"].runs, parts["loss_curves"].shared) == (0, tables1_2 + overfitting)
    for part in ("fid", "attribution"):
        assert (parts[part].runs, parts[part].shared) == (0, 19 * FT_VPT)
    assert parts["backbones"].runs == 3 * 19 * FT_VPT == 3306
    assert parts["fgvc"].runs == 5 * FT_VPT == 290
    # Table 20: LoRA at 400 / 800 / 10,000 on CIFAR-100; FT's three points are shared.
    assert (parts["lora"].runs, parts["lora"].shared) == (3 * GROUP["lora"], 3 * GROUP["full"])
    assert (parts["probes"].runs, parts["probes"].shared) == (
        19 * (GROUP["linear"] + GROUP["mlp"]), 19 * FT_VPT
    )  # fmt: skip
    assert plan.total.runs == sum(p.runs for p in plan.parts)
    assert math.isnan(plan.total.seconds)  # no step times given: no device-hours


def test_a_run_two_parts_share_is_planned_once(full_plan):
    _, c, plan = full_plan
    keys = plan.keys
    every = [k for part_keys in keys.values() for k in part_keys]
    assert len(set(every)) == plan.total.runs  # each distinct run counted once
    assert set(keys["fid"]) <= set(keys["tables1_2"])
    assert set(keys["loss_curves"]) <= set(keys["tables1_2"]) | set(keys["tables5_6"])
    # Table 5's 800 column is Tables 1-2's runs: the same directory, not a second one.
    studies = {(p, n): s for p, n, s in part_studies(c)}
    scaling = studies[("tables5_6", "scaling")]
    standard = protocol.RunSpec("final", "vtab/dtd", "full", 0, 0, 0.001, 0.0, 42)
    sized = protocol.RunSpec("final", "vtab/dtd", "full", 800, 0, 0.001, 0.0, 42)
    assert run_key(scaling)(sized) == run_key(studies[("tables1_2", "vtab")])(standard)
    assert run_key(scaling)(sized) != run_key(scaling)(dataclasses.replace(sized, lr=0.005))


def test_the_plan_projects_device_hours_from_measured_step_times(tmp_path):
    times = StepTimes(
        device="test device", precision="bf16",
        train={"weights": {197: 0.01, 397: 0.03}, "prompts": {197: 0.004, 397: 0.012}},
        eval={197: 0.002, 397: 0.006}, compile_s={"weights": 30.0, "prompts": 20.0, "probe": 5.0},
        preprocess_s=0.0005, decode_s=0.001,
    )  # fmt: skip
    path = str(tmp_path / "step_times.json")
    times.save(path)
    assert StepTimes.load(path) == times
    _, c = paper_config("parts=lora")
    c.paper.step_times = path
    plan = plan_lib.make_plan(c, check_inputs=False)
    (lora,) = plan.parts
    # By hand: alone, the part trains FT (weight steps) and LoRA (a frozen backbone's steps, timed
    # as prompt steps) at 400, 800 and 10,000, 100 epochs each; no tokens are added.
    study = part_studies(c)[0][2]
    step = {"full": 0.01, "lora": 0.004}
    expected = 6 * 30.0 + 6 * 20.0  # one compile per phase (search, final) of each group
    for spec in plan_lib.projected_specs(study):
        run = protocol.run_config(study, spec)
        n_train = split_size(spec.dataset, run.data.train_split)
        n_eval = split_size(spec.dataset, run.data.eval_splits[0])
        expected += 100 * n_train * (step[spec.strategy] + 0.0005)
        curves = 100 * min(n_eval, run.train.curve_examples) if run.train.curve_every_epochs else 0
        full = 0 if curves and n_eval <= run.train.curve_examples else 1
        expected += (full * n_eval + curves) * 0.002 + (n_train + n_eval) * 0.001
    assert lora.seconds == pytest.approx(expected, rel=1e-6)
    text = plan_lib.plan_text(plan)
    assert (
        "device-hours (test device)" in text and "from step times measured on test device" in text
    )
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="is not a step times file"):
        StepTimes.load(str(tmp_path / "bad.json"))
    with pytest.raises(UserError, match="benchmarks/protocol_cost.py --save"):
        StepTimes.load(str(tmp_path / "absent.json"))


def test_split_sizes_come_from_the_task_tables(tmp_path):
    assert split_size("vtab/cifar100", "train800val200") == 1000
    assert split_size("vtab/cifar100", "test") == vtab_test_size(VTAB_TASKS["cifar100"]) == 10000
    assert split_size("fgvc/cub", "test") == FGVC_TASKS["cub"].sizes[2]
    assert split_size("procedural:shapes", "test16") == 16
    with pytest.raises(UserError, match="is not known before reading it"):
        split_size("folder:/x", "train")
    # An FGVC folder's own split files count where they are (the tiny paper's small Flowers).
    from vpt_jax.paper.tiny import FGVC_PER_CLASS, write_fgvc

    data_dir = write_fgvc(str(tmp_path / "fgvc"))
    classes = FGVC_TASKS["flowers"].num_classes
    assert split_size("fgvc/flowers", "test", data_dir) == classes * FGVC_PER_CLASS[2]
    assert split_size("fgvc/flowers", "trainval", data_dir) == classes * sum(FGVC_PER_CLASS[:2])
    assert (
        split_size("fgvc/flowers", "test", str(tmp_path / "none")) == FGVC_TASKS["flowers"].sizes[2]
    )


def test_dry_run_prints_the_plan_and_missing_inputs_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "paper"
    args = ["--config", os.path.join(ROOT, "configs", "study", "paper.py") + ":parts=lora+fgvc",
            "--workdir", str(workdir), "--dry_run",
            f"--config.paper.data_dir={tmp_path / 'tfds'}", f"--config.paper.fgvc_dir={tmp_path}"]  # fmt: skip
    main_lib.main(args)
    out = capsys.readouterr().out
    # Alone, Table 20's FT runs are its own (with Tables 1-2 and 5-6 they are theirs).
    assert "| lora | Table 20 | 174 | 0 |" in out and "| fgvc | Table 19 | 290 | 0 |" in out
    assert "checkpoint ViT-B_16.npz (paper.checkpoints.vit) does not exist; download it from" in out
    assert "fgvc/cub: " in out and "https://cornell.box.com/v/vptfgvcsplits" in out
    assert "device-hours: not projected" in out
    assert "inputs (9): ViT-B_16.npz, vtab/cifar100, fgvc/cub," in out
    assert not workdir.exists()


def test_a_plan_with_missing_inputs_is_refused_before_any_work(tmp_path, capsys):
    workdir = tmp_path / "paper"
    args = ["--config", os.path.join(ROOT, "configs", "study", "paper.py") + ":parts=probes",
            "--workdir", str(workdir)]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main_lib.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the plan's inputs are missing: checkpoint")
    assert "more, listed above" in err[0]
    assert not workdir.exists()


def test_dry_run_is_for_paper_configs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main_lib.main(["--config", os.path.join(ROOT, "configs", "demo.py"), "--workdir",
                       str(tmp_path), "--dry_run"])  # fmt: skip
    assert "--dry_run plans paper configs" in capsys.readouterr().err


def test_unknown_parts_are_one_line_errors():
    with pytest.raises(UserError, match="unknown nope; parts: tables1_2"):
        paper_config("parts=lora+nope")


def test_published_values_are_typed_in_once_per_cell():
    with open(PUBLISHED, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [(r["table"], r["row"], r["column"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert {r["table"] for r in rows} == {f"Table {n}" for n in range(1, 21)}
    tasks = set(VTAB_TASKS) | set(FGVC_TASKS) | {"mean", "wins"}
    assert all(r["row"] in tasks or r["row"].startswith(("mean_", "wins_")) for r in rows)
    value = {k: float(r["value"]) for k, r in zip(keys, rows, strict=True)}
    # A printed group mean is the mean of its printed row (where the paper's own numbers agree).
    natural = [t for t, s in VTAB_TASKS.items() if s.group == "natural"]
    for method in ("full", "vpt_deep", "mixed", "ft_then_pt"):
        row = [value[("Table 1", t, method)] for t in natural]
        assert sum(row) / len(row) == pytest.approx(
            value[("Table 1", "mean_natural", method)], abs=0.01
        )
    # Every table of the report reads its published cells under the names the report uses.
    labels = {spec.label for spec in TABLES if spec.label}
    assert labels == {f"Table {n}" for n in (*range(1, 16), 19, 20)}


def test_tiny_paper_end_to_end_writes_every_table_and_figure(tmp_path):
    from vpt_jax.paper.runner import run_paper

    _, c = paper_config("tiny")
    workdir = tmp_path / "paper"
    result = run_paper(c, str(workdir))
    assert not result["missing"] and not result["waiting"]
    report = workdir / "report"
    text = (report / "paper.md").read_text()
    for spec in TABLES:
        assert f"## {spec.label}: {spec.caption}" in text or f"## {spec.caption}" in text
    for fig in FIGURES:
        assert f"## {fig.label}: " in text
    names = {os.path.relpath(f, report) for f in result["figures"]}
    assert {"figure_3.png", "figure_4.png", "figure_5.png", "figure_9-13.png"} <= names
    assert any(n.startswith("figure_6_") for n in names)
    assert {n for n in names if n.startswith("attribution/")}  # GradCAM and IG of one task
    for name in names:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with open(report / "paper.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    compared = [r for r in cells if r["paper"] and r["ours"]]
    assert compared and all(
        float(r["difference"]) == pytest.approx(float(r["ours"]) - float(r["paper"])) for r in compared
    )  # fmt: skip
    assert json.loads((report / "paper.json").read_text())["cells"]
    for part, name, _ in part_studies(c):
        assert (workdir / "parts" / part / name / "report" / "results.md").exists(), (part, name)
    # Every run once: the pool holds as many runs as the plan counts.
    runs = [d for d, _, files in os.walk(workdir / "pool" / "runs") if "result.json" in files]
    assert len(runs) == plan_lib.make_plan(c, check_inputs=False).total.runs
    assert not [d for d in runs if os.path.exists(os.path.join(d, "checkpoints"))]  # dropped
    # Started again, it trains nothing and writes the same report.
    again = run_paper(c, str(workdir))
    assert again["cells"] == result["cells"]


def test_the_sbatch_example_sets_only_real_paper_fields():
    import re

    with open(os.path.join(ROOT, "scripts", "paper.sbatch")) as f:
        text = f.read()
    fields = re.findall(r"--config\.paper\.([\w.]+)=", text)
    assert {"data_dir", "checkpoints.vit", "shard", "inception"} <= set(fields)
    _, c = paper_config()
    for field in fields:
        section = c.paper
        for name in field.split("."):
            section = section[name]  # a misspelled field is a KeyError here
    assert "#SBATCH --array=" in text and "python -m vpt_jax.paper.report" in text


def test_the_report_of_a_paper_with_nothing_run_yet_marks_everything_missing(tmp_path):
    from vpt_jax.paper.runner import write_all

    _, c = paper_config("tiny,parts=tables1_2+fgvc+attribution")
    result = write_all(c, str(tmp_path))
    text = (tmp_path / "report" / "paper.md").read_text()
    assert "**Incomplete:**" in text and result["waiting"]
    assert "## Table 1: " in text and "## Table 19: " in text
    assert "not drawn yet (its runs are missing)" in text  # the attribution figures
    assert "its FT and VPT-deep final runs are not done yet" in text
    assert all(cell["ours"] is None for cell in result["cells"])
