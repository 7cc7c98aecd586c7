"""One way to write a command: absl flags on a command's own `FlagValues`, and one error path.

Every `python -m vpt_jax...` command is

    def define(flags_: flags.FlagValues) -> None:        # its flags, on its own FlagValues
        flags.DEFINE_string("workdir", None, "the study's directory", flag_values=flags_)

    def main(argv=None):
        cli.run(__doc__, define, _run, argv)               # _run(flags_, positional) does the work

so commands can be imported side by side (no global flag registry to collide in) and called from
tests with an argument list. A mistake or a problem of the machine ends in one `error: ...` line
on stderr and exit status 2: an unknown or malformed flag, a missing required one, a config file
that does not exist, does not parse or rejects its argument, a `UserError` from the work, and an
`OSError` that the machine caused (a full disk, a read-only or forbidden directory, a file where a
directory should be), found even where a library wrapped it. Ctrl-C ends in one `interrupted: ...`
line and status 130. Anything else is a bug and keeps its traceback. `--help` prints the command's
docstring and flags and exits 0.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from vpt_jax.errors import UserError
from vpt_jax.machine_errors import Aftermath, chain, flag_pairs, machine_error, same
from vpt_jax.runtime import asks_for_help, quiet_libraries

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
INTERRUPTED = "stopped; no file is left half-written (each is written whole), run it again"


class ConfigArgumentError(UserError, ValueError):
    """A config file's argument (`configs/x.py:key=value,...`) that the file does not take.

    A `ValueError` too: what config files raised before, and what callers may catch.
    """


def fail(message: str) -> None:
    """Prints `error: message` on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def no_arguments(rest: Sequence[str]) -> None:
    """Raises `UserError` for positional arguments given to a command that takes only flags."""
    if rest:
        raise UserError(
            f"unexpected arguments {' '.join(rest)}; this command takes only flags, see --help"
        )


def config_arguments(arg: str | None, allowed: Sequence[str]) -> dict[str, str]:
    """Parses a config file's argument, `key=value,key=value`, into a dict.

    Raises:
      ConfigArgumentError: an item that is not key=value, or a key not in `allowed` (named).
    """
    args: dict[str, str] = {}
    for item in (arg or "").split(","):
        if not item:
            continue
        key, _, value = item.partition("=")
        if key not in allowed or not value:
            problem = f"unknown key {key!r}" if key not in allowed else "no value"
            raise ConfigArgumentError(
                f"config argument {item!r}: {problem}; use key=value with key in "
                f"{', '.join(allowed)}"
            )
        args[key] = value
    return args


def config_int(key: str, value: str) -> int:
    """`value` of config argument `key` as an integer, or a `ConfigArgumentError` saying so."""
    try:
        return int(value)
    except ValueError:
        raise ConfigArgumentError(
            f"config argument '{key}={value}': {value!r} is not an integer"
        ) from None


def parse(
    define: Callable[[flags.FlagValues], None], argv: Sequence[str], *, doc: str = ""
) -> tuple[flags.FlagValues, list[str]]:
    """Defines a command's flags on a fresh `FlagValues` and parses `argv` (program name first).

    Raises:
      UserError: an unknown or malformed flag, a missing required one, or a config file (an
        ml_collections config flag) that does not exist, does not parse or rejects its argument.
    """
    values = flags.FlagValues()
    define(values)
    if asks_for_help(argv[1:]):
        print((doc.strip() + "\n\n" if doc else "") + values.get_help(include_special_flags=False))
        sys.exit(0)
    try:
        rest = values(list(argv))
    except flags.Error as e:
        raise UserError(_flag_error(e)) from None
    except SyntaxError as e:  # a config file's: its module is imported while --config parses
        raise UserError(_syntax_error(e, argv[1:])) from None
    except OSError as e:  # a config file that did not load, met by a --config.x override
        missing = _missing_config_file(values, argv[1:])
        raise UserError(missing or f"--config: {one_line(e)}") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # A flag parser that rejects a value with its own exception (ml_collections' config
        # overrides: a misspelled --config.x.y or a value of the wrong type).
        raise UserError(f"bad flag: {one_line(e)}; see --help") from None
    missing = _missing_config_file(values, argv[1:])  # ml_collections reports it on first use
    if missing:
        raise UserError(missing)
    return values, rest[1:]


