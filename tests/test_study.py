"""Studies: the protocol end to end, selection and seed averaging by hand, kill/restart, two workers."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest

from tests.test_train import ROOT, TINY
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import save_npz
from vpt_jax.models.vit import VisionTransformer, init_params
from vpt_jax.study import planning, protocol
from vpt_jax.study.protocol import RunSpec
from vpt_jax.study.runner import run_study
from vpt_jax.study.store import StudyStore

sys.path.insert(0, os.path.join(ROOT, "tests", "configs"))
import tiny_study


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny.npz"
    save_npz(path, init_params(VisionTransformer(TINY, None), 5))
    return str(path)


def _load(root, name):
    with open(os.path.join(root, name)) as f:
        return json.load(f)


def small_study(base, **study_overrides):
    c = tiny_study.get_config()
    c.run.model.checkpoint = base
    for key, value in study_overrides.items():
        c.study[key] = value
    return c


def read_records(workdir):
    out = []
    for root, _, files in os.walk(os.path.join(workdir, "runs")):
        if "study_run.json" in files:
            out.append((_load(root, "study_run.json"), _load(root, "result.json")))
    return out


def test_tiny_study_selection_seed_averaging_and_report(tmp_path, base):
    config = small_study(base, batch_runs=4)  # grids and seeds trained together (train/grid.py)
    config.study.grids.prompt.weight_decays = (0.0,)  # 2 grid points per group (suite time)
    config.study.grids.finetune.weight_decays = (0.001,)
    summary = run_study(config, str(tmp_path))
    recs = read_records(tmp_path)
    search = [(s, r) for s, r in recs if s["phase"] == "search"]
    final = [(s, r) for s, r in recs if s["phase"] == "final"]
    assert len(search) == 2 * 2 * 2 and len(final) == 2 * 2 * 2
    rows = {(r["dataset"], r["strategy"]): r for r in summary["rows"]}
    with open(tmp_path / "report" / "results.csv") as f:
        csv_rows = {(r["dataset"], r["strategy"]): r for r in csv.DictReader(f)}
    markdown = (tmp_path / "report" / "results.md").read_text()
    for dataset in config.study.datasets:
        for strategy in config.study.strategies:
            grid = [
                (s, r) for s, r in search if s["dataset"] == dataset and s["strategy"] == strategy
            ]
            # By hand: best last-epoch val top-1, ties to the smaller lr, then smaller wd.
            best = max(
                grid,
                key=lambda x: (x[1]["final"]["val16_top1"], -x[0]["lr"], -x[0]["weight_decay"]),
            )
            chosen = [s for s, _ in final if s["dataset"] == dataset and s["strategy"] == strategy]
            assert {(s["lr"], s["weight_decay"]) for s in chosen} == {
                (best[0]["lr"], best[0]["weight_decay"])
            }
            assert sorted(s["seed"] for s in chosen) == [1, 2]
            tests = [
                100 * r["final"]["test32_top1"]
                for s, r in final
                if s["dataset"] == dataset and s["strategy"] == strategy
            ]
            row = rows[(dataset, strategy)]
            assert row["mean"] == pytest.approx(statistics.fmean(tests))
            assert row["std"] == pytest.approx(statistics.stdev(tests))
            assert float(csv_rows[(dataset, strategy)]["mean"]) == pytest.approx(row["mean"])
            assert f"{row['mean']:.1f} ± {row['std']:.1f}" in markdown
    assert "All runs finished." in markdown and "wins vs full" in markdown
    # Finished runs keep records, artifact and result, not their orbax checkpoints.
    runs = [d for d, _, files in os.walk(tmp_path / "runs") if "result.json" in files]
    assert runs and all(os.path.exists(os.path.join(d, "artifact.npz")) for d in runs)
    assert not any(os.path.exists(os.path.join(d, "checkpoints")) for d in runs)
    for name in ("loss_curves.png", "wins.png"):
        png = (tmp_path / "report" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    # Keyed like the distance command's FID tables, so the quadrant figure matches them up.
    assert set(results) == {"procedural:location", "procedural:objects"}
    assert set(results["procedural:location"]) == {"full", "vpt_deep"}
    # ...which is what the quadrant table needs to say who won each task (not "unknown").
    from vpt_jax.analysis.fid.table import DatasetDistance
    from vpt_jax.analysis.quadrants import quadrant_table

    distances = [
        DatasetDistance(name, "train800val200", "", "", fid, 100, "vit-x", "procedural:pretrain")
        for name, fid in (("procedural:location", 50.0), ("procedural:objects", 10.0))
    ]
    table = quadrant_table(distances, results)
    assert all(r.winner in ("FT", "VPT", "tie") for r in table.rows) and not table.unmatched


def test_selection_rule_ties_go_to_the_smaller_lr():
    def spec(lr, wd):
        return RunSpec("search", "d", "vpt_deep", 0, 0, lr, wd, 0)

    assert (
        protocol.select([(spec(0.5, 0), 0.7), (spec(0.1, 0), 0.7), (spec(1.0, 0), 0.6)]).lr == 0.1
    )
    assert protocol.select([(spec(0.5, 0.01), 0.7), (spec(0.5, 0.0), 0.7)]).weight_decay == 0.0
    nan = float("nan")
    assert protocol.select([(spec(50, 0), nan), (spec(0.1, 0), 0.2)]).lr == 0.1


def test_report_on_a_partial_study_says_what_is_missing(tmp_path, base, capsys):
    config = small_study(base, datasets=("procedural:location",), strategies=("vpt_deep",))
    config.study.grids.prompt.lrs = (0.5,)
    config.study.grids.prompt.weight_decays = (0.0, 0.001)
    store = StudyStore(str(tmp_path))
    from vpt_jax.study.report import write_report
    from vpt_jax.study.runner import _execute, check_study_dir

    check_study_dir(str(tmp_path), config)
    first = protocol.search_specs(config.study, {})[0]
    assert store.try_claim(first)
    _execute(config, store, [first], done=0, total=2)
    report = write_report(config, str(tmp_path))
    assert report["missing"] == [protocol.search_specs(config.study, {})[1].run_id]
    assert report["waiting"]  # the finals are unknown until the grid is complete
    text = (tmp_path / "report" / "results.md").read_text()
    assert "**Incomplete:** 1 known runs missing" in text
    # The report command prints the same, and refuses a directory that holds no study.
    from vpt_jax.study.report import main as report_main

    report_main(["--workdir", str(tmp_path)])
    assert "**Incomplete:** 1 known runs missing" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        report_main(["--workdir", str(tmp_path / "report")])
    assert e.value.code == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'report'} is not a study directory (no study.json)\n"
    )


def _study_cmd(workdir, base, *extra):
    return [
        sys.executable, "-m", "vpt_jax.main", "--config", "tests/configs/tiny_study.py",
        f"--config.run.model.checkpoint={base}", f"--workdir={workdir}",
        "--config.study.datasets=('procedural:location',)", "--config.study.strategies=('vpt_deep',)",
        "--config.study.grids.prompt.lrs=(0.5,)", "--config.study.final.seeds=(1,)", *extra,
    ]  # fmt: skip


def _run_ids(workdir):
    return sorted(spec["phase"] + str(sorted(spec.items())) for spec, _ in read_records(workdir))


def _finals(workdir):
    return {
        (s["strategy"], s["seed"]): r["final"]["test32_top1"]
        for s, r in read_records(workdir)
        if s["phase"] == "final"
    }


def test_two_workers_on_one_study_do_every_run_once_with_one_workers_results(tmp_path, base):
    # Kills and restarts (nothing finished redone, the same report) are tests/test_faults.py's.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    reference = subprocess.run(
        _study_cmd(tmp_path / "ref", base, "--config.study.batch_runs=2"),
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert "2 runs of vpt_deep on procedural:location train together" in reference.stdout
    assert reference.returncode == 0, reference.stderr[-2000:]
    # 2 grid runs (lr 0.5 x wd {0, 0.001}) and 1 final run, shared by two workers, one run at a
    # time (batch_runs is a worker setting: the reference trains both grid runs together).
    outputs = _workers([_study_cmd(tmp_path / "shared", base, "--config.study.batch_runs=1")] * 2)
    assert sum(out.count("known runs done]") for out in outputs) == 3
    assert all(out.count("known runs done]") >= 1 for out in outputs)
    assert _run_ids(tmp_path / "shared") == _run_ids(tmp_path / "ref")
    assert _finals(tmp_path / "shared") == pytest.approx(_finals(tmp_path / "ref"), rel=1e-6)


def _workers(commands):
    """Runs the commands at once (worker processes of one study); returns their outputs."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    try:  # a worker that dies leaves the others waiting for its runs: fail, do not hang
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outputs
    return outputs


