"""The command line: `python -m vpt_jax.main --config configs/<file>.py[:args] --workdir DIR`.

The config's `kind` picks what runs: `run` (one training run), `study` (a protocol of runs) or
`paper` (every part of the paper; `--dry_run` prints its plan and stops).
Overrides follow ml_collections: `--config.optimizer.lr=0.5`. A mistake the user can fix ends in
one `error: ...` line on stderr and exit status 2, before any long work. Ctrl-C stops with status
130; the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from vpt_jax import cli
from vpt_jax.errors import UserError
from vpt_jax.runtime import allocator_description, use_fast_allocator


def _define(values: flags.FlagValues, argv: list[str] | None = None) -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file, optionally with an argument: configs/vtab.py:task=dtd",
        flag_values=values,
        lock_config=True,
        sys_argv=argv,  # where its --config.x overrides are (None: sys.argv)
    )
    flags.DEFINE_string(
        "workdir", None, "Directory for this run's (or study's) records.", flag_values=values
    )
    flags.DEFINE_bool(
        "dry_run",
        False,
        "Paper configs: print the plan (runs, images, device-hours, disk, missing inputs) and stop.",
        flag_values=values,
    )


def setup_logging() -> None:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("vpt_jax")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _main(values: flags.FlagValues, rest: list[str]) -> None:
    cli.no_arguments(rest)
    config, workdir = values.config, values.workdir
    try:
        kind = config.kind if config is not None else None
    except OSError as e:  # the config file did not load (ml_collections reports it on first use)
        cause = e.__cause__ or e  # "Configuration is not available because of ...": the reason
        raise UserError(f"--config: {cli.one_line(cause)}") from None
    if config is None or not workdir:
        raise UserError(
            "both --config and --workdir are required, e.g. --config configs/demo.py --workdir runs/demo"
        )
    if values.dry_run and kind != "paper":
        raise UserError(
            "--dry_run plans paper configs (configs/study/paper.py, which can hold one part: "
            ":parts=tables1_2); this config's kind is " + repr(kind)
        )
    setup_logging()
    logging.getLogger("vpt_jax").info("allocator: %s", allocator_description())
    _hide_accelerators_from_tensorflow()
    _enable_compilation_cache()
    if config.get("distributed") and config.distributed.coordinator_address:
        import jax

        jax.distributed.initialize(
            config.distributed.coordinator_address,
            config.distributed.num_processes,
            config.distributed.process_id,
        )
    if kind == "run":
        from vpt_jax.train.run import train_and_evaluate

        train_and_evaluate(config, workdir)
    elif kind == "study":
        from vpt_jax.study.runner import run_study

        run_study(config, workdir)
    elif kind == "paper":
        from vpt_jax.paper.runner import run_paper

        run_paper(config, workdir, dry_run=values.dry_run)
    else:
        raise UserError(f"config kind {kind!r} is not run, study or paper")


def _enable_compilation_cache() -> None:
    # Runs of a study share most executables (seeds, evaluation); XLA's disk cache skips recompiles.
    import jax

    path = os.environ.get("VPT_JAX_COMPILATION_CACHE", os.path.expanduser("~/.cache/vpt_jax/xla"))
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _hide_accelerators_from_tensorflow() -> None:
    # TensorFlow only reads data; JAX owns the accelerators' memory.
    import vpt_jax.data.host_tf  # noqa: F401 - importing it hides them


def _interrupted(values: flags.FlagValues) -> str:
    if not values.workdir:
        return cli.INTERRUPTED
    return (
        f"--workdir {values.workdir} keeps every checkpoint and record written so far; "
        "run the same command to resume from the last checkpoint"
    )


def main(argv: list[str] | None = None) -> None:
    """Runs the command line (`argv` without the program name; None reads `sys.argv`)."""
    prog = "python -m vpt_jax.main"
    define = functools.partial(_define, argv=None if argv is None else [prog, *argv])
    cli.run(__doc__, define, _main, argv, prog=prog, interrupted=_interrupted)


def run() -> None:
    """Console entry point (`vpt-jax`)."""
    use_fast_allocator()  # re-executes under the allocator settings XLA:CPU needs (runtime.py)
    main()


if __name__ == "__main__":
    run()
