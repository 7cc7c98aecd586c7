"""Dataset-vs-reference FID: extractors, cached statistics, FID tables and the command, offline."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.fid_fixtures import TINY, counted, random_params, write_tiny_vit
from vpt_jax.analysis import distance
from vpt_jax.analysis.extractors import inception_extractor, vit_extractor
from vpt_jax.analysis.features import vit_features_fn
from vpt_jax.analysis.fid_table import read_distances_csv, write_distances_csv
from vpt_jax.analysis.frechet import frechet_distance
from vpt_jax.analysis.statistics import FeatureStatistics, load_statistics, save_statistics
from vpt_jax.analysis.tasks import known_disparity, resolve_dataset_name, task_set
from vpt_jax.data import get_dataset
from vpt_jax.errors import UserError
from vpt_jax.models import inception
from vpt_jax.models.checkpoint import (
    atomic_write_npz,
    config_from_checkpoint,
    read_npz,
    to_canonical,
)
from vpt_jax.models.vit import create_model

N = 24  # images per dataset: enough for 32-d statistics, cheap at 16x16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return write_tiny_vit(tmp_path_factory.mktemp("vit") / "vit_tiny.npz")


@pytest.fixture(scope="module")
def extractor(checkpoint):
    return vit_extractor(checkpoint)


def test_vit_extractor_reads_the_architecture_and_uses_the_checkpoint(checkpoint, extractor):
    flat, _ = to_canonical(read_npz(checkpoint))
    assert config_from_checkpoint(flat) == TINY
    assert (extractor.dim, extractor.image_size) == (32, 16)
    assert extractor.name.startswith("vit-vit_tiny-")
    images = get_dataset("procedural:objects", "train4", image_size=16).materialize().images
    written = vit_features_fn(create_model(TINY, None), random_params(TINY))  # what the file holds
    np.testing.assert_allclose(extractor.fn(images), written(images), rtol=1e-5, atol=1e-5)


def test_vit_extractor_with_a_representation_layer(tmp_path):
    config = dataclasses.replace(TINY, representation_size=24)
    path = write_tiny_vit(tmp_path / "with_pre_logits.npz", config)
    assert config_from_checkpoint(to_canonical(read_npz(path))[0]) == config
    extractor = vit_extractor(path)
    assert extractor.dim == 24
    assert extractor.fn(np.zeros((2, 16, 16, 3), np.uint8)).shape == (2, 24)


def test_vit_extractor_refuses_an_inconsistent_file(checkpoint, tmp_path):
    flat = read_npz(checkpoint)
    del flat["Transformer/encoder_norm/scale"]
    atomic_write_npz(tmp_path / "broken.npz", flat)
    with pytest.raises(UserError, match="not hold a consistent ViT .* Transformer/encoder_norm"):
        vit_extractor(tmp_path / "broken.npz")
    with pytest.raises(UserError, match="not a ViT checkpoint"):
        config_from_checkpoint({"embedding/kernel": np.zeros((4, 4, 3, 8))})


def test_inception_extractor_from_a_converted_weight_file(tmp_path):
    rng = np.random.default_rng(0)
    flat = {}
    for name, shape in inception.variable_shapes().items():
        if name.endswith("var"):  # BatchNorm variances must be positive
            flat[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            fan_in = np.prod(shape[:-1]) if len(shape) > 1 else 1
            flat[name] = rng.normal(0, (1 / fan_in) ** 0.5, shape).astype(np.float32)
    atomic_write_npz(tmp_path / "inception_fid.npz", flat)
    extractor = inception_extractor(tmp_path / "inception_fid.npz")
    assert extractor.name.startswith("inception-") and len(extractor.name) == len("inception-") + 8
    assert (extractor.dim, extractor.image_size) == (2048, 299)
    features = np.asarray(extractor.fn(np.zeros((2, 24, 24, 3), np.uint8)))
    assert features.shape == (2, 2048) and np.isfinite(features).all()


def test_statistics_are_cached_and_cache_hits_do_not_recompute(extractor, tmp_path):
    fn, counter = counted(extractor)
    opened = distance.open_dataset("procedural:count", fn)
    first = distance.split_statistics(opened, fn, num_images=N, cache_dir=tmp_path, batch_size=10)
    assert counter.images == 30  # 3 fixed-size batches of 10, the last padded
    path = distance.statistics_cache_path(
        tmp_path, "procedural:count", "train800val200", extractor.name, N
    )
    assert os.path.isfile(path) and first.num_samples == N
    again = distance.split_statistics(opened, fn, num_images=N, cache_dir=tmp_path, batch_size=10)
    assert counter.images == 30  # a hit: nothing read or embedded
    np.testing.assert_array_equal(again.mu, first.mu)
    np.testing.assert_array_equal(again.sigma, first.sigma)
    distance.split_statistics(opened, fn, num_images=N + 2, cache_dir=tmp_path, batch_size=10)
    assert counter.images == 60  # another image count is another key


def test_statistics_use_the_first_images_of_the_split(extractor):
    opened = distance.open_dataset("procedural:location", extractor)
    stats = distance.split_statistics(opened, extractor, num_images=10, batch_size=4)
    images = get_dataset("procedural:location", "train10", image_size=16).materialize().images
    expected = FeatureStatistics.from_features(np.asarray(extractor.fn(images)))
    np.testing.assert_allclose(stats.mu, expected.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.sigma, expected.sigma, rtol=1e-4, atol=1e-6)


def test_cache_keys_separate_dataset_split_features_and_count(tmp_path):
    key = ("procedural:count", "train800val200", "vit-a-1", 100)
    paths = {
        distance.statistics_cache_path(tmp_path, *key),
        distance.statistics_cache_path(tmp_path, "procedural:distance", *key[1:]),
        distance.statistics_cache_path(tmp_path, key[0], "test", *key[2:]),
        distance.statistics_cache_path(tmp_path, *key[:2], "inception-2", key[3]),
        distance.statistics_cache_path(tmp_path, *key[:3], None),
        distance.statistics_cache_path(tmp_path, "folder:/a/b", *key[1:]),
        distance.statistics_cache_path(tmp_path, "folder:/a_b", *key[1:]),
    }
    assert len(paths) == 7
    assert all(os.path.dirname(p) == str(tmp_path) for p in paths)


def test_procedural_tasks_close_to_pretraining_are_nearer_than_structured_ones(extractor):
    reference = distance.reference_statistics("procedural:pretrain", extractor, num_images=N)
    rows = distance.dataset_distances(
        ["procedural:objects", "procedural:location"], reference, extractor, num_images=N
    )
    objects, location = rows
    assert objects.fid < location.fid
    assert (objects.group, objects.disparity) == ("natural", "low")
    assert (location.group, location.disparity) == ("structured", "high")
    assert objects.num_images == N and objects.features == extractor.name


def test_vtab_and_imagenet_through_tfds_under_mock_data(extractor):
    with tfds.testing.mock_data(num_examples=6):
        reference = distance.reference_statistics("tfds:imagenet2012", extractor, num_images=6)
        rows = distance.dataset_distances(
            task_set("cifar100,clevr_count"), reference, extractor, num_images=6
        )
    assert reference.num_samples == 6
    assert [(r.dataset, r.split, r.disparity) for r in rows] == [
        ("vtab/cifar100", "train800val200", "low"),
        ("vtab/clevr_count", "train800val200", "high"),
    ]
    assert all(np.isfinite(r.fid) and r.fid >= -1e-6 for r in rows)


def test_fid_table_csv_round_trips(tmp_path):
    rows = [
        distance.DatasetDistance(
            "vtab/dtd", "train800val200", "natural", "low", 1 / 3, 1000, "f", "r"
        ),
        distance.DatasetDistance("folder:/x", "train", "", "", 12.5, 40, "f", "r"),
    ]
    write_distances_csv(tmp_path / "fid.csv", rows)
    assert read_distances_csv(tmp_path / "fid.csv") == rows


def test_reference_statistics_from_a_file(extractor, tmp_path):
    rng = np.random.default_rng(0)
    stats = FeatureStatistics.from_features(rng.normal(size=(50, 32)))
    save_statistics(tmp_path / "ref.npz", stats)
    loaded = distance.reference_statistics(str(tmp_path / "ref.npz"), extractor)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    save_statistics(tmp_path / "wide.npz", FeatureStatistics(np.zeros(2048), np.eye(2048)))
    with pytest.raises(UserError, match="2048-d .* 32-d"):
        distance.reference_statistics(str(tmp_path / "wide.npz"), extractor)
    with pytest.raises(UserError, match="not found"):
        distance.reference_statistics(str(tmp_path / "missing.npz"), extractor)
    with pytest.raises(UserError, match="neither a statistics .npz .* nor a dataset name"):
        distance.reference_statistics("imagenet", extractor)


def test_names_and_disparities():
    assert resolve_dataset_name("pets") == "vtab/oxford_iiit_pet"
    assert resolve_dataset_name("vtab/clevr_dist") == "vtab/clevr_distance"
    assert resolve_dataset_name("folder:/data/../data/birds") == "folder:/data/birds"
    assert known_disparity("vtab/dsprites_location") == "high"
    assert known_disparity("vtab/patch_camelyon") == "low"
    assert known_disparity("procedural:orientation") == "high"
    assert known_disparity("tfds:imagenette") is None
    assert len(task_set("vtab")) == 19
    assert "procedural:pretrain" not in task_set("procedural")
    assert task_set("procedural:count,clevr_count,procedural:count") == [
        "procedural:count",
        "vtab/clevr_count",
    ]
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        task_set("procedural,nope")


def test_errors_come_before_any_image_is_embedded(extractor, tmp_path):
    fn, counter = counted(extractor)
    reference = FeatureStatistics(np.zeros(32), np.eye(32))
    for names, message in [
        (["procedural:count", "vtab/nope"], "unknown VTAB-1k task 'nope'"),
        (["procedural:count", "procedural:nope"], "unknown procedural task"),
        (["procedural:count", "vtab/cifar100"], "not prepared"),
        (["procedural:count", f"folder:{tmp_path}/missing"], "does not exist"),
    ]:
        with pytest.raises(UserError, match=message):
            distance.dataset_distances(names, reference, fn, data_dir=str(tmp_path))
    assert counter.calls == 0


def test_command_offline_writes_the_table_and_reuses_saved_reference(checkpoint, tmp_path, capsys):
    common = ["--features", "vit", "--checkpoint", checkpoint, "--num_images", str(N)]
    common += [
        "--cache_dir",
        str(tmp_path / "cache"),
        "--tasks",
        "procedural:objects,procedural:count",
    ]
    distance.main(
        ["--reference", "procedural:pretrain", "--out", str(tmp_path / "fid.csv")]
        + ["--save_reference", str(tmp_path / "ref.npz")]
        + common
    )
    printed = capsys.readouterr().out
    assert "procedural:objects" in printed and "vtab/clevr_count" not in printed
    rows = read_distances_csv(tmp_path / "fid.csv")
    assert [r.dataset for r in rows] == ["procedural:objects", "procedural:count"]
    assert rows[0].reference == "procedural:pretrain"
    reference = load_statistics(tmp_path / "ref.npz")
    assert reference.num_samples == N
    stats = load_statistics(
        distance.statistics_cache_path(
            tmp_path / "cache", "procedural:objects", "train800val200", rows[0].features, N
        )
    )
    assert rows[0].fid == pytest.approx(frechet_distance(stats, reference))


def test_command_errors_are_one_line(checkpoint, tmp_path):
    base = ["--tasks", "procedural:count", "--cache_dir", str(tmp_path)]
    cases = [
        (["--reference", "procedural:pretrain"], "--features inception needs --inception"),
        (["--reference", "procedural:pretrain", "--inception", str(tmp_path / "no.npz")],
         "FID Inception weights not found"),
        (["--reference", "procedural:pretrain", "--features", "vit"], "--features vit needs"),
        (["--reference", str(tmp_path / "none.npz"), "--features", "vit", "--checkpoint",
          checkpoint], "statistics file not found"),
        (["--reference", "procedural:pretrain", "--features", "vit", "--checkpoint",
          str(tmp_path / "no_vit.npz")], "checkpoint file not found"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(SystemExit) as error:
            distance.main(base + args)
        text = str(error.value)
        assert text.startswith("error: ") and message in text and "\n" not in text
