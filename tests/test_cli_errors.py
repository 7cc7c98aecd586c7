"""Every mistake and machine problem at the command line: one `error:` line, status 2, no traceback.

The rows run `python -m vpt_jax.main` in-process (`main.main(argv)`); full disks and read-only
filesystems are simulated by a write that raises the `OSError` wrapped as orbax wraps it.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys

import pytest
from absl import flags

from vpt_jax import atomic, cli, main
from vpt_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
DEMO = os.path.join(CONFIGS, "demo.py")


def snapshot(path) -> dict[str, bytes | None]:
    """Every file and directory under `path` (or the file itself): names and bytes."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {
        p.relative_to(path).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(path.rglob("*"))
    }


@pytest.fixture
def workdir(tmp_path):
    """A workdir that holds files already (they must come out of every mistake unchanged)."""
    w = tmp_path / "work"
    w.mkdir()
    (w / "notes.txt").write_text("kept\n")
    (w / "sub").mkdir()
    (w / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return w


@pytest.fixture(autouse=True)
def no_process_settings(monkeypatch):
    # What main sets for a whole process (stdout logging, the XLA disk cache): not in a test's.
    monkeypatch.setattr(main, "setup_logging", lambda: None)
    monkeypatch.setattr(main, "_enable_compilation_cache", lambda: None)


def one_error_line(capsys, run) -> str:
    with pytest.raises(SystemExit) as e:
        run()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert e.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def enospc_from_orbax(path: str) -> Exception:
    """A full disk's `OSError` inside another exception, as orbax raises a failed write."""
    error = RuntimeError("checkpoint save failed")
    error.__cause__ = OSError(errno.ENOSPC, "No space left on device", path)
    return error


SYNTAX_ERROR = "def get_config(arg=None):\n    return {\n"


@pytest.mark.parametrize(
    "args, words",
    [
        pytest.param(
            [f"--config={DEMO}:tiny", "--config.run.optimzer.lr=0.5"],
            ["'optimzer'", 'Did you mean "optimizer"'],
            id="misspelled-override",
        ),
        pytest.param(
            [f"--config={CONFIGS}/vtab.py:tsak=dtd"],
            ["--config:", "vtab.py", "unknown key 'tsak'", "task, strategy, prompts"],
            id="config-argument-typo",
        ),
        pytest.param(
            [f"--config={CONFIGS}/study/vtab.py:tasks=dtd,seed=42"],
            ["unknown key 'seed'", "tasks, strategies, seeds, epochs"],
            id="study-config-argument-typo",
        ),
        pytest.param(
            [f"--config={CONFIGS}/study/vtab.py:seeds=4x"],
            ["config argument 'seeds=4x'", "'4x' is not an integer"],
            id="config-argument-not-an-integer",
        ),
        pytest.param(
            [f"--config={DEMO}:tyni"],
            ["config argument 'tyni'", "takes 'tiny' and/or 'recipe=clean|reference'"],
            id="demo-argument-typo",
        ),
        pytest.param(
            [f"--config={DEMO}:tiny", "--config.run.train.epochs=ten"],
            ["--config.run.train.epochs=ten", "invalid literal for int()"],
            id="override-not-an-integer",
        ),
        pytest.param(
            [f"--config={CONFIGS}/nope.py"],
            ["--config:", "nope.py does not exist", "give the path of a config file"],
            id="config-file-missing",
        ),
        pytest.param(
            [f"--config={CONFIGS}/nope.py", "--config.run.train.epochs=2"],
            ["--config:", "nope.py does not exist"],
            id="config-file-missing-with-override",
        ),
        pytest.param(
            [f"--config={CONFIGS}"],
            ["--config:", "is a directory"],
            id="config-file-is-a-directory",
        ),
        pytest.param(
            ["--config=SYNTAX"],
            ["--config:", "broken.py line 2", "was never closed", "fix the file's Python syntax"],
            id="config-file-syntax-error",
        ),
        pytest.param(
            [f"--config={DEMO}:tiny", "--count=3"],
            ["Unknown command line flag 'count'"],
            id="unknown-flag",
        ),
    ],
)
def test_a_mistake_is_one_line_and_leaves_the_workdir_as_it_was(
    capsys, tmp_path, workdir, args, words
):
    broken = tmp_path / "broken.py"
    broken.write_text(SYNTAX_ERROR)
    args = [a.replace("SYNTAX", str(broken)) for a in args]
    before = snapshot(workdir)
    line = one_error_line(capsys, lambda: main.main([*args, f"--workdir={workdir}"]))
    for word in words:
        assert word in line, line
    assert "Traceback" not in line
    assert snapshot(workdir) == before


@pytest.mark.parametrize("under", [False, True], ids=["the-file", "a-directory-in-it"])
def test_a_workdir_that_is_a_file_is_one_line(capsys, tmp_path, under):
    file = tmp_path / "results.csv"
    file.write_text("a,b\n")
    given = file / "run" if under else file
    line = one_error_line(
        capsys, lambda: main.main([f"--config={DEMO}:tiny", f"--workdir={given}"])
    )
    expected = (
        f"error: --workdir {given}: {file} is a file, not a directory; give another --workdir"
        if under
        else f"error: --workdir {file} is a file; give a directory"
    )
    assert line == expected
    assert file.read_text() == "a,b\n"


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, ["no space left on device writing", "free space or use another --workdir"]),
        (errno.EROFS, ["cannot write", "read-only filesystem; use a writable --workdir"]),
        (errno.EACCES, ["cannot write", "permission denied; use a writable --workdir"]),
    ],
    ids=["full-disk", "read-only", "permission-denied"],
)
def test_a_failing_write_is_one_line_naming_the_file_and_the_flag(
    capsys, monkeypatch, workdir, code, words
):
    def failing_write(path, data):
        try:
            raise OSError(code, os.strerror(code), os.fspath(path))
        except OSError as e:  # wrapped, as orbax and tensorstore wrap it
            raise RuntimeError("checkpoint save failed") from e

    monkeypatch.setattr(atomic, "write_bytes", failing_write)
    before = snapshot(workdir)
    line = one_error_line(
        capsys, lambda: main.main([f"--config={DEMO}:tiny", f"--workdir={workdir}"])
    )
    for word in words:
        assert word in line, line
    assert os.path.join(str(workdir), "study.json") in line
    assert snapshot(workdir) == before


