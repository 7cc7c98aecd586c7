"""Stand-ins for the VTAB TFDS datasets: the real builders' features, tiny generated examples.

Each stand-in subclasses the TFDS builder a VTAB-1k task names (`tfds.builder_cls`), keeps its
name, config, version and features, and replaces only the example generator, so
`download_and_prepare` writes real TFRecord shards and a real `dataset_info.json` where the real
dataset would live (`<data_dir>/eurosat/rgb/2.0.0/`). The reader then opens them through the real
builder, exactly as it opens the full datasets.

Every example carries its id twice: in an extra int feature (`ID_KEY`, which the real builder does
not declare and so ignores) and as a barcode in its image, which survives the reader's grayscale
tiling, binary scaling and resize to `BARCODE_SIZE`, so ids can be read back from `get_dataset`'s
output. Ids are unique across a dataset's splits. Examples are written in id order
(`disable_shuffling`), so position `k` of a split holds its `k`-th id; real builders shuffle at
write time, which changes which record sits at a position but not which positions a split string
names. Examples no test should read may share one filler image (`FILLER_ID`), which keeps the
datasets that need VTAB's full-size boundaries (eurosat, smallnorb) quick to write.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from vpt_jax.data.host_tf import tf
from vpt_jax.data.tfds_reader import TfdsName
from vpt_jax.data.vtab import get_task

ID_KEY = "example_id"
FILLER_ID = 0xFFFF  # the id a filler image reads as; no example has it
BARCODE_BITS = 16  # a 4x4 grid of black/white blocks, least significant bit first
BARCODE_SIZE = 8  # model resolution to read barcodes at: 2x2 pixels per block
VARIABLE_IMAGE_SIZE = 8  # side of the images of features without a fixed shape
NUM_SHARDS = 3  # so that slices start, end and run across shard boundaries


def barcode(example_id: int, shape: tuple[int, int, int], on: int = 255) -> np.ndarray:
    """The image of an id: 4x4 blocks, block `k` (row-major) is `on` where bit `k` is set.

    Args:
        example_id: 0 to 0xFFFF.
        shape: `(height, width, channels)`, height and width multiples of 4.
        on: Value of a set bit (1 for dsprites' binary images).

    Returns:
        uint8 image of `shape`.
    """
    height, width, channels = shape
    bits = (example_id >> np.arange(BARCODE_BITS)) & 1
    grid = bits.astype(np.uint8).reshape(4, 4) * on
    image = np.kron(grid, np.ones((height // 4, width // 4), np.uint8))
    return np.repeat(image[:, :, None], channels, axis=2)


def read_barcodes(images: np.ndarray) -> list[int]:
    """The ids in images the reader produced at `BARCODE_SIZE`, checking that they are intact.

    Args:
        images: uint8 `(N, BARCODE_SIZE, BARCODE_SIZE, 3)`.

    Returns:
        One id per image.

    Raises:
        AssertionError: An image is not a clean barcode (values other than 0 and 255, blocks that
            are not uniform, channels that differ): the conversion blended or dropped pixels.
    """
    assert images.shape[1:] == (BARCODE_SIZE, BARCODE_SIZE, 3), images.shape
    assert np.isin(images, (0, 255)).all(), "barcode pixels are not all 0 or 255"
    assert (images == images[..., :1]).all(), "barcode channels differ"
    blocks = images[:, ::2, ::2, 0]
    assert (np.kron(blocks, np.ones((2, 2), np.uint8)) == images[..., 0]).all(), "blocks blended"
    bits = (blocks > 127).reshape(len(images), BARCODE_BITS).astype(np.int64)
    return (bits @ (1 << np.arange(BARCODE_BITS))).tolist()


@functools.cache
def _filler_png(shape: tuple[int, int, int], on: int) -> bytes:
    return tf.io.encode_png(barcode(FILLER_ID, shape, on)).numpy()


class _StandIn:
    """Mixin over a real TFDS builder: its features plus `ID_KEY`, examples from `_features`."""

    TASK: ClassVar[str]  # the VTAB-1k task whose table entry names the builder
    SPLITS: ClassVar[Mapping[str, range]]  # split name: the ids of its examples, in order
    FILLER: ClassVar[Mapping[str, tuple[range, ...]]] = {}  # ids whose images are the filler
    BINARY: ClassVar[bool] = False  # images hold 0/1 values

    @classmethod
    def create(cls, data_dir: str) -> Any:
        """The stand-in at the name, config and version the task table pins."""
        spec = TfdsName.parse(get_task(cls.TASK).tfds_name)
        return cls(config=spec.config, version=spec.version, data_dir=data_dir)

    def _info(self) -> tfds.core.DatasetInfo:
        features = dict(super()._info().features.items())
        features[ID_KEY] = tfds.features.Scalar(np.int64)
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(features), disable_shuffling=True
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        del dl_manager
        return {split: self._stand_in_examples(split, ids) for split, ids in self.SPLITS.items()}

    def _stand_in_examples(self, split: str, ids: range) -> Iterator[tuple[int, dict[str, Any]]]:
        for example_id in ids:
            yield example_id, {**self._features(split, example_id), ID_KEY: example_id}

    def _image(self, split: str, example_id: int, key: str = "image") -> np.ndarray | bytes:
        shape = tuple(size or VARIABLE_IMAGE_SIZE for size in self.info.features[key].shape)
        on = 1 if self.BINARY else 255
        if any(example_id in ids for ids in self.FILLER.get(split, ())):
            return _filler_png(shape, on)
        return barcode(example_id, shape, on)

    def _features(self, split: str, example_id: int) -> dict[str, Any]:
        """The real builder's features of one example (abstract: each stand-in below defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define _features")


def _stand_in_of(task: str) -> type:
    """The registered TFDS builder class the task's table entry names."""
    return tfds.builder_cls(TfdsName.parse(get_task(task).tfds_name).name)


def _class_kwargs(task: str) -> dict[str, Any]:
    real = _stand_in_of(task)
    return {
        # The real builder's name, and its package for the metadata that config-based builders
        # read (README, citation).
        "name": real.name,
        "pkg_dir_path": real._get_pkg_dir_path(),
        # A top-level module name makes TFDS skip its package-resource lookup of the builder's
        # code, which needs the optional `importlib_resources` for a class defined in `tests/`.
        "__module__": "vpt_jax_vtab_stand_ins",
    }


def _define(class_name: str, task: str, body: Mapping[str, Any]) -> type:
    namespace = {**_class_kwargs(task), "TASK": task, **body}
    return types.new_class(
        class_name,
        (_StandIn, _stand_in_of(task)),
        {"skip_registration": True},  # the real builder keeps its name in the registry
        lambda ns: ns.update(namespace),
    )


# --- natural and specialized: the label is a feature --------------------------------------------

CALTECH_CLASSES, DTD_CLASSES, EUROSAT_CLASSES = 102, 47, 10

CaltechStandIn = _define(
    "CaltechStandIn",
    "caltech101",
    {
        # The real train size (3060), so the largest data-scaling size is the table's 1224.
        "SPLITS": {"train": range(0, 3060), "test": range(10000, 10030)},
        "_features": lambda self, split, i: {
            "image": self._image(split, i),
            "image/file_name": f"image_{i:05d}.jpg",
            "label": i % CALTECH_CLASSES,
        },
    },
)

DtdStandIn = _define(
    "DtdStandIn",
    "dtd",
    {
        "SPLITS": {
            "train": range(0, 1000),
            "validation": range(10000, 10300),
            "test": range(20000, 20030),
        },
        "_features": lambda self, split, i: {
            "image": self._image(split, i),
            "file_name": f"{i}.jpg",
            "label": i % DTD_CLASSES,
        },
    },
)

# VTAB carves eurosat's test set from `train[21600:]`: 50 examples past that boundary. Between the
# regions the tests read (the first 1000, 16200..16449 and the test set) images are the filler.
EurosatStandIn = _define(
    "EurosatStandIn",
    "eurosat",
    {
        "SPLITS": {"train": range(0, 21650)},
        "FILLER": {"train": (range(1000, 16200), range(16450, 21600))},
        "_features": lambda self, split, i: {
            "image": self._image(split, i),
            "filename": f"{i}.jpg",
            "label": i % EUROSAT_CLASSES,
        },
    },
)

# What `tfds build eurosat/rgb --max_examples_per_split=2200` leaves: too few for VTAB's regions.
EurosatPartialStandIn = _define(
    "EurosatPartialStandIn",
    "eurosat",
    {"SPLITS": {"train": range(0, 2200)}, "_features": EurosatStandIn._features},
)

# --- structured: labels chosen or derived from several features ----------------------------------

SMALLNORB_TEST_SIZE = 600  # even, so `test[50%:]` starts exactly at 300


def smallnorb_labels(example_id: int) -> dict[str, int]:
    """Distinct values per label feature, so reading the wrong one shows."""
    return {
        "instance": example_id % 10,
        "label_azimuth": example_id % 18,
        "label_category": example_id % 5,
        "label_elevation": example_id % 9,
        "label_lighting": example_id % 6,
    }


SmallnorbStandIn = _define(
    "SmallnorbStandIn",
    "smallnorb_azimuth",
    {
        "SPLITS": {"train": range(0, 1000), "test": range(30000, 30000 + SMALLNORB_TEST_SIZE)},
        "_features": lambda self, split, i: {
            "image": self._image(split, i),
            "image2": _filler_png((96, 96, 1), 255),  # VTAB reads `image`; this one reads as filler
            **smallnorb_labels(i),
        },
    },
)

KITTI_TYPES = {"Car": 0, "Van": 1, "Truck": 2, "Pedestrian": 3, "Cyclist": 5}  # TFDS `type` ids

# (objects as (type, depth z), VTAB closest-vehicle-distance label), cycled by id. Bins: <=8 m,
# 8-20 m, >20 m, no vehicle; only cars, vans and trucks count.
KITTI_SCENES = (
    ((), 3),
    ((("Pedestrian", 4.0),), 3),
    ((("Car", 5.0),), 0),
    ((("Van", 8.0),), 0),  # a threshold belongs to the bin below it
    ((("Truck", 8.5), ("Pedestrian", 2.0)), 1),
    ((("Car", 30.0), ("Car", 20.0)), 1),  # the closest of several, not the first
    ((("Cyclist", 1.0), ("Van", 25.0)), 2),
    ((("Car", 60.0), ("Truck", 21.0), ("Cyclist", 3.0)), 2),
)


def kitti_scene(example_id: int) -> tuple[tuple[tuple[str, float], ...], int]:
    """The objects and the expected label of a kitti stand-in example."""
    return KITTI_SCENES[example_id % len(KITTI_SCENES)]


def _kitti_objects(example_id: int) -> dict[str, Any]:
    objects, _ = kitti_scene(example_id)
    count = len(objects)
    return {
        "type": [KITTI_TYPES[kind] for kind, _ in objects],
        "location": np.asarray([[1.0, 1.5, z] for _, z in objects], np.float32).reshape(count, 3),
        "alpha": np.zeros(count, np.float32),
        "bbox": [tfds.features.BBox(0.1, 0.2, 0.5, 0.6)] * count,
        "dimensions": np.ones((count, 3), np.float32),
        "occluded": [0] * count,
        "rotation_y": np.zeros(count, np.float32),
        "truncated": np.zeros(count, np.float32),
    }


KittiStandIn = _define(
    "KittiStandIn",
    "kitti_distance",
    {
        # The table pins kitti 3.2.0, which this TFDS can read but refuses to generate (it only
        # generates 3.3.0); the stand-in declares 3.2.0 its own version to write it. Both versions
        # share one set of features.
        "VERSION": tfds.core.Version("3.2.0"),
        "SUPPORTED_VERSIONS": [],
        "SPLITS": {
            "train": range(0, 1000),
            "validation": range(10000, 10250),
            "test": range(20000, 20016),
        },
        "_features": lambda self, split, i: {
            "image": self._image(split, i),
            "image/file_name": f"{i:06d}.png",
            "objects": _kitti_objects(i),
        },
    },
)

# (closest depth, VTAB closest-object-distance label); bins <=8, 8-8.5, 8.5-9, 9-9.5, 9.5-10, >10.
CLEVR_DEPTHS = ((7.0, 0), (8.0, 0), (8.25, 1), (8.5, 1), (8.75, 2), (9.25, 3), (9.75, 4), (12.0, 5))


def clevr_scene(example_id: int) -> tuple[int, float, int]:
    """`(objects, closest depth, expected distance label)`: 3 to 10 objects, cycled by id."""
    depth, label = CLEVR_DEPTHS[(example_id // 8) % len(CLEVR_DEPTHS)]
    return 3 + example_id % 8, depth, label


def _clevr_objects(example_id: int) -> dict[str, Any]:
    count, depth, _ = clevr_scene(example_id)
    # The closest object comes last, so taking the first would show.
    depths = [depth + count - k for k in range(1, count)] + [depth]
    return {
        "3d_coords": np.zeros((count, 3), np.float32),
        "color": [k % 8 for k in range(count)],
        "material": [k % 2 for k in range(count)],
        "pixel_coords": np.asarray([[10.0, 20.0, z] for z in depths], np.float32),
        "rotation": np.zeros(count, np.float32),
        "shape": [k % 3 for k in range(count)],
        "size": [k % 2 for k in range(count)],
    }


ClevrStandIn = _define(
    "ClevrStandIn",
    "clevr_count",
    {
        "SPLITS": {"train": range(0, 1300), "validation": range(40000, 40020)},
        "_features": lambda self, split, i: {
            "image": self._image(split, i),
            "file_name": f"CLEVR_{i:06d}.png",
            "objects": _clevr_objects(i),
            "question_answer": {"question": [], "answer": []},
        },
    },
)


def dsprites_labels(example_id: int) -> dict[str, int]:
    """Latent factors; x and y positions differ, so reading the wrong one shows."""
    return {
        "label_orientation": example_id % 40,
        "label_scale": example_id % 6,
        "label_shape": example_id % 3,
        "label_x_position": example_id % 32,
        "label_y_position": (7 * example_id + 3) % 32,
    }


DspritesStandIn = _define(
    "DspritesStandIn",
    "dsprites_location",
    {
        "SPLITS": {"train": range(0, 1350)},
        "BINARY": True,
        "_features": lambda self, split, i: {
            "image": self._image(split, i),
            **dsprites_labels(i),
            **{
                f"value_{key.removeprefix('label_')}": np.float32(value)
                for key, value in dsprites_labels(i).items()
            },
        },
    },
)

STAND_INS = (
    CaltechStandIn,
    DtdStandIn,
    EurosatStandIn,
    SmallnorbStandIn,
    KittiStandIn,
    ClevrStandIn,
    DspritesStandIn,
)


def prepare(stand_in: type, data_dir: str) -> None:
    """Writes a stand-in's TFRecord shards and metadata under `data_dir`."""
    stand_in.create(data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=NUM_SHARDS)
    )


def record_ids(stand_in: type, data_dir: str, split: str) -> list[int]:
    """The `ID_KEY` of every record a TFDS split string reads, in order, without decoding images."""
    builder = stand_in.create(data_dir)
    dataset = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders=tfds.decode.PartialDecoding({ID_KEY: True}),
    )
    return [int(example[ID_KEY]) for example in dataset.as_numpy_iterator()]
