"""How far each dataset lies from the pretraining distribution: FID against reference statistics.

The study places every task by the Fréchet distance between its images and ImageNet's in the FID
Inception feature space. The reference is either a statistics `.npz` (`mu`, `sigma`; pytorch-fid's
and TTUR's published files load too) or a dataset the data layer reads, e.g. a local ImageNet copy
`tfds:imagenet2012` (its `validation` split by default), or `procedural:pretrain` offline.

Each dataset's statistics are cached as an `.npz` keyed by dataset, split, feature space and image
count (`statistics_cache_path`), so a task is read and embedded once per feature space:

    from vpt_jax.analysis.fid import distance, extractors, table
    from vpt_jax.data import parse_dataset_list

    extractor = extractors.inception_extractor("inception_fid.npz")
    reference = distance.reference_statistics("tfds:imagenet2012", extractor, data_dir="~/tfds")
    rows = distance.dataset_distances(parse_dataset_list("vtab"), reference, extractor,
                                      data_dir="~/tfds", cache_dir=distance.default_cache_dir())
    table.write_distances_csv("fid.csv", rows)

With the Inception's 2048-d features, 1000 images (VTAB-1k's train800val200) give a singular
covariance; `frechet_distance`'s default method is exact for it (no `eps` retry; pytorch-fid's
`sqrtm` computation, `method="sqrtm"`, agrees to ~1e-6). Pass a larger split
where the task holds one (`--tasks vtab/cifar100 --split train5000`) for a steadier estimate.

Command line (prints the table and writes it as CSV):

    python -m vpt_jax.analysis.fid.distance --reference imagenet_stats.npz --tasks vtab \\
        --inception inception_fid.npz --data_dir ~/tensorflow_datasets --out fid.csv
    python -m vpt_jax.analysis.fid.distance --reference procedural:pretrain --tasks procedural \\
        --features vit --checkpoint vit_tiny.npz --out fid.csv          # offline
    python -m vpt_jax.analysis.fid.distance --reference imagenet_stats.npz --tasks fgvc \\
        --inception inception_fid.npz --data_dir ~/tensorflow_datasets   # Table 19's FID column

FGVC images enter as the models see them at evaluation: shorter side resized, centre crop.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np
from absl import flags

from vpt_jax import cli
from vpt_jax.analysis.fid.extractors import (
    FeatureExtractor,
    define_extractor_flags,
    extractor_from_flags,
)
from vpt_jax.analysis.fid.frechet import frechet_distance
from vpt_jax.analysis.fid.statistics import (
    FeatureStatistics,
    cached_statistics,
    dataset_statistics,
    load_statistics,
    save_statistics,
)
from vpt_jax.analysis.fid.table import DatasetDistance, format_distances, write_distances_csv
from vpt_jax.data import DatasetName, DataSource, get_dataset, parse_dataset, parse_dataset_list
from vpt_jax.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 10_000  # images per dataset's statistics: the first ones of the split
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "vpt_jax", "statistics")
CACHE_ENV = "VPT_JAX_STATISTICS_CACHE"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80]


def statistics_cache_path(
    cache_dir: str | os.PathLike, dataset: str, split: str, features: str, num_images: int | None
) -> str:
    """The cache file of one dataset split's statistics in one feature space.

    A readable slug of the key plus a hash of the exact key (so `folder:/a/b` and `folder:/a_b`
    never share a file). `num_images` None means the whole split.
    """
    count = "all" if num_images is None else str(num_images)
    key = "\n".join((dataset, split, features, count))
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    name = f"{_slug(dataset)}__{_slug(split)}__{_slug(features)}__n{count}-{digest}.npz"
    return os.path.join(os.path.expanduser(os.fspath(cache_dir)), name)


def default_cache_dir() -> str:
    """`$VPT_JAX_STATISTICS_CACHE`, else `~/.cache/vpt_jax/statistics`."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


@dataclasses.dataclass(frozen=True)
class OpenedSplit:
    """A dataset split opened for reading, with the names that key its statistics."""

    name: DatasetName
    split: str
    source: DataSource

    @property
    def dataset(self) -> str:
        """The dataset's canonical name, e.g. `vtab/cifar100`."""
        return str(self.name)


