"""One way to write a command: absl flags on a command's own `FlagValues`, and one error path.

Every `python -m vpt_jax...` command is

    def define(flags_: flags.FlagValues) -> None:        # its flags, on its own FlagValues
        flags.DEFINE_string("workdir", None, "the study's directory", flag_values=flags_)

    def main(argv=None):
        cli.run(__doc__, define, _run, argv)               # _run(flags_, positional) does the work

so commands can be imported side by side (no global flag registry to collide in) and called from
tests with an argument list. A user mistake (an unknown or malformed flag, a missing required one,
or a `UserError` from the work) ends in one `error: ...` line on stderr and exit status 2; `--help`
prints the command's docstring and flags and exits 0.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from vpt_jax.errors import UserError

EXIT_USER_ERROR = 2


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


def parse(
    define: Callable[[flags.FlagValues], None], argv: Sequence[str], *, doc: str = ""
) -> tuple[flags.FlagValues, list[str]]:
    """Defines a command's flags on a fresh `FlagValues` and parses `argv` (program name first).

    Raises:
      UserError: an unknown or malformed flag, or a missing required one.
    """
    values = flags.FlagValues()
    define(values)
    if any(arg in ("-h", "--help", "-?", "--helpfull") for arg in argv[1:]):
        print((doc.strip() + "\n\n" if doc else "") + values.get_help(include_special_flags=False))
        sys.exit(0)
    try:
        rest = values(list(argv))
    except flags.Error as e:
        raise UserError(f"{one_line(e)}; see --help") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # A flag parser that rejects a value with its own exception (ml_collections' config
        # overrides: a misspelled --config.x.y or a value of the wrong type).
        raise UserError(f"bad flag: {one_line(e)}; see --help") from None
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
) -> Any:
    """Parses the command line and runs `body(flag_values, positional_args)`.

    Args:
      doc: the command's docstring, shown by `--help`.
      define: defines the command's flags on the `FlagValues` it is given.
      body: the command's work.
      argv: the arguments without the program name; None reads `sys.argv`.
      prog: the program name in messages (default: `sys.argv[0]`).

    Returns:
      What `body` returns. A `UserError` (or a flag error) exits with one line and status 2.
    """
    full = list(sys.argv) if argv is None else [prog or sys.argv[0], *argv]
    try:
        values, rest = parse(define, full, doc=doc)
        return body(values, rest)
    except UserError as e:
        fail(str(e))
