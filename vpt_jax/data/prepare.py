"""Downloads and prepares TFDS datasets, at the versions and configs the VTAB-1k table pins.

    python -m vpt_jax.data.prepare vtab --data_dir ~/tensorflow_datasets        # all 19 tasks
    python -m vpt_jax.data.prepare vtab/kitti_distance vtab/dtd --data_dir DIR
    python -m vpt_jax.data.prepare vtab/resisc45 --data_dir DIR --manual_dir DIR_WITH_THE_RAR
    python -m vpt_jax.data.prepare tfds:beans --data_dir DIR

This does what `tfds build NAME/CONFIG:VERSION --data_dir DIR` does, without the `tfds` command
line tool (which, in tensorflow-datasets 4.9, needs apache-beam installed just to start). Tasks that
share a TFDS dataset (clevr, dsprites, smallnorb) prepare it once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import flags

from vpt_jax import cli
from vpt_jax.data.names import parse_dataset
from vpt_jax.data.vtab import VTAB_TASKS
from vpt_jax.errors import UserError


def builder_specs(names: Sequence[str]) -> list[str]:
    """The TFDS `name/config:version` strings behind dataset names, each once, in order.

    Args:
        names: `vtab` (all 19 tasks), `vtab/<task>` or `tfds:<name>[/<config>][:<version>]`.

    Returns:
        The TFDS specs.

    Raises:
        UserError: A name of another kind or an unknown task.
    """
    specs: list[str] = []
    for name in names:
        if name == "vtab":
            found = [task.tfds_name for task in VTAB_TASKS.values()]
        else:
            dataset = _preparable(name)
            found = [dataset.vtab_task.tfds_name if dataset.vtab_task else dataset.value]
        specs.extend(spec for spec in found if spec not in specs)
    return specs


def _preparable(name: str):
    refused = UserError(f"cannot prepare {name!r}; name vtab, vtab/<task> or tfds:<name>")
    try:
        dataset = parse_dataset(name)
    except UserError as e:
        if "unknown dataset" in str(e):
            raise refused from None
        raise
    if dataset.kind not in ("vtab", "tfds"):
        raise refused
    return dataset


def prepare(spec: str, data_dir: str | None, manual_dir: str | None = None) -> str:
    """Downloads and prepares one TFDS dataset (a no-op when it is already prepared).

    Args:
        spec: TFDS `name[/config][:version]`.
        data_dir: Where the prepared data goes; None uses TFDS's default.
        manual_dir: Where manually downloaded raw files are (resisc45, diabetic retinopathy).

    Returns:
        The directory holding the prepared dataset.
    """
    import tensorflow_datasets as tfds

    from vpt_jax.data.tfds_reader import make_builder, not_prepared_message

    builder = make_builder(spec, data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    try:
        builder.download_and_prepare(download_config=config)
    except ModuleNotFoundError as error:
        if error.name != "importlib_resources":
            raise
        # tensorflow-datasets 4.9 uses it on every Python but declares it only below 3.9
        # (tensorflow/datasets#11212).
        raise UserError(
            f"preparing {spec} needs the importlib_resources package; "
            "pip install importlib_resources"
        ) from None
    except AssertionError:  # TFDS's way of saying the manual download is missing
        if not getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
            raise
        where = manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual")
        raise UserError(f"{not_prepared_message(builder)} (no raw files in {where})") from None
    return str(builder.data_dir)


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "data_dir", None, "TFDS data directory (default: TFDS's)", flag_values=values
    )
    flags.DEFINE_string(
        "manual_dir", None, "raw files of manual-download datasets", flag_values=values
    )


def _prepare_all(values: flags.FlagValues, names: list[str]) -> None:
    if not names:
        raise UserError("name what to prepare: vtab, vtab/<task> or tfds:<name>[/config][:version]")
    specs = builder_specs(names)
    data_dir = os.path.expanduser(values.data_dir) if values.data_dir else None
    for spec in specs:
        print(f"{spec}: preparing", flush=True)
        print(f"{spec}: ready in {prepare(spec, data_dir, values.manual_dir)}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: prepares each named dataset and prints where it went.

    Args:
        argv: Arguments without the program name; None reads `sys.argv`.
    """
    cli.run(__doc__, _define, _prepare_all, argv, prog="python -m vpt_jax.data.prepare")


if __name__ == "__main__":
    main()
