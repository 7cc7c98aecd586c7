"""Labels of the VTAB structured tasks, derived from TFDS records as task_adaptation defines them.

Each label function takes one TFDS example (a dict of tensors, nested for `objects`) and returns an
int32 scalar; it runs inside tf.data graphs and eagerly alike. Definitions (google-research/
task_adaptation, `data/{kitti,clevr,dsprites}.py`):

* kitti closest vehicle distance: depth `location[:, 2]` of the closest car, van or truck
  (`type < 3`), 1000 when there is none; bins over the thresholds `[-100, 8, 20, 999]`.
* clevr count: number of objects minus 3 (CLEVR images hold 3 to 10 objects).
* clevr closest object distance: the smallest `pixel_coords[:, 2]`; bins over
  `[0, 8, 8.5, 9, 9.5, 10, 100]`.
* dsprites location / orientation: the integer attribute grouped into 16 equal bins.

A value falls into bin `k` when `thresholds[k] < value <= thresholds[k + 1]` (the largest threshold
index strictly below the value). Values outside every bin cannot occur in the real datasets; they
are clipped into the first or last class instead of producing an invalid label (VTAB's code
returns an undefined value there), which keeps randomly generated mock records usable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vpt_jax.data.host_tf import tf

LabelFn = Callable[[Mapping[str, Any]], Any]

KITTI_VEHICLE_TYPES = 3  # TFDS kitti `type` ids 0, 1, 2: Car, Van, Truck
KITTI_NO_VEHICLE_DEPTH = 1000.0
KITTI_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)
CLEVR_MIN_OBJECTS = 3
CLEVR_COUNT_CLASSES = 8  # 3..10 objects
CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
CLEVR_DISTANCE_CLASSES = 6


def bin_index(value: Any, thresholds: Sequence[float], num_classes: int) -> Any:
    """The bin of `value`: the largest `k` with `thresholds[k] < value`, clipped to the classes.

    Args:
        value: A float scalar tensor.
        thresholds: Increasing bin edges.
        num_classes: Number of valid labels; the result lies in `[0, num_classes)`.

    Returns:
        An int32 scalar tensor.
    """
    edges = tf.constant(thresholds, tf.float32)
    below = tf.reduce_sum(tf.cast(edges < tf.cast(value, tf.float32), tf.int32))
    return tf.clip_by_value(below - 1, 0, num_classes - 1)


def kitti_closest_vehicle_distance(example: Mapping[str, Any]) -> Any:
    """VTAB `kitti/closest_vehicle_distance`: 4 classes (<=8 m, 8-20 m, >20 m, no vehicle).

    Args:
        example: A TFDS `kitti` example with `objects/type` and `objects/location`.

    Returns:
        An int32 scalar tensor.
    """
    objects = example["objects"]
    # Both sequences have one entry per object in real records; the guard keeps mocks well-formed.
    count = tf.minimum(tf.shape(objects["type"])[0], tf.shape(objects["location"])[0])
    is_vehicle = objects["type"][:count] < KITTI_VEHICLE_TYPES
    depths = tf.boolean_mask(tf.cast(objects["location"][:count, 2], tf.float32), is_vehicle)
    closest = tf.reduce_min(tf.concat([depths, [KITTI_NO_VEHICLE_DEPTH]], axis=0))
    return bin_index(closest, KITTI_DISTANCE_THRESHOLDS, len(KITTI_DISTANCE_THRESHOLDS))


def clevr_count(example: Mapping[str, Any]) -> Any:
    """VTAB `clevr/count_all`: number of objects minus 3, 8 classes.

    Args:
        example: A TFDS `clevr` example with `objects/size`.

    Returns:
        An int32 scalar tensor.
    """
    count = tf.size(example["objects"]["size"], out_type=tf.int32)
    return tf.clip_by_value(count - CLEVR_MIN_OBJECTS, 0, CLEVR_COUNT_CLASSES - 1)


def clevr_closest_distance(example: Mapping[str, Any]) -> Any:
    """VTAB `clevr/closest_object_distance`: depth of the closest object in 6 bins.

    Args:
        example: A TFDS `clevr` example with `objects/pixel_coords`.

    Returns:
        An int32 scalar tensor.
    """
    depth = tf.reduce_min(tf.cast(example["objects"]["pixel_coords"][:, 2], tf.float32))
    return bin_index(depth, CLEVR_DISTANCE_THRESHOLDS, CLEVR_DISTANCE_CLASSES)


def binned_attribute(key: str, num_values: int, num_bins: int) -> LabelFn:
    """A label that groups an integer attribute `0..num_values-1` into `num_bins` equal bins.

    VTAB computes `floor(value / (num_values / num_bins))` in float32; for the integers it is
    applied to this equals the exact integer form used here, `value * num_bins // num_values`.

    Args:
        key: The feature holding the attribute, e.g. `label_x_position`.
        num_values: Number of values the attribute takes (dsprites: 32 positions, 40 orientations).
        num_bins: Number of classes.

    Returns:
        The label function.
    """

    def label(example: Mapping[str, Any]) -> Any:
        value = tf.cast(example[key], tf.int32)
        return tf.clip_by_value(value * num_bins // num_values, 0, num_bins - 1)

    label.__name__ = f"binned_{key}_{num_bins}"
    return label


def from_key(key: str) -> LabelFn:
    """A label read from one integer feature, e.g. `label` or smallnorb's `label_azimuth`.

    Args:
        key: The feature name.

    Returns:
        The label function.
    """

    def label(example: Mapping[str, Any]) -> Any:
        return tf.cast(example[key], tf.int32)

    label.__name__ = f"key_{key}"
    return label


DSPRITES_POSITIONS = 32
DSPRITES_ORIENTATIONS = 40
DSPRITES_BINS = 16

# Labels computed from several features, by the names the VTAB table uses.
DERIVED_LABELS: dict[str, LabelFn] = {
    "kitti_closest_vehicle_distance": kitti_closest_vehicle_distance,
    "clevr_count": clevr_count,
    "clevr_closest_distance": clevr_closest_distance,
    "dsprites_location": binned_attribute("label_x_position", DSPRITES_POSITIONS, DSPRITES_BINS),
    "dsprites_orientation": binned_attribute(
        "label_orientation", DSPRITES_ORIENTATIONS, DSPRITES_BINS
    ),
}


def label_fn(label: str) -> LabelFn:
    """The function computing a table's `label`: a derived label by name, else that feature.

    Args:
        label: A key of `DERIVED_LABELS` or a feature name.

    Returns:
        The label function.
    """
    return DERIVED_LABELS.get(label) or from_key(label)
