"""Procedural datasets, generated offline and deterministically, for the demo and the tests.

They mirror the structure of the study at a small scale. `pretrain` plays ImageNet: textured objects
on cluttered backgrounds, one class per (shape, texture) pair. Downstream tasks are either close to
it (low disparity, like VTAB's natural group) or far from it (high disparity, like VTAB's structured
group: the study finds visual prompt tuning preferable where the task is far from pretraining):

| task | group | label (classes) | VTAB analogue |
| --- | --- | --- | --- |
| pretrain | pretraining | shape x texture (40) | ImageNet-21k |
| objects | natural | shape of a textured object in clutter (10) | caltech101, cifar |
| shapes | natural | a shape pretraining never shows, rendered as pretraining's (6) | new classes |
| digits | natural | real handwritten digit scans (UCI), light on dark (10) | svhn, mnist |
| textures | natural | texture of the whole image (5) | dtd |
| count | structured | number of flat objects on grey, 1..6 (6) | clevr_count |
| distance | structured | depth of the nearest object, 4 bins (4) | clevr_distance |
| location | structured | x position of a white sprite on black, 8 bins (8) | dsprites_location |
| orientation | structured | rotation of a white half-disc, 8 x 45 deg (8) | dsprites_orientation |
| scene_count | structured | number of textured objects in clutter, 1..5 (5) | clevr_count |
| scene_location | structured | x position of a textured object in clutter, 5 bins (5) | dsprites_loc |

Splits use the VTAB-1k names: `train{n}`, `val{m}`, `train{n}val{m}` take the first examples of
a task's training or validation stream, `test` the first 1000 of its test stream (`test{n}` for
another size). Example `i` of a stream depends only on (task, stream, seed, i), so a split is
the same at any size and on any machine, and the three streams are drawn independently.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import zlib
from collections.abc import Callable, Iterator

import numpy as np

from vpt_jax.data import procedural_draw as draw
from vpt_jax.data.procedural_digits import render_digit
from vpt_jax.data.source import DataSource
from vpt_jax.data.splits import parse_sized_split
from vpt_jax.errors import UserError

STREAMS = {"train": 0, "val": 1, "test": 2}
DEFAULT_TEST_SIZE = 1000
PRETRAIN_TEXTURES = ("solid", "stripes", "checker", "dots")
TEXTURE_CLASSES = ("stripes", "checker", "dots", "rings", "noise")
POSITION_BINS = 8
ORIENTATION_BINS = 8
DEPTH_BINS = 4
MAX_COUNT = 6

SCENE_BINS = 5
SCENE_MAX_COUNT = 5

# Renders one image of a given label: (rng, image size, label) -> uint8 (S, S, 3); tasks with
# `by_stream` also get the stream (`digits`: each stream draws from its own real scans).
Renderer = Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True)
class ProceduralTask:
    """One procedural task: its classes and how to draw an example of each."""

    name: str
    group: str  # natural | structured | pretraining
    class_names: tuple[str, ...]
    render: Renderer
    by_stream: bool = False  # render(rng, size, label, stream)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _textured_object(rng: np.random.Generator, size: int, shape: str, texture: str) -> np.ndarray:
    canvas = draw.natural_background(rng, size)
    radius = rng.uniform(0.22, 0.36)
    cy, cx = rng.uniform(radius * 0.8, 1 - radius * 0.8, 2)
    mask = draw.shape_mask(size, shape, cy, cx, radius, rng.uniform(0, 2 * np.pi))
    canvas = draw.paint(canvas, mask, draw.textured_fill(rng, size, texture))
    return draw.to_uint8(canvas, rng, noise=0.04)


def _apart(
    rng: np.random.Generator, count: int, radius: float, *, spacing: float
) -> tuple[list[np.ndarray], float]:
    """`count` centres at least `spacing` radii apart (so objects can be counted), by rejection
    sampling; a crowded draw shrinks the radius by 10% every 100 tries rather than loop on.
    Returns the centres and the radius they fit at."""
    centres: list[np.ndarray] = []
    attempts = 0
    while len(centres) < count:
        candidate = rng.uniform(radius, 1 - radius, 2)
        if all(np.hypot(*(candidate - c)) > spacing * radius for c in centres):
            centres.append(candidate)
        attempts += 1
        if attempts % 100 == 0:
            radius *= 0.9
    return centres, radius


def _render_shapes(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    texture = str(rng.choice(PRETRAIN_TEXTURES))
    return _textured_object(rng, size, draw.NEW_SHAPES[label], texture)


def _scene(rng: np.random.Generator, size: int, centres: list, radius: float) -> np.ndarray:
    """Textured pretraining shapes at `centres` on a cluttered background (pretraining's look)."""
    canvas = draw.natural_background(rng, size)
    for cy, cx in centres:
        shape, texture = str(rng.choice(draw.SHAPES)), str(rng.choice(PRETRAIN_TEXTURES))
        mask = draw.shape_mask(size, shape, cy, cx, radius, rng.uniform(0, 2 * np.pi))
        canvas = draw.paint(canvas, mask, draw.textured_fill(rng, size, texture))
    return draw.to_uint8(canvas, rng, noise=0.04)


def _render_scene_count(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    centres, radius = _apart(rng, label + 1, rng.uniform(0.1, 0.13), spacing=2.2)
    return _scene(rng, size, centres, radius)


def _render_scene_location(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    radius = rng.uniform(0.2, 0.28)  # about pretraining's object sizes
    cx = radius + (label + rng.uniform()) * (1 - 2 * radius) / SCENE_BINS
    return _scene(rng, size, [(rng.uniform(radius, 1 - radius), cx)], radius)


def _render_pretrain(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    shape, texture = divmod(label, len(PRETRAIN_TEXTURES))
    return _textured_object(rng, size, draw.SHAPES[shape], PRETRAIN_TEXTURES[texture])


def _render_objects(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    return _textured_object(rng, size, draw.SHAPES[label], str(rng.choice(draw.TEXTURES)))


def _render_textures(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    canvas = draw.textured_fill(rng, size, TEXTURE_CLASSES[label])
    shade = draw.smooth_noise(rng, size, 3)[:, :, None] * rng.uniform(0.0, 0.4)
    return draw.to_uint8(canvas * (1 - shade), rng, noise=0.04)


def _grey_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """A grey floor, lighter towards the camera, and its mean level."""
    y, _ = draw.pixel_grid(size)
    level = rng.uniform(0.35, 0.55)
    floor = level + 0.1 * (y - 0.5)
    return np.repeat(floor[:, :, None], 3, axis=2).astype(np.float32), level


def _visible_colour(rng: np.random.Generator, level: float) -> np.ndarray:
    """A random colour with one channel far from the floor's grey, so every object shows."""
    colour = draw.random_colour(rng, 0.1, 0.9)
    channel = rng.integers(3)
    colour[channel] = level + 0.4 if rng.uniform() < 0.5 else level - 0.3
    return colour


def _render_count(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    canvas, level = _grey_scene(rng, size)
    centres, radius = _apart(rng, label + 1, rng.uniform(0.07, 0.1), spacing=2.4)
    for cy, cx in centres:
        shape = str(rng.choice(("disc", "square", "triangle")))
        mask = draw.shape_mask(size, shape, cy, cx, radius, rng.uniform(0, 2 * np.pi))
        canvas = draw.paint(canvas, mask, _visible_colour(rng, level))
    return draw.to_uint8(canvas, rng, noise=0.02)


def _render_distance(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    canvas, level = _grey_scene(rng, size)
    nearest = (label + rng.uniform()) / DEPTH_BINS  # depth 0 is next to the camera, 1 far away
    depths = np.sort(np.append(rng.uniform(nearest, 1, rng.integers(1, 4)), nearest))[::-1]
    for depth in depths:  # far to near, so nearer objects occlude farther ones
        radius = 0.16 - 0.1 * depth
        cy = 0.85 - 0.55 * depth
        cx = rng.uniform(radius, 1 - radius)
        mask = draw.shape_mask(
            size, str(rng.choice(("disc", "square"))), cy, cx, radius, rng.uniform(0, 2 * np.pi)
        )
        canvas = draw.paint(canvas, mask, _visible_colour(rng, level))
    return draw.to_uint8(canvas, rng, noise=0.02)


def _render_location(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    margin = 0.15  # the largest radius: sprites stay inside the image
    radius = rng.uniform(0.08, margin)
    cx = margin + (label + rng.uniform()) * (1 - 2 * margin) / POSITION_BINS
    cy = rng.uniform(margin, 1 - margin)
    shape = str(rng.choice(("square", "disc", "triangle")))
    mask = draw.shape_mask(size, shape, cy, cx, radius, rng.uniform(0, 2 * np.pi))
    return draw.to_uint8(np.repeat(mask[:, :, None], 3, axis=2))


def _render_orientation(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    angle = (label + rng.uniform()) * 2 * np.pi / ORIENTATION_BINS
    radius = rng.uniform(0.2, 0.3)
    cy, cx = rng.uniform(0.35, 0.65, 2)
    mask = draw.shape_mask(size, "semidisc", cy, cx, radius, angle)
    return draw.to_uint8(np.repeat(mask[:, :, None], 3, axis=2))


_TASK_LIST = (
    ProceduralTask(
        "pretrain",
        "pretraining",
        tuple(f"{s}/{t}" for s in draw.SHAPES for t in PRETRAIN_TEXTURES),
        _render_pretrain,
    ),
    ProceduralTask("objects", "natural", draw.SHAPES, _render_objects),
    ProceduralTask("shapes", "natural", draw.NEW_SHAPES, _render_shapes),
    ProceduralTask(
        "digits", "natural", tuple(str(d) for d in range(10)), render_digit, by_stream=True
    ),
    ProceduralTask("textures", "natural", TEXTURE_CLASSES, _render_textures),
    ProceduralTask(
        "count", "structured", tuple(f"{n} objects" for n in range(1, MAX_COUNT + 1)), _render_count
    ),
    ProceduralTask(
        "distance",
        "structured",
        tuple(f"depth bin {i}" for i in range(DEPTH_BINS)),
        _render_distance,
    ),
    ProceduralTask(
        "location",
        "structured",
        tuple(f"x bin {i}" for i in range(POSITION_BINS)),
        _render_location,
    ),
    ProceduralTask(
        "orientation",
        "structured",
        tuple(f"{45 * i}-{45 * (i + 1)} deg" for i in range(ORIENTATION_BINS)),
        _render_orientation,
    ),
    ProceduralTask(
        "scene_count",
        "structured",
        tuple(f"{n} objects" for n in range(1, SCENE_MAX_COUNT + 1)),
        _render_scene_count,
    ),
    ProceduralTask(
        "scene_location",
        "structured",
        tuple(f"x bin {i}" for i in range(SCENE_BINS)),
        _render_scene_location,
    ),
)
PROCEDURAL_TASKS: dict[str, ProceduralTask] = {task.name: task for task in _TASK_LIST}


def get_procedural_task(name: str) -> ProceduralTask:
    """The procedural task called `name`, or an error listing the valid names."""
    if name not in PROCEDURAL_TASKS:
        raise UserError(
            f"unknown procedural task {name!r}; valid tasks: {', '.join(PROCEDURAL_TASKS)}"
        )
    return PROCEDURAL_TASKS[name]


def render_example(
    task: ProceduralTask, stream: str, index: int, *, image_size: int, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Example `index` of one stream of a task.

    Args:
        task: The task.
        stream: `train`, `val` or `test`.
        index: Position in the stream.
        image_size: Height and width of the image.
        seed: Dataset seed; a different seed gives a different dataset.

    Returns:
        `(image uint8 (S, S, 3), label)`.
    """
    rng = np.random.default_rng([zlib.crc32(task.name.encode()), STREAMS[stream], seed, index])
    label = int(rng.integers(task.num_classes))  # drawn first: classes are balanced in expectation
    if task.by_stream:
        return task.render(rng, image_size, label, stream), label
    return task.render(rng, image_size, label), label


def generate(
    task: ProceduralTask, stream: str, count: int, *, image_size: int, seed: int = 0, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Examples `start .. start+count-1` of one stream of a task.

    Args:
        task: The task.
        stream: `train`, `val` or `test`.
        count: Number of examples.
        image_size: Height and width of the images.
        seed: Dataset seed.
        start: Index of the first example.

    Returns:
        `(images uint8 (count, S, S, 3), labels int32 (count,))`.
    """
    return _stack([(stream, start + i) for i in range(count)], task, image_size, seed)


def _stack(
    positions: list[tuple[str, int]], task: ProceduralTask, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(positions), image_size, image_size, 3), np.uint8)
    labels = np.empty(len(positions), np.int32)
    for row, (stream, index) in enumerate(positions):
        images[row], labels[row] = render_example(
            task, stream, index, image_size=image_size, seed=seed
        )
    return images, labels


def _segments(task_name: str, split: str) -> list[tuple[str, int]]:
    if split == "test":
        return [("test", DEFAULT_TEST_SIZE)]
    if split.startswith("test") and split[4:].isdigit() and int(split[4:]) > 0:
        return [("test", int(split[4:]))]
    sized = parse_sized_split(split)
    if sized is None:
        raise UserError(
            f"unknown split {split!r} for procedural:{task_name}; use train{{n}}, val{{m}}, "
            "train{n}val{m} (e.g. train800val200) or test / test{n}"
        )
    return [(stream, n) for stream, n in (("train", sized.train), ("val", sized.val)) if n]


# Splits up to this size are rendered once per process and kept (read-only): a study's runs read
# the same few splits again and again (the demo renders each test split once, not per final run).
CACHED_BYTES = 8 << 20


@functools.lru_cache(maxsize=32)
def _rendered(
    name: str, segments: tuple[tuple[str, int], ...], image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    positions = [(stream, index) for stream, total in segments for index in range(total)]
    images, labels = _stack(positions, get_procedural_task(name), image_size, seed)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def procedural_source(name: str, split: str, *, image_size: int, seed: int = 0) -> DataSource:
    """A split of a procedural task, generated batch by batch as it is read.

    Args:
        name: Task name (`PROCEDURAL_TASKS`).
        split: `train{n}`, `val{m}`, `train{n}val{m}`, `test` or `test{n}`.
        image_size: Height and width of the images (the tasks are drawn at that size).
        seed: Dataset seed.

    Returns:
        The source.
    """
    task = get_procedural_task(name)
    segments = _segments(name, split)
    count = sum(total for _, total in segments)

    def read(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if count * image_size * image_size * 3 <= CACHED_BYTES:  # a study reads it once per run
            images, labels = _rendered(name, tuple(segments), image_size, seed)
            for start in range(0, count, batch_size):
                yield images[start : start + batch_size], labels[start : start + batch_size]
            return
        positions = ((stream, index) for stream, total in segments for index in range(total))
        while batch := list(itertools.islice(positions, batch_size)):
            yield _stack(batch, task, image_size, seed)

    return DataSource(
        name=f"procedural:{name}:{split}",
        num_classes=task.num_classes,
        class_names=task.class_names,
        image_size=image_size,
        num_examples=count,
        read=read,
    )
