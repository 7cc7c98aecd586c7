"""Downloads and prepares TFDS datasets, at the versions and configs the VTAB-1k table pins.

    python -m vpt_jax.data.prepare vtab --data_dir ~/tensorflow_datasets        # all 19 tasks
    python -m vpt_jax.data.prepare vtab/kitti_distance vtab/dtd --data_dir DIR
    python -m vpt_jax.data.prepare vtab/resisc45 --data_dir DIR --manual_dir DIR_WITH_THE_RAR
    python -m vpt_jax.data.prepare tfds:beans --data_dir DIR
    python -m vpt_jax.data.prepare fgvc/cub fgvc/dogs fgvc/flowers --data_dir DIR

This does what `tfds build NAME/CONFIG:VERSION --data_dir DIR` does, without the `tfds` command
line tool (which, in tensorflow-datasets 4.9, needs apache-beam installed just to start). Tasks that
share a TFDS dataset (clevr, dsprites, smallnorb) prepare it once.

`fgvc/<name>` (CUB, Stanford Dogs, Oxford Flowers: the FGVC datasets TFDS holds) prepares the TFDS
dataset, then writes its images into the official FGVC layout under DIR (`vpt_jax.data.fgvc`),
byte for byte as TFDS stored them (the original JPEG files). The split files are not in TFDS:
download them from the official release into the dataset's folder.
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
    refused = UserError(
        f"cannot prepare {name!r}; name vtab, vtab/<task>, fgvc/<name> or tfds:<name>"
    )
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


def prepare_fgvc(name: str, data_dir: str | None, manual_dir: str | None = None) -> str:
    """Writes an FGVC dataset's images from TFDS into the official layout (existing files kept).

    Args:
        name: `cub`, `dogs` or `flowers`.
        data_dir: The data directory (TFDS datasets and FGVC folders); None uses TFDS's default.
        manual_dir: As for `prepare`.

    Returns:
        The image folder written.

    Raises:
        UserError: A dataset TFDS does not hold in the official numbering (NABirds, Cars).
    """
    import tensorflow_datasets as tfds

    from vpt_jax import atomic
    from vpt_jax.data.fgvc import dataset_root, tfds_key
    from vpt_jax.data.tfds_reader import make_builder

    task = _check_fgvc_in_tfds(name, data_dir)
    root = dataset_root(task, data_dir)
    prepare(task.tfds, data_dir, manual_dir)
    builder = make_builder(task.tfds, data_dir)
    image_root = os.path.join(root, task.image_dir)
    written = 0
    for split in task.tfds_splits:
        examples = builder.as_dataset(
            split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
        )
        for example in tfds.as_numpy(examples):
            path = os.path.join(image_root, tfds_key(task, example))
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                atomic.write_bytes(path, bytes(example["image"]))
                written += 1
    print(f"fgvc/{task.name}: {written} images written to {image_root}", flush=True)
    return image_root


def _check_fgvc_in_tfds(name: str, data_dir: str | None):
    from vpt_jax.data.fgvc import NOT_IN_TFDS, dataset_root, get_fgvc_task

    task = get_fgvc_task(name)
    if not task.tfds:
        raise UserError(
            f"cannot prepare fgvc/{task.name} from TFDS: {NOT_IN_TFDS[task.name]}; download its "
            f"images from {task.source} into {dataset_root(task, data_dir)}"
        )
    return task


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "data_dir", None, "TFDS data directory (default: TFDS's)", flag_values=values
    )
    flags.DEFINE_string(
        "manual_dir", None, "raw files of manual-download datasets", flag_values=values
    )


def _prepare_all(values: flags.FlagValues, names: list[str]) -> None:
    if not names:
        raise UserError(
            "name what to prepare: vtab, vtab/<task>, fgvc/<name> or tfds:<name>[/config][:version]"
        )
    data_dir = os.path.expanduser(values.data_dir) if values.data_dir else None
    fgvc = [parse_dataset(n).value for n in names if n.startswith("fgvc/")]
    for name in fgvc:  # refused before any download
        _check_fgvc_in_tfds(name, data_dir)
    specs = builder_specs([n for n in names if not n.startswith("fgvc/")])
    for spec in specs:
        print(f"{spec}: preparing", flush=True)
        print(f"{spec}: ready in {prepare(spec, data_dir, values.manual_dir)}", flush=True)
    for name in fgvc:
        prepare_fgvc(name, data_dir, values.manual_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: prepares each named dataset and prints where it went.

    Args:
        argv: Arguments without the program name; None reads `sys.argv`.
    """
    cli.run(__doc__, _define, _prepare_all, argv, prog="python -m vpt_jax.data.prepare")


if __name__ == "__main__":
    main()
