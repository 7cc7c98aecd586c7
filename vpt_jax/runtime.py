"""Process-level settings that decide CPU speed: the heap allocator the command line runs under.

XLA:CPU allocates each step's large temporary buffers (about 1 GB for a ViT-S/16 training step at
batch 8) with `malloc` and frees them at the end of the step. Under glibc's defaults those blocks
are served by fresh `mmap`s and handed back after the step, so every step page-faults and zeroes
them again: about 290k minor faults and 0.6 s of kernel time per ViT-S/16 step on 2 cores, a 25%
slower step than with the settings below (see README, "Benchmarks"). Three glibc tunables keep one
heap that is never returned to the system, so after the first step no page is faulted twice:

* `glibc.malloc.arena_max=1`: one arena, in the main heap (XLA's worker threads would otherwise
  get per-thread arenas, whose large blocks are always `mmap`ed);
* `glibc.malloc.mmap_max=0`: large blocks come from the heap, not from `mmap`;
* `glibc.malloc.trim_threshold=64 GiB`: freed memory stays in the process for the next step.

The cost is memory: the process keeps its peak heap. glibc reads tunables only at process start
(`mallopt` from inside Python does not reach XLA's allocations), so the command-line entry points
re-execute themselves with them before any work (not for `--help`, which does none).
`VPT_JAX_ALLOCATOR=system` turns this off; a preloaded allocator (`LD_PRELOAD` with tcmalloc or
jemalloc) or tunables of the user's own are left as they are.

`quiet_libraries` keeps start-up noise of the libraries off stderr: TensorFlow's C++ log lines and
its oneDNN notice, and JAX's INFO line for each optional backend (TPU, CUDA) it probes and does not
find. Every command calls it first (`vpt_jax.cli.run`), and so does `vpt_jax.data.host_tf` before
TensorFlow is imported.
"""

from __future__ import annotations

import logging
import os
import platform
import sys

# Environment the libraries read once, at import: set where the user has not set it.
LIBRARY_ENVIRONMENT = {
    # TensorFlow's C++ log lines (its CPU-feature notice, device probing); its errors still
    # raise as Python exceptions.
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # TensorFlow only decodes and resizes images here; oneDNN speeds up its convolutions and
    # matmuls, which it never runs. Where oneDNN is on by default (CPUs with AVX-512 and newer),
    # TensorFlow prints a notice about it twice, before its log level applies; off, the host's
    # CPU no longer decides which kernels read the data.
    "TF_ENABLE_ONEDNN_OPTS": "0",
}

HELP_ARGUMENTS = ("-h", "--help", "-?", "--helpfull")

ALLOCATOR_TUNABLES = (
    "glibc.malloc.arena_max=1",
    "glibc.malloc.mmap_max=0",
    "glibc.malloc.trim_threshold=68719476736",
)
ENV_SWITCH = "VPT_JAX_ALLOCATOR"  # "system": keep glibc's defaults
_REEXEC_MARK = "_VPT_JAX_ALLOCATOR_REEXEC"


def allocator_environment(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to re-execute under, or None where the current one should stay.

    None when: not Linux with glibc, `VPT_JAX_ALLOCATOR=system`, an allocator is preloaded, the
    tunables are already set, the user set `glibc.malloc.*` tunables of their own, or this
    process already is the re-executed one.
    """
    env = dict(os.environ if environ is None else environ)
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    if env.get(ENV_SWITCH, "").lower() == "system" or env.get(_REEXEC_MARK):
        return None
    if any(name in env.get("LD_PRELOAD", "") for name in ("tcmalloc", "jemalloc", "mimalloc")):
        return None
    current = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    if any(t.startswith("glibc.malloc.") for t in current):
        return None  # the user's own malloc settings (or ours already): theirs win
    env["GLIBC_TUNABLES"] = ":".join([*current, *ALLOCATOR_TUNABLES])
    env[_REEXEC_MARK] = "1"
    return env


def use_fast_allocator() -> None:
    """Re-executes this command under `ALLOCATOR_TUNABLES` (see the module docstring).

    Call it first thing in a command-line entry point: the process is replaced (same PID, same
    arguments) and starts again; nothing before the call should have had effects.
    """
    env = allocator_environment()
    if env is None or asks_for_help(sys.argv[1:]):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def allocator_description() -> str:
    """One line for logs and benchmark headers: which allocator settings this process runs under."""
    preload = os.environ.get("LD_PRELOAD", "")
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if preload:
        return f"LD_PRELOAD={preload}"
    if all(t in tunables.split(":") for t in ALLOCATOR_TUNABLES):
        return "glibc, vpt_jax tunables"
    return f"glibc, GLIBC_TUNABLES={tunables!r}" if tunables else "glibc defaults"


def quiet_libraries() -> None:
    """Sets `LIBRARY_ENVIRONMENT` (where unset) and hides JAX's backend-probe INFO lines.

    Call it before TensorFlow is imported; calling it again does nothing more.
    """
    for name, value in LIBRARY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    logging.getLogger("jax._src.xla_bridge").addFilter(_hide_backend_probe)


def _hide_backend_probe(record: logging.LogRecord) -> bool:
    # JAX tries every backend it knows and logs, at INFO, each one that is not installed ("Unable
    # to initialize backend 'tpu': ... libtpu.so ...") whenever a command logs at INFO. A missing
    # backend that matters (a visible GPU without CUDA) is a separate WARNING, which stays.
    return not (
        record.levelno < logging.WARNING
        and record.getMessage().startswith("Unable to initialize backend")
    )


def asks_for_help(args: list[str]) -> bool:
    """Whether a command's arguments (without the program name) ask for `--help`."""
    return any(arg in HELP_ARGUMENTS for arg in args)