def open_dataset(
    name: str | DatasetName,
    extractor: FeatureExtractor,
    *,
    split: str | None = None,
    data_dir: str | None = None,
) -> OpenedSplit:
    """Opens a split at the extractor's image size; every check the data layer can make runs here.

    Args:
      name: a data-layer name or a bare VTAB task.
      extractor: the feature space (it sets the image size).
      split: the split; None: the dataset's `default_split`.
      data_dir: TFDS data directory.

    Raises:
      UserError: unknown dataset, task or split, unprepared TFDS data, unreadable image folder.
    """
    name = parse_dataset(name, bare_vtab=True)
    split = split or name.default_split
    source = get_dataset(name, split, data_dir=data_dir, image_size=extractor.image_size)
    return OpenedSplit(name, split, source)


def _first_images(source: DataSource, limit: int | None, batch_size: int) -> Iterator[np.ndarray]:
    left = limit
    for images, _ in source.batches(batch_size):
        if left is not None:
            images = images[:left]
            left -= len(images)
        if len(images):
            yield images
        if left is not None and left <= 0:
            return


def split_statistics(
    opened: OpenedSplit,
    extractor: FeatureExtractor,
    *,
    num_images: int | None = DEFAULT_MAX_IMAGES,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 50,
) -> FeatureStatistics:
    """Feature statistics of (the first `num_images` images of) a split, cached when asked.

    Args:
      opened: a split from `open_dataset`; its dataset and split names key the cache.
      extractor: the feature space.
      num_images: images used, the first of the split's fixed order; None: all of them.
      cache_dir: where statistics files are kept; None computes without caching.
      batch_size: images per extractor call.

    Returns:
      The statistics (loaded from the cache when present: nothing is read or computed then).
    """
    if num_images is not None and num_images < 2:
        raise UserError(f"num_images must be at least 2 for a covariance; got {num_images}")
    source = opened.source
    count = num_images
    if count is not None and source.num_examples is not None:
        count = min(count, source.num_examples)
    elif count is None:
        count = source.num_examples

    def compute() -> FeatureStatistics:
        log.info("computing %s statistics of %s (%s images)", extractor.name, source.name, count)
        batches = _first_images(source, num_images, batch_size)
        return dataset_statistics(extractor.fn, batches, batch_size=batch_size)

    if cache_dir is None:
        return compute()
    path = statistics_cache_path(cache_dir, opened.dataset, opened.split, extractor.name, count)
    return cached_statistics(path, compute)


def reference_statistics(
    reference: str,
    extractor: FeatureExtractor,
    *,
    split: str | None = None,
    num_images: int | None = DEFAULT_MAX_IMAGES,
    data_dir: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 50,
) -> FeatureStatistics:
    """Statistics of the pretraining distribution: a statistics `.npz`, or a dataset to measure.

    Args:
      reference: an `.npz` with `mu` and `sigma` (e.g. ImageNet's), or a dataset name such as
        `tfds:imagenet2012` (default split `validation`) or `procedural:pretrain`.
      extractor: the feature space; a file's statistics must have its width.
      split: the reference dataset's split (default: the dataset's `default_split`).
      num_images: images of the reference dataset used.
      data_dir: TFDS data directory.
      cache_dir: statistics cache; None computes without caching.
      batch_size: images per extractor call.

    Raises:
      UserError: a missing or unreadable file, statistics of another width, or a dataset that
        cannot be opened.
    """
    if reference.endswith(".npz") or os.path.isfile(reference):
        stats = load_statistics(os.path.expanduser(reference))
        if stats.dim != extractor.dim:
            raise UserError(
                f"reference statistics {reference} are {stats.dim}-d but the {extractor.name} "
                f"features are {extractor.dim}-d; use statistics computed with the same --features"
            )
        return stats
    try:
        name = parse_dataset(reference)
    except UserError as e:
        raise UserError(
            f"reference {reference!r} is neither a statistics .npz (mu, sigma) nor a dataset name: {e}"
        ) from None
    opened = open_dataset(name, extractor, split=split, data_dir=data_dir)
    return split_statistics(
        opened, extractor, num_images=num_images, cache_dir=cache_dir, batch_size=batch_size
    )