def test_tensorstore_text_and_orbax_aftermath_make_one_line(capsys, caplog, tmp_path):
    # tensorstore (under orbax) has no OSError, only text with the errno; orbax logs the error from
    # its writer threads first, and pending writes hit its closed event loop.
    checkpoint = tmp_path / "w" / "checkpoints" / "stage0" / "2"
    message = (
        'RESOURCE_EXHAUSTED: Error writing "trainable.head.kernel/0.0" in OCDBT database at local '
        f'file "{checkpoint}.orbax-checkpoint-tmp/default/": Failed writing: '
        f'"{checkpoint}.orbax-checkpoint-tmp/default/ocdbt.process_0/d/ff0a": Failed to write '
        "1147460 bytes to file 18: No space left on device [os_error_code='28']"
    )

    def body(values, rest):
        error = ValueError(message)
        logging.getLogger("absl").error("writer thread raised", exc_info=error)
        sys.unraisablehook(
            type("Unraisable", (), {"exc_value": RuntimeError("Event loop is closed")})()
        )
        raise error

    line = one_error_line(
        capsys, lambda: cli.run("", _define, body, [f"--workdir={tmp_path / 'w'}"])
    )
    assert line == (
        f"error: no space left on device writing {checkpoint}; free space or use another --workdir"
    )
    assert not [r for r in caplog.records if r.name == "absl"]


def test_held_library_errors_are_shown_when_the_command_goes_on(caplog, tmp_path):
    def body(values, rest):
        logging.getLogger("absl").error("retried", exc_info=enospc_from_orbax("/x"))
        return "done"

    assert cli.run("", _define, body, [f"--workdir={tmp_path}"]) == "done"
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == ["retried"]


