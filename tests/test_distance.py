"""Dataset-vs-reference FID: extractors, cached statistics, FID tables and the command, offline."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.fid_fixtures import TINY, counted, random_params, write_tiny_vit
from vpt_jax.analysis.fid import distance, inception
from vpt_jax.analysis.fid.extractors import inception_extractor, vit_extractor
from vpt_jax.analysis.fid.features import vit_features_fn
from vpt_jax.analysis.fid.frechet import frechet_distance
from vpt_jax.analysis.fid.statistics import FeatureStatistics, load_statistics, save_statistics
from vpt_jax.analysis.fid.table import read_distances_csv, write_distances_csv
from vpt_jax.data import get_dataset, parse_dataset, parse_dataset_list
from vpt_jax.errors import UserError
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


def test_vit_extractor_reads_a_timm_safetensors_file_as_the_same_feature_space(tmp_path):
    from vpt_jax.models import timm_vit, torch_files

    # timm files do not store the head count: it follows from the width (one head at 32).
    one_head = write_tiny_vit(tmp_path / "vit_tiny.npz", dataclasses.replace(TINY, num_heads=1))
    flat, _ = to_canonical(read_npz(one_head))
    path = str(tmp_path / "vit_tiny.safetensors")
    torch_files.write_safetensors(path, timm_vit.from_canonical(flat))
    from_timm = vit_extractor(path)
    assert (from_timm.dim, from_timm.image_size) == (32, 16)
    assert from_timm.name.startswith("vit-vit_tiny-")
    images = get_dataset("procedural:objects", "train4", image_size=16).materialize().images
    np.testing.assert_allclose(
        from_timm.fn(images), vit_extractor(one_head).fn(images), rtol=1e-5, atol=1e-5
    )


def test_vit_extractor_refuses_a_swin_checkpoint_in_one_line(tmp_path):
    atomic_write_npz(tmp_path / "swin.npz", {"patch_embed/proj/kernel": np.zeros((4, 4, 3, 8))})
    with pytest.raises(UserError, match="holds a swin backbone .*use --features inception") as e:
        vit_extractor(tmp_path / "swin.npz")
    assert "\n" not in str(e.value)


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
            parse_dataset_list("cifar100,clevr_count"), reference, extractor, num_images=6
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


def test_fid_table_without_groups_takes_them_from_the_names(tmp_path):
    (tmp_path / "fid.csv").write_text(
        "dataset,fid\nvtab/clevr_count,1.5\ncifar100,2\nprocedural:objects,3\nmy own set,4\n"
    )
    rows = read_distances_csv(tmp_path / "fid.csv")
    assert [(r.dataset, r.group, r.disparity, r.fid) for r in rows] == [
        ("vtab/clevr_count", "structured", "high", 1.5),
        ("cifar100", "natural", "low", 2.0),  # a bare VTAB name, as the commands accept
        ("procedural:objects", "natural", "low", 3.0),
        ("my own set", "", "", 4.0),  # a name the data layer does not know: nothing to tell
    ]


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
    name = lambda text: str(parse_dataset(text, bare_vtab=True))
    assert name("pets") == "vtab/oxford_iiit_pet"
    assert name("vtab/clevr_dist") == "vtab/clevr_distance"
    assert name("folder:/data/../data/birds") == "folder:/data/birds"
    assert parse_dataset("vtab/dsprites_location").disparity == "high"
    assert parse_dataset("vtab/patch_camelyon").disparity == "low"
    assert parse_dataset("procedural:orientation").disparity == "high"
    assert parse_dataset("tfds:imagenette").disparity is None
    assert len(parse_dataset_list("vtab")) == 19
    assert "procedural:pretrain" not in map(str, parse_dataset_list("procedural"))
    assert list(map(str, parse_dataset_list("procedural:count,clevr_count,procedural:count"))) == [
        "procedural:count",
        "vtab/clevr_count",
    ]
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        parse_dataset_list("procedural,nope")


def test_opened_split_carries_the_parsed_name(extractor):
    opened = distance.open_dataset("procedural:count", extractor, split="train8")
    assert opened.name == parse_dataset("procedural:count")
    assert (opened.dataset, opened.split) == ("procedural:count", "train8")
    assert distance.open_dataset(opened.name, extractor).split == "train800val200"


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


def test_command_errors_are_one_line(checkpoint, tmp_path, capsys):
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
        (["--features", "vit", "--checkpoint", checkpoint], "--reference must have a value"),
        (["--reference", "imagenet", "--features", "vit", "--checkpoint", checkpoint],
         "neither a statistics .npz (mu, sigma) nor a dataset name: unknown dataset 'imagenet'"),
        (["--reference", "procedural:pretrain", "--features", "resnet"],
         "flag --features=resnet: value should be one of <inception|vit>"),
        (["--reference", "procedural:pretrain", "stray"], "unexpected arguments stray"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(SystemExit) as error:
            distance.main(base + args)
        text = capsys.readouterr().err
        assert error.value.code == 2
        assert text.startswith("error: ") and message in text and text.count("\n") == 1, text