def one_line(error: BaseException | str) -> str:
    """A multi-line message (a wrapped traceback, say) as one line: its first and last lines."""
    text = str(error)
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a repr'd message (KeyError)
        text = text[1:-1].replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def run(
    doc: str,
    define: Callable[[flags.FlagValues], None],
    body: Callable[[flags.FlagValues, list[str]], Any],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    interrupted: Callable[[flags.FlagValues], str] | None = None,
) -> Any:
    """Parses the command line and runs `body(flag_values, positional_args)`.

    Args:
      doc: the command's docstring, shown by `--help`.
      define: defines the command's flags on the `FlagValues` it is given.
      body: the command's work.
      argv: the arguments without the program name; None reads `sys.argv`.
      prog: the program name in messages (default: `sys.argv[0]`).
      interrupted: after Ctrl-C, what is kept and how to go on, from the parsed flags (default:
        `INTERRUPTED`).

    Returns:
      What `body` returns. A `UserError`, a flag error or an `OSError` of the machine exits with
      one `error:` line and status 2; Ctrl-C with one `interrupted:` line and status 130.
    """
    quiet_libraries()
    full = list(sys.argv) if argv is None else [prog or sys.argv[0], *argv]
    values = None
    aftermath = Aftermath()
    try:
        values, rest = parse(define, full, doc=doc)
        with aftermath:
            return body(values, rest)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        _join_background_threads()
        message = interrupted(values) if interrupted and values is not None else INTERRUPTED
        print(f"interrupted: {message}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        message = machine_error(e, full[1:])
        if message is None:
            raise  # a bug: its traceback is what a report needs
    aftermath.drop()  # out of the except block: the error's frames (and its tasks) are free now
    fail(message)


def _join_background_threads() -> None:
    """Waits for the threads that Python would wait for at exit (a checkpoint write in flight).

    Python joins them only after it has shut down the executors they may still need (orbax's
    writers then fail with a traceback); here they end while everything still runs. A second
    Ctrl-C stops the wait.
    """
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    except KeyboardInterrupt:
        pass


# --- config files (ml_collections config flags) ----------------------------------------------


def _flag_error(error: flags.Error) -> str:
    """A flag error's line; a `UserError` raised while a flag parsed (a config file's, which
    ml_collections and absl wrap with its traceback) keeps its own message."""
    user_errors = [e for e in chain(error) if isinstance(e, UserError)]
    match = re.match(r"flag --([^=]+)=(.*?): ", str(error))
    if user_errors and match:
        return f"--{match.group(1)}: {_file_part(match.group(2))}: {_first_line(user_errors[-1])}"
    return f"{one_line(error)}; see --help"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _syntax_error(error: SyntaxError, args: Sequence[str]) -> str:
    where = f"{error.filename} line {error.lineno}" if error.lineno else f"{error.filename}"
    file = error.filename or ""
    named = [n for n, v in flag_pairs(args) if file and same(_file_part(v), file)]
    flag = f"--{named[0]}: " if named else ""
    return f"{flag}{where}: {error.msg}; fix the file's Python syntax"


def _missing_config_file(values: flags.FlagValues, args: Sequence[str]) -> str | None:
    """The line for a config flag whose file does not exist (or is a directory), else None."""
    if "ml_collections.config_flags" not in sys.modules:
        return None  # no command without it defines a config flag (and --help stays quick)
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    for name in values:
        if not isinstance(values[name].parser, ConfigFileFlagParser):
            continue
        given = [value for flag, value in flag_pairs(args) if flag == name and value]
        path = _file_part(given[-1]) if given else None
        if path is not None and not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "does not exist"
            return f"--{name}: {path} {what}; give the path of a config file (.py)"
    return None


def _file_part(config_argument: str) -> str:
    """`configs/vtab.py:task=dtd` -> `configs/vtab.py`."""
    return config_argument.split(":", 1)[0]
