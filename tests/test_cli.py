"""The command-line convention: absl flags per command, one `error:` line and exit 2 for mistakes."""

from __future__ import annotations

import pytest
from absl import flags

from vpt_jax import cli
from vpt_jax.errors import UserError


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "a directory", flag_values=values, required=True)
    flags.DEFINE_integer("count", 3, "a number", flag_values=values)


def _body(values: flags.FlagValues, rest: list[str]):
    if values.count < 0:
        raise UserError("count must be >= 0; pass --count=0 or more")
    return values.workdir, values.count, rest


def test_flags_and_positional_arguments_reach_the_body():
    assert cli.run("doc", _define, _body, ["--workdir", "w", "--count=5", "a", "b"]) == (
        "w",
        5,
        ["a", "b"],
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workdir=w", "--count=-1"], "error: count must be >= 0; pass --count=0 or more"),
        (["--workdir=w", "--count=x"], "error: flag --count=x: invalid literal for int()"),
        (["--workdir=w", "--cuont=1"], "error: Unknown command line flag 'cuont'"),
        (["--count=1"], "error: flag --workdir=None: Flag --workdir must have a value"),
    ],
)
def test_every_mistake_is_one_error_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.run("doc", _define, _body, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_help_prints_the_docstring_and_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        cli.run("The command's doc.", _define, _body, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("The command's doc.") and "--workdir: a directory" in out


def test_commands_do_not_share_a_flag_registry():
    # Two commands defining the same flag names parse side by side in one process.
    assert cli.run("", _define, _body, ["--workdir=a"])[0] == "a"
    assert cli.run("", _define, _body, ["--workdir=b"])[0] == "b"


def test_a_command_that_takes_only_flags_refuses_positional_arguments(capsys):
    def body(values, rest):
        cli.no_arguments(rest)
        return values.workdir

    assert cli.run("", _define, body, ["--workdir=w"]) == "w"
    with pytest.raises(SystemExit) as e:
        cli.run("", _define, body, ["--workdir=w", "stray", "words"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "error: unexpected arguments stray words; this command takes only flags, see --help\n"
    )


def test_one_line_keeps_the_first_and_last_line_of_a_wrapped_message():
    wrapped = "flag --config=x.py: Error whilst parsing:\n\nTraceback ...\nValueError: bad arg"
    assert cli.one_line(wrapped) == "flag --config=x.py: Error whilst parsing: ValueError: bad arg"
    assert cli.one_line(KeyError("'lrr'\nDid you mean \"lr\"?")) == "'lrr' Did you mean \"lr\"?"
    assert cli.one_line("one line") == "one line"