def dataset_distances(
    datasets: Sequence[str | DatasetName],
    reference: FeatureStatistics,
    extractor: FeatureExtractor,
    *,
    reference_name: str = "reference",
    split: str | None = None,
    num_images: int | None = DEFAULT_MAX_IMAGES,
    data_dir: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 50,
) -> list[DatasetDistance]:
    """The FID of each dataset against the reference statistics.

    Every dataset is opened (and so checked) before the first one is embedded, so a typo or an
    unprepared dataset fails at once, not after hours of feature extraction.

    Args:
      datasets: data-layer names (`vtab/<task>`, `tfds:...`, `folder:...`, `procedural:...`), bare
        VTAB task names, or parsed ones (`vpt_jax.data.parse_dataset_list`).
      reference: the reference statistics in the extractor's feature space.
      extractor: the feature space.
      reference_name: recorded in each row (e.g. the reference file or dataset).
      split: one split for every dataset; None: each dataset's `default_split`.
      num_images: images per dataset (the first of its split); None: all.
      data_dir: TFDS data directory.
      cache_dir: statistics cache; None computes without caching.
      batch_size: images per extractor call.

    Returns:
      One row per dataset, in the given order.
    """
    opened = [open_dataset(n, extractor, split=split, data_dir=data_dir) for n in datasets]
    rows = []
    for one in opened:
        stats = split_statistics(
            one, extractor, num_images=num_images, cache_dir=cache_dir, batch_size=batch_size
        )
        rows.append(
            DatasetDistance(
                dataset=one.dataset,
                split=one.split,
                group=one.name.group,
                disparity=one.name.disparity or "",
                fid=frechet_distance(stats, reference),
                num_images=int(stats.num_samples or 0),
                features=extractor.name,
                reference=reference_name,
            )
        )
    return rows


def define_data_flags(values: flags.FlagValues) -> None:
    """The feature space, reference, data and cache flags shared by the distance and advisor."""
    define_extractor_flags(values)
    define = functools.partial(flags.DEFINE_string, flag_values=values)
    define(
        "reference",
        None,
        "pretraining distribution: statistics .npz (mu, sigma) or a dataset name "
        "(tfds:imagenet2012, procedural:pretrain)",
        required=True,
    )
    define(
        "reference_split",
        None,
        "split of a reference dataset (default: validation for imagenet2012)",
    )
    define("data_dir", None, "TFDS data directory (default: TFDS's)")
    flags.DEFINE_integer(
        "num_images",
        DEFAULT_MAX_IMAGES,
        "images per dataset, the first of its split (0 = all)",
        flag_values=values,
    )
    flags.DEFINE_integer("batch_size", 50, "images per extractor call", flag_values=values)
    define("cache_dir", None, f"statistics cache (default ${CACHE_ENV} or {DEFAULT_CACHE_DIR})")


def _define(values: flags.FlagValues) -> None:
    define_data_flags(values)
    define = functools.partial(flags.DEFINE_string, flag_values=values)
    define("tasks", "vtab", "vtab, fgvc, procedural, or comma-separated dataset names")
    define("split", None, "split of every task (default: train800val200 for VTAB)")
    define("out", None, "CSV file to write the table to")
    define("save_reference", None, "also save the reference statistics to this .npz")


def _distances(values: flags.FlagValues, rest: list[str]) -> None:
    cli.no_arguments(rest)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    datasets = parse_dataset_list(values.tasks)
    extractor = extractor_from_flags(values)
    data = dict(data_dir=values.data_dir)
    common = dict(
        num_images=values.num_images or None,
        cache_dir=values.cache_dir or default_cache_dir(),
        batch_size=values.batch_size,
        **data,
    )
    for name in datasets:  # fail on any unopenable task before the reference is computed
        open_dataset(name, extractor, split=values.split, **data)
    reference = reference_statistics(
        values.reference, extractor, split=values.reference_split, **common
    )
    if values.save_reference:
        save_statistics(values.save_reference, reference)
    rows = dataset_distances(
        datasets,
        reference,
        extractor,
        reference_name=values.reference,
        split=values.split,
        **common,
    )
    if values.out:
        write_distances_csv(values.out, rows)
    print(f"FID to {values.reference} in the {extractor.name} feature space")
    print(format_distances(rows))
    if values.out:
        print(f"wrote {values.out}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: the FID of each task against the reference, printed and written as CSV.

    Args:
      argv: the flags, without the program name; None reads `sys.argv`.
    """
    cli.run(__doc__, _define, _distances, argv)


if __name__ == "__main__":
    from vpt_jax.runtime import use_fast_allocator

    use_fast_allocator()  # before JAX starts: see vpt_jax/runtime.py
    main()
