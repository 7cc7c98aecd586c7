"""One line for an error the machine caused (a full disk, a read-only or forbidden directory, a file
where a directory should be), found even where a library wrapped it, and the library noise around it
held back (`Aftermath`). Used by `vpt_jax.cli.run`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_CANNOT_WRITE = {errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied"}
_CANNOT_WRITE[errno.EPERM] = "operation not permitted"
_NOT_A_DIRECTORY = (errno.ENOTDIR, errno.EEXIST)
_HANDLED = (*_NO_SPACE, *_CANNOT_WRITE, *_NOT_A_DIRECTORY)
# tensorstore (orbax's storage) reports an OS error as a ValueError whose text ends in
# `Failed writing: "<path>": ...: No space left on device [os_error_code='28']`.
_TENSORSTORE_ERRNO = re.compile(r"\[os_error_code='(\d+)'\]")
_TENSORSTORE_PATH = re.compile(r'"(/[^"]+)"')


def machine_error(error: BaseException, args: Sequence[str] = ()) -> str | None:
    """One line for an `OSError` the machine caused, or None (the error is something else).

    The `OSError` is looked for in `error`'s chain (`__cause__` / `__context__`, the members of an
    exception group), where libraries wrap it, and in tensorstore's error text.

    Args:
      error: the exception that ended the command.
      args: the command's arguments, to name the flag whose path failed (`--workdir`).
    """
    found = _os_error(error)
    if found is None:
        return None
    code, path = found
    flag = _flag_holding(args, path) if path else _flag_named(args, "workdir")
    if code in _NOT_A_DIRECTORY:
        return _file_in_the_way(path, flag)
    target = path or (f"to {flag[0]} {flag[1]}" if flag else "")
    if code in _NO_SPACE:
        writing = f" writing {target}" if target else ""
        elsewhere = f"another {flag[0]}" if flag else "another location"
        return f"{_NO_SPACE[code]}{writing}; free space or use {elsewhere}"
    if path and os.path.exists(path) and not os.access(path, os.R_OK):
        return f"cannot read {path}: {_CANNOT_WRITE[code]}; fix its permissions"
    writable = f"a writable {flag[0]}" if flag else "a writable location"
    return f"cannot write {target or 'a file'}: {_CANNOT_WRITE[code]}; use {writable}"


def _os_error(error: BaseException) -> tuple[int, str | None] | None:
    for e in chain(error):
        if isinstance(e, OSError) and e.errno in _HANDLED:
            path = e.filename if isinstance(e.filename, str) else None
            if e.errno in _NOT_A_DIRECTORY and (path is None or _file_ancestor(path) is None):
                continue  # not a file standing in a directory's place: a bug, keep its traceback
            return e.errno, _shown_path(path)
        match = _TENSORSTORE_ERRNO.search(str(e))
        if match and (int(match.group(1)) in _NO_SPACE or int(match.group(1)) in _CANNOT_WRITE):
            paths = _TENSORSTORE_PATH.findall(str(e))
            return int(match.group(1)), _shown_path(paths[-1] if paths else None)
    return None


def chain(error: BaseException) -> Iterator[BaseException]:
    todo, seen = [error], set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def _shown_path(path: str | None) -> str | None:
    """The path to name: a temporary file's directory, an orbax checkpoint without its parts."""
    if path is None:
        return None
    if os.path.basename(path).startswith(".tmp-"):  # vpt_jax.atomic's temporary file
        return os.path.dirname(path)
    return re.sub(r"\.orbax-checkpoint-tmp.*$", "", path)  # the checkpoint being written


def _file_ancestor(path: str) -> str | None:
    """`path` or its nearest existing ancestor, if that is a file (not a directory)."""
    current = os.path.abspath(path)
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    return current if os.path.exists(current) and not os.path.isdir(current) else None


def _file_in_the_way(path: str | None, flag: tuple[str, str] | None) -> str:
    file = _file_ancestor(path or "") or path
    if flag and same(file, flag[1]):
        return f"{flag[0]} {flag[1]} is a file; give a directory"
    if flag and _inside(flag[1], file):
        return f"{flag[0]} {flag[1]}: {file} is a file, not a directory; give another {flag[0]}"
    hint = f" (in {flag[0]} {flag[1]})" if flag else ""
    return f"{file} is a file where a directory is needed{hint}; move the file away"


def _flag_holding(args: Sequence[str], path: str) -> tuple[str, str] | None:
    """The (`--name`, value) of the flag whose path is `path`, contains it or lies inside it."""
    best = None
    for name, value in flag_pairs(args):
        related = value and (_inside(path, value) or _inside(value, path))
        if related and (best is None or len(value) > len(best[1])):
            best = (f"--{name}", value)
    return best


def _flag_named(args: Sequence[str], name: str) -> tuple[str, str] | None:
    values = [value for flag, value in flag_pairs(args) if flag == name and value]
    return (f"--{name}", values[-1]) if values else None


def flag_pairs(args: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(name, value) of every `--name=value` and `--name value` in `args`."""
    for i, arg in enumerate(args):
        if not arg.startswith("--") or arg == "--":
            continue
        name, equals, value = arg[2:].partition("=")
        if not equals and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value = args[i + 1]
        yield name, value


def _inside(path: str, directory: str) -> bool:
    path, directory = _real(path), _real(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def same(a: str, b: str) -> bool:
    return _real(a) == _real(b)


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


class Aftermath(logging.Filter):
    """Holds back what a library prints about an error of the machine before it raises it.

    On a full disk orbax logs the error from each of its writer threads with a traceback (absl),
    tensorstore's pending writes call back into orbax's closed event loop (unraisable
    `RuntimeError: Event loop is closed`), and asyncio logs each failed write task it collects
    ("Task exception was never retrieved"): 20-300 lines, before and after the error reaches the
    command. While the command runs they are held; if it ends in the machine error's one line they
    are dropped (`drop`), else they are shown when it ends, as they would have been. (It also
    sends again a Ctrl-C that Python dropped in a callback, see `_unraisable`.)
    """

    LOGGERS = ("absl", "asyncio")

    def __init__(self):
        super().__init__()
        self.held: list[Callable[[], None]] = []
        self.holding = False
        self._unraisablehook = sys.unraisablehook

    def __enter__(self) -> None:
        self.holding = True
        self._unraisablehook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

    def __exit__(self, kind, error, traceback) -> None:
        if not (isinstance(error, Exception) and machine_error(error) is not None):
            self._stop()
            for show in self.held:
                show()
            self.held.clear()
        # else: still holding, until `drop`

    def drop(self) -> None:
        """Drops what was held, and what the error's remains (its tasks, collected now) log."""
        gc.collect()
        self._stop()
        self.held.clear()

    def _stop(self) -> None:
        if self.holding:
            self.holding = False
            sys.unraisablehook = self._unraisablehook
            for name in self.LOGGERS:
                logging.getLogger(name).removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or machine_error(error) is None:
            return True
        self.held.append(lambda: logging.getLogger(record.name).handle(record))
        return False

    def _unraisable(self, unraisable: Any) -> None:
        error = unraisable.exc_value
        if isinstance(error, KeyboardInterrupt):
            # Ctrl-C landed in a callback (JAX's garbage-collection hook), where Python drops the
            # exception and the command would go on: send it again, a moment after this hook.
            again = threading.Timer(0.05, signal.raise_signal, (signal.SIGINT,))
            again.daemon = True
            again.start()
        elif isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            self.held.append(lambda hook=self._unraisablehook: hook(unraisable))
        else:
            self._unraisablehook(unraisable)
