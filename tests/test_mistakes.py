"""User mistakes in settings, data and studies: one `error:` line, exit 2, and nothing written.

Each row of `RUN_MISTAKES` / `STUDY_MISTAKES` is a row of the README's table of mistakes (the
command-line rows are in tests/test_cli_errors.py). A rejected run leaves its workdir as it was,
so the corrected command in the same workdir starts cleanly.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from vpt_jax import main as main_lib
from vpt_jax.train import records

RUN_MISTAKES = [
    (["--config.train.checkpoint_every_epochs=-1"], "train.checkpoint_every_epochs must be >= 0"),
    (["--config.train.eval_every_epochs=-1"], "train.eval_every_epochs must be >= 0"),
    (["--config.train.curve_examples=100"], "set train.curve_every_epochs"),
    (["--config.model.image_size=18"], "model.image_size=18 is not divisible by the patch size 4"),
    (["--config.data.shots=-1"], "data.shots must be >= 0, got -1"),
    (["--config.model.dropout_rate=1.0"], "use 0 <= model.dropout_rate < 1, got 1.0"),
    (["--config.data.eval_splits=()"], "data.eval_splits must name at least one split"),
    (["--config.data.train_split=train100000000"], "more than half of this machine's"),
    (["--config.data.train_split=bogus"], "unknown split 'bogus' for procedural:location"),
    (["--config.model.variant=Ti/16"], "which does not fit the model (hidden 192, 12 layers"),
    (
        [
            "--config.data.dataset=folder:{one_class}",
            "--config.data.train_split=train",
            "--config.data.eval_splits=('val',)",
        ],
        "has 1 class(es) among its training labels",
    ),  # fmt: skip
]
STUDY_MISTAKES = [
    (["--config.run.optimizer.lr=-1"], "run.optimizer.lr=-1.0 is replaced in every run of a study"),
    (["--config.run.train.seed=3"], "run.train.seed=3 is replaced in every run of a study"),
    (["--config.study.claim_timeout_s=1"], "study.claim_timeout_s must be at least 10 s"),
    (["--config.study.poll_interval_s=0"], "study.poll_interval_s must be > 0 seconds"),
    (["--config.study.batch_runs=-1"], "study.batch_runs must be >= 0 (1: one run at a time"),
    (["--config.study.shard=3/2"], "study.shard='3/2': use i/n with 0 <= i < n"),
    (["--config.study.shard=slurm"], "which are not all set here (this is not a Slurm job array"),
]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def one_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_class")
    (root / "cat").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / "cat" / f"{i}.png")
    return str(root)


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setattr(main_lib, "_enable_compilation_cache", lambda: None)


def _run_main(argv):
    # ml_collections registers `--config.x` overrides from sys.argv when the config flag is defined.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["python -m vpt_jax.main", *argv])
        main_lib.main(argv)


def _main(capsys, config, workdir, checkpoint, extra):
    prefix = "--config.run" if "study" in config else "--config"
    argv = ["--config", config, f"{prefix}.model.checkpoint={checkpoint}", f"--workdir={workdir}"]
    with pytest.raises(SystemExit) as exit_info:
        _run_main([*argv, *extra])
    return exit_info.value.code, capsys.readouterr().err


def _assert_one_line(code, err, message):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("extra, message", RUN_MISTAKES)
def test_a_run_mistake_is_one_line_and_writes_nothing(
    capsys, tmp_path, checkpoint, one_class, extra, message
):
    workdir = tmp_path / "run"
    extra = [e.format(one_class=one_class) for e in extra]
    code, err = _main(capsys, "tests/configs/tiny.py", workdir, checkpoint, extra)
    _assert_one_line(code, err, message)
    assert not workdir.exists()


@pytest.mark.parametrize("extra, message", STUDY_MISTAKES)
def test_a_study_mistake_is_one_line_and_writes_nothing(
    capsys, tmp_path, checkpoint, monkeypatch, extra, message
):
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "study"
    code, err = _main(capsys, "tests/configs/tiny_study.py", workdir, checkpoint, extra)
    _assert_one_line(code, err, message)
    assert not workdir.exists()


def _snapshot(directory):
    return {
        os.path.relpath(os.path.join(root, name), directory): open(
            os.path.join(root, name), "rb"
        ).read()
        for root, _, files in os.walk(directory)
        for name in files
    }


def test_a_rejected_run_does_not_poison_its_workdir_and_another_run_is_set_aside_on_request(
    capsys, tmp_path, checkpoint
):
    workdir = tmp_path / "run"
    code, err = _main(
        capsys, "tests/configs/tiny.py", workdir, checkpoint, ["--config.data.train_split=bogus"]
    )
    _assert_one_line(code, err, "unknown split 'bogus'")
    # The corrected command in the same workdir runs.
    one_epoch = ["--config.train.epochs=1"]
    _run_main(
        ["--config", "tests/configs/tiny.py", f"--config.model.checkpoint={checkpoint}",
         f"--workdir={workdir}", *one_epoch]
    )  # fmt: skip
    assert (workdir / records.RESULT).exists()
    capsys.readouterr()
    # A run of another config (say, a lower learning rate after a divergence) is refused, with
    # the switch that sets the old run aside; the refusal changes nothing.
    before = _snapshot(workdir)
    lower = [*one_epoch, "--config.optimizer.lr=0.1"]
    code, err = _main(capsys, "tests/configs/tiny.py", workdir, checkpoint, lower)
    _assert_one_line(code, err, "--config.train.move_aside_other_run=True to keep that run in")
    assert _snapshot(workdir) == before
    _run_main(
        ["--config", "tests/configs/tiny.py", f"--config.model.checkpoint={checkpoint}",
         f"--workdir={workdir}", *lower, "--config.train.move_aside_other_run=True"]
    )  # fmt: skip
    aside = tmp_path / "run.previous-1"
    assert _snapshot(aside) == before  # the old run, whole
    new = json.loads((workdir / records.CONFIG).read_text())
    assert new["optimizer"]["lr"] == 0.1 and (workdir / records.RESULT).exists()
