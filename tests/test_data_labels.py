"""Derived VTAB labels on hand-made records with known answers, at every bin boundary."""

from __future__ import annotations

import numpy as np
import pytest

from vpt_jax.data import labels
from vpt_jax.data.host_tf import tf


def _kitti(types: list[int], depths: list[float]) -> dict:
    location = np.zeros((len(depths), 3), np.float32)
    location[:, 2] = depths
    return {
        "objects": {
            "type": tf.constant(types, tf.int64, shape=(len(types),)),
            "location": tf.constant(location, shape=(len(depths), 3)),
        }
    }


def _clevr(depths: list[float]) -> dict:
    coords = np.zeros((len(depths), 3), np.float32)
    coords[:, 2] = depths
    return {
        "objects": {
            "size": tf.zeros((len(depths),), tf.int64),
            "pixel_coords": tf.constant(coords, shape=(len(depths), 3)),
        }
    }


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (0.5, 0),
        (8.0, 0),  # bins are (lower, upper]: exactly 8 m is still the nearest bin
        (8.01, 1),
        (20.0, 1),
        (20.01, 2),
        (998.0, 2),
        (999.0, 2),
    ],
)
def test_kitti_closest_vehicle_distance_bins(depth: float, expected: int) -> None:
    # A car at `depth`, with a farther van and a nearer pedestrian (type 3) that must be ignored.
    example = _kitti([0, 1, 3], [depth, depth + 50.0, 1.0])
    assert int(labels.kitti_closest_vehicle_distance(example)) == expected


def test_kitti_no_vehicle_is_its_own_class() -> None:
    pedestrians_only = _kitti([3, 4, 7], [2.0, 5.0, 9.0])
    no_objects = _kitti([], [])
    assert int(labels.kitti_closest_vehicle_distance(pedestrians_only)) == 3
    assert int(labels.kitti_closest_vehicle_distance(no_objects)) == 3


def test_kitti_takes_the_closest_of_car_van_truck() -> None:
    # Truck (2) at 30 m, car (0) at 15 m, tram (5) at 3 m: the closest vehicle is the car.
    assert int(labels.kitti_closest_vehicle_distance(_kitti([2, 0, 5], [30.0, 15.0, 3.0]))) == 1


@pytest.mark.parametrize(("objects", "expected"), [(3, 0), (4, 1), (7, 4), (10, 7)])
def test_clevr_count_subtracts_three(objects: int, expected: int) -> None:
    assert int(labels.clevr_count(_clevr([9.0] * objects))) == expected


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (7.9, 0),
        (8.0, 0),
        (8.1, 1),
        (8.5, 1),
        (8.6, 2),
        (9.0, 2),
        (9.1, 3),
        (9.5, 3),
        (9.6, 4),
        (10.0, 4),
        (10.1, 5),
        (99.0, 5),
    ],
)
def test_clevr_closest_distance_bins(depth: float, expected: int) -> None:
    example = _clevr([depth + 3.0, depth, depth + 1.0])  # the minimum decides
    assert int(labels.clevr_closest_distance(example)) == expected


def test_out_of_range_values_clip_into_valid_classes() -> None:
    assert int(labels.clevr_closest_distance(_clevr([150.0]))) == 5
    assert int(labels.clevr_closest_distance(_clevr([-1.0]))) == 0
    assert int(labels.clevr_count(_clevr([9.0] * 2))) == 0
    assert int(labels.kitti_closest_vehicle_distance(_kitti([0], [-200.0]))) == 0


def test_dsprites_position_binned_to_16() -> None:
    location = labels.DERIVED_LABELS["dsprites_location"]
    got = [int(location({"label_x_position": tf.constant(v, tf.int64)})) for v in range(32)]
    assert got == [v // 2 for v in range(32)]


def test_dsprites_orientation_binned_to_16() -> None:
    orientation = labels.DERIVED_LABELS["dsprites_orientation"]
    got = [int(orientation({"label_orientation": tf.constant(v, tf.int64)})) for v in range(40)]
    # VTAB: floor(value / 2.5) computed in float32.
    assert got == [int(np.floor(np.float32(v) / np.float32(2.5))) for v in range(40)]
    assert got[:6] == [0, 0, 0, 1, 1, 2] and got[-1] == 15
    assert np.bincount(got).tolist() == [3, 2] * 8  # 40 values into 16 bins: 3, 2, 3, 2, ...


def test_key_labels_read_the_attribute() -> None:
    example = {
        "label_azimuth": tf.constant(17, tf.int64),
        "label_elevation": tf.constant(8, tf.int64),
    }
    assert int(labels.label_fn("label_azimuth")(example)) == 17
    assert int(labels.label_fn("label_elevation")(example)) == 8
    assert labels.label_fn("label_azimuth")(example).dtype == tf.int32


def test_label_functions_run_inside_tf_data_graphs() -> None:
    records = tf.data.Dataset.from_tensor_slices(
        {"label_x_position": tf.constant([0, 5, 31], tf.int64)}
    )
    got = list(records.map(labels.DERIVED_LABELS["dsprites_location"]).as_numpy_iterator())
    assert got == [0, 2, 15]