def test_other_errors_keep_their_traceback(tmp_path):
    def bug(values, rest):
        return 1 / 0

    def other_oserror(values, rest):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "x"))

    def exists_but_not_a_file(values, rest):
        os.mkdir(tmp_path)  # EEXIST for a directory: nothing stands in a directory's way

    with pytest.raises(ZeroDivisionError):
        cli.run("", _define, bug, [f"--workdir={tmp_path}"])
    with pytest.raises(FileNotFoundError):
        cli.run("", _define, other_oserror, [f"--workdir={tmp_path}"])
    with pytest.raises(FileExistsError):
        cli.run("", _define, exists_but_not_a_file, [f"--workdir={tmp_path}"])


def test_ctrl_c_is_one_line_and_status_130(capsys):
    def body(values, rest):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        cli.run("", _define, body, ["--workdir=w"])
    assert e.value.code == 130
    assert capsys.readouterr().err == f"interrupted: {cli.INTERRUPTED}\n"


def test_ctrl_c_during_a_study_says_how_to_resume(capsys, monkeypatch, workdir):
    import vpt_jax.study.runner as runner

    def interrupted_study(config, workdir):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_study", interrupted_study)
    before = snapshot(workdir)
    with pytest.raises(SystemExit) as e:
        main.main([f"--config={DEMO}:tiny", f"--workdir={workdir}"])
    assert e.value.code == 130
    assert capsys.readouterr().err == (
        f"interrupted: --workdir {workdir} keeps every checkpoint and record written so far; "
        "run the same command to resume from the last checkpoint\n"
    )
    assert snapshot(workdir) == before


ENTRY_POINTS = [
    "vpt_jax.main",
    "vpt_jax.tuning.budget",
    "vpt_jax.data.prepare",
    "vpt_jax.study.report",
    "vpt_jax.analysis.fid.distance",
    "vpt_jax.analysis.quadrants",
    "vpt_jax.analysis.advisor",
    "vpt_jax.analysis.attribution.figures",
    "vpt_jax.analysis.fid.inception_weights",
]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_reports_through_cli_run(capsys, monkeypatch, module):
    import importlib

    seen = []
    real_run = cli.run
    monkeypatch.setattr(cli, "run", lambda *a, **k: seen.append(module) or real_run(*a, **k))
    line = one_error_line(capsys, lambda: importlib.import_module(module).main(["--no_such=1"]))
    assert seen == [module] and "Unknown command line flag 'no_such'" in line


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "a directory", flag_values=values)


QUIET_SCRIPT = """
import logging, sys
from absl import flags
from vpt_jax import cli

def body(values, rest):
    logging.basicConfig(level=logging.INFO)  # as the analysis commands log
    import jax
    jax.devices()  # JAX probes its backends (TPU: libtpu) here
    from vpt_jax.data.host_tf import tf
    print(tf.constant(1).numpy())

cli.run("", lambda v: None, body, [])
"""


def test_help_and_library_start_up_print_nothing_on_stderr():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "JAX_PLATFORMS"))}
    help_ = subprocess.run(
        [sys.executable, "-m", "vpt_jax.main", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert help_.returncode == 0 and "--workdir" in help_.stdout
    assert help_.stderr == ""
    start = subprocess.run(
        [sys.executable, "-c", QUIET_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert start.returncode == 0 and start.stdout.strip() == "1", start.stderr
    for noise in ("oneDNN", "libtpu", "Unable to initialize backend", "cpu_feature_guard"):
        assert noise not in start.stderr, start.stderr


def test_config_arguments_raise_a_user_error_with_the_allowed_keys():
    assert cli.config_arguments("a=1,b=x", ("a", "b")) == {"a": "1", "b": "x"}
    with pytest.raises(UserError, match=r"config argument 'c=1': unknown key 'c'; .* a, b$"):
        cli.config_arguments("a=1,c=1", ("a", "b"))
    with pytest.raises(ValueError, match=r"config argument 'a=': no value"):  # a ValueError too
        cli.config_arguments("a=", ("a", "b"))
    with pytest.raises(UserError, match="'x' is not an integer"):
        cli.config_int("seeds", "x")