def test_ft_then_pt_waits_for_and_inherits_the_selected_ft_setting(tmp_path, base):
    config = small_study(base, datasets=("procedural:location",), strategies=("full", "ft_then_pt"))
    config.study.grids.finetune.lrs = (0.01,)  # 2 FT grid points (weight decays 0 and 0.001)
    config.study.grids.prompt.lrs = (0.5,)
    config.study.grids.prompt.weight_decays = (0.0,)
    config.study.final.seeds = (1,)
    config.run.ft_stage.epochs = 1
    store = StudyStore(str(tmp_path))
    specs, waiting = planning.plan(config, store)
    # Before FT's grid is done, FT-then-PT's grid is unknown: the study says it waits.
    assert waiting and {s.strategy for s in specs} == {"full"}
    run_study(config, str(tmp_path))
    recs = read_records(tmp_path)
    ft_final = [s for s, _ in recs if s["strategy"] == "full" and s["phase"] == "final"]
    chained = [s for s, _ in recs if s["strategy"] == "ft_then_pt"]
    assert len(ft_final) == 1 and len(chained) == 2  # its grid point and its final run
    for s in chained:
        assert (s["ft_lr"], s["ft_weight_decay"]) == (
            ft_final[0]["lr"],
            ft_final[0]["weight_decay"],
        )
    assert planning.plan(config, store) == (planning.plan(config, store)[0], False)


