"""Any TFDS dataset with custom split strings, read from a dataset this test really prepares."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

import vpt_jax.data as data
from vpt_jax.data import prepare
from vpt_jax.data.host_tf import tf
from vpt_jax.data.image_convert import to_model_image
from vpt_jax.errors import UserError

TRAIN, TEST = 12, 5


class VptJaxToyGray(tfds.core.GeneratorBasedBuilder):
    """Grayscale 6x10 images, one grey level per example, three named classes."""

    # A top-level module name makes TFDS skip its package-resource lookup of the builder's code,
    # which needs the optional `importlib_resources` package for a class defined in `tests/`.
    __module__ = "vpt_jax_toy_gray"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(6, 10, 1)),
                    "label": tfds.features.ClassLabel(names=["dark", "light", "mid"]),
                    "level": tfds.features.Scalar(np.int64),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(TRAIN, 0),
            "test": self._generate_examples(TEST, 100),
        }

    def _generate_examples(self, count: int, first: int):
        for i in range(first, first + count):
            level = (i * 7) % 256
            image = np.full((6, 10, 1), level, np.uint8)
            yield i, {"image": image, "label": i % 3, "level": level}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("tfds"))
    VptJaxToyGray(data_dir=directory).download_and_prepare()
    return directory


def test_custom_split_string_reads_the_right_examples(data_dir: str) -> None:
    source = data.get_dataset("tfds:vpt_jax_toy_gray", "train[:7]", data_dir=data_dir, image_size=8)
    assert source.num_examples == 7
    assert source.class_names == ("dark", "light", "mid")
    split = source.materialize()
    assert split.images.shape == (7, 8, 8, 3)
    # Every image is flat grey: the resize keeps its level and all three channels equal it.
    levels = split.images[:, 0, 0, 0].astype(int)
    assert (split.images == split.images[:, :1, :1, :1]).all()
    everything = data.load_split("tfds:vpt_jax_toy_gray", "train", data_dir=data_dir, image_size=8)
    assert len(everything) == TRAIN
    expected_label = {(i * 7) % 256: i % 3 for i in range(TRAIN)}
    assert [expected_label[v] for v in levels] == split.labels.tolist()
    # The stored order is fixed: the first 7 are the first 7 of the whole split, every time.
    assert (everything.images[:7] == split.images).all()


def test_compound_split_counts_both_parts(data_dir: str) -> None:
    source = data.get_dataset(
        "tfds:vpt_jax_toy_gray", "train[:2]+test", data_dir=data_dir, image_size=4
    )
    assert source.num_examples == 2 + TEST
    assert len(source.materialize()) == 2 + TEST


def test_split_beyond_the_source_is_refused_with_the_numbers(data_dir: str) -> None:
    with pytest.raises(UserError, match=r"train\[:20\].*20.*12 examples"):
        data.get_dataset("tfds:vpt_jax_toy_gray", "train[:20]", data_dir=data_dir)


def test_missing_or_non_class_label_feature(data_dir: str) -> None:
    with pytest.raises(UserError, match="no feature 'species'.*image, label, level"):
        data.get_dataset("tfds:vpt_jax_toy_gray", "train", data_dir=data_dir, label_key="species")
    with pytest.raises(UserError, match="'level' is not a class label"):
        data.get_dataset("tfds:vpt_jax_toy_gray", "train", data_dir=data_dir, label_key="level")


def test_unknown_dataset_version_and_config(data_dir: str) -> None:
    with pytest.raises(UserError, match="unknown TFDS dataset 'no_such_dataset'"):
        data.get_dataset("tfds:no_such_dataset", "train", data_dir=data_dir)
    with pytest.raises(UserError, match="only: 1.0.0"):
        data.get_dataset("tfds:vpt_jax_toy_gray:2.*.*", "train", data_dir=data_dir)
    with pytest.raises(UserError, match="configs: rgb, all"):
        data.get_dataset("tfds:eurosat/infrared", "train", data_dir=data_dir)


def test_unprepared_custom_dataset_gives_the_build_command(tmp_path) -> None:
    with pytest.raises(UserError, match=f"tfds build vpt_jax_toy_gray:1.0.0 --data_dir={tmp_path}"):
        data.get_dataset("tfds:vpt_jax_toy_gray", "train", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="manual download: Dataset can be downloaded from"):
        data.get_dataset("tfds:resisc45", "train", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("pixel", "expected"),
    [((77,), (77, 77, 77)), ((10, 20, 30), (10, 20, 30)), ((10, 20, 30, 255), (10, 20, 30))],
)
def test_conversion_inside_tf_data_with_unknown_channel_count(pixel, expected) -> None:
    image = np.tile(np.asarray(pixel, np.uint8), (5, 7, 1))  # a flat colour: resizing keeps it
    dataset = tf.data.Dataset.from_generator(
        lambda: iter([image]), output_signature=tf.TensorSpec([None, None, None], tf.uint8)
    )
    (converted,) = list(dataset.map(lambda x: to_model_image(x, 4)).as_numpy_iterator())
    assert converted.shape == (4, 4, 3) and converted.dtype == np.uint8
    assert (converted == np.asarray(expected, np.uint8)).all()


def test_prepare_command_prepares_what_get_dataset_reads(tmp_path, capsys) -> None:
    prepare.main(["tfds:vpt_jax_toy_gray", "--data_dir", str(tmp_path)])
    assert "vpt_jax_toy_gray: ready in" in capsys.readouterr().out
    source = data.get_dataset("tfds:vpt_jax_toy_gray", "test", data_dir=str(tmp_path), image_size=4)
    assert source.num_examples == TEST


def test_prepare_names_each_tfds_dataset_once(capsys) -> None:
    every = prepare.builder_specs(["vtab"])
    assert len(every) == 16  # 19 tasks; clevr, dsprites and smallnorb serve two each
    assert every.count("clevr:3.*.*") == 1 and "kitti:3.2.0" in every
    assert prepare.builder_specs(["vtab/clevr_count", "vtab/clevr_distance", "tfds:beans"]) == [
        "clevr:3.*.*",
        "beans",
    ]
    for names in (["cifar100"], ["procedural:count"], []):
        with pytest.raises(SystemExit) as e:
            prepare.main(names)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert names == [] or f"error: cannot prepare {names[0]!r}; name vtab" in err
    with pytest.raises(UserError, match="unknown VTAB-1k task 'cifar1000'"):
        prepare.builder_specs(["vtab/cifar1000"])


def test_prepare_without_the_manual_download_says_what_to_fetch(tmp_path) -> None:
    # Without raw files TFDS cannot build resisc45; nothing is downloaded on the way to this error.
    with pytest.raises(UserError, match="resisc45"):
        prepare.prepare("resisc45:3.*.*", str(tmp_path))