def test_without_ft_in_the_study_ft_then_pt_uses_the_ft_stage_template(tmp_path, base):
    config = small_study(base, strategies=("ft_then_pt",))
    config.run.ft_stage.lr, config.run.ft_stage.weight_decay = 0.003, 0.0002
    specs = protocol.search_specs(config.study, {})
    assert specs == []  # a multi-stage grid waits for its earlier stage's setting...
    specs, waiting = planning.plan(config, StudyStore(str(tmp_path)))
    assert len(specs) == 2 * 2 * 2  # 2 datasets x (2 lrs x 2 wds), known at once
    assert {(s.ft_lr, s.ft_weight_decay) for s in specs} == {(0.003, 0.0002)}  # ...the template's
    assert waiting  # only the finals wait (for the grid's results)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"datasets": ("procedural:location", "procedural:nope")},
            "unknown procedural task 'nope'",
        ),
        ({"strategies": ("full", "partial")}, "strategy 'partial' needs 1 <= k <= 2"),
    ],
)
def test_a_mistake_in_any_run_of_a_study_fails_before_the_first_run(
    tmp_path, base, overrides, message
):
    config = small_study(base, **overrides)
    if "partial" in config.study.strategies:
        config.run.strategy.partial_k = 3  # deeper than the 2-block checkpoint
    with pytest.raises(UserError, match=message):
        run_study(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "runs")


def test_static_shards_split_the_runs_without_claims_and_report_like_one_worker(tmp_path, base):
    reference = small_study(base, datasets=("procedural:location",), strategies=("vpt_deep",))
    reference.study.grids.prompt.lrs = (0.5,)
    reference.study.final.seeds = (1,)
    run_study(reference, str(tmp_path / "ref"))
    outputs = _workers(
        [_study_cmd(tmp_path / "sharded", base, f"--config.study.shard={i}/2") for i in range(2)]
    )
    assert sum(out.count("known runs done]") for out in outputs) == 3  # each run once
    assert not os.listdir(tmp_path / "sharded" / "claims")  # no claims at all
    assert _run_ids(tmp_path / "sharded") == _run_ids(tmp_path / "ref")
    assert _finals(tmp_path / "sharded") == pytest.approx(_finals(tmp_path / "ref"), rel=1e-6)


def test_shards_partition_every_run_and_read_slurm_arrays():
    from vpt_jax.study.shard import parse_shard

    specs = [
        RunSpec(protocol.SEARCH, "vtab/dtd", "vpt_deep", 0, 0, lr, 0.0, 42)
        for lr in (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    ]
    shards = [parse_shard(f"{i}/3") for i in range(3)]
    owners = [[i for i, shard in enumerate(shards) if shard.owns(spec)] for spec in specs]
    assert all(len(o) == 1 for o in owners)  # every run in exactly one shard
    assert parse_shard("", {}) is None
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert str(parse_shard("slurm", slurm)) == "3/8"
    for bad in ("2/2", "-1/2", "1", "a/b"):
        with pytest.raises(UserError, match="use i/n"):
            parse_shard(bad)


def test_study_keep_checkpoints_keeps_finished_runs_checkpoints(tmp_path, base):
    config = small_study(base, keep_checkpoints=True)
    s = config.study
    s.datasets, s.strategies, s.final.seeds = ("procedural:location",), ("vpt_deep",), (1,)
    s.grids.prompt.lrs, s.grids.prompt.weight_decays = (0.5,), (0.0,)
    run_study(config, str(tmp_path))
    runs = [d for d, _, files in os.walk(tmp_path / "runs") if "result.json" in files]
    assert len(runs) == 2  # one grid run, one final run
    assert all(os.listdir(os.path.join(d, "checkpoints", "stage0")) == ["2"] for d in runs)
