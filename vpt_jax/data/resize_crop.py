"""Host-side resize-and-crop preprocessing for images of any size: the FGVC recipe of the VPT code.

The official FGVC transforms (torchvision, crop 224) are

    train: Resize(256) -> RandomCrop(224) -> RandomHorizontalFlip -> Normalize(ImageNet)
    eval:  Resize(256) -> CenterCrop(224) -> Normalize(ImageNet)

where `Resize(256)` scales the shorter side to 256 and the longer side to `int(256 * long / short)`
(bilinear, PIL's antialiasing filter), and `CenterCrop` places the crop at
`int(round((size - crop) / 2))`, Python's round (halves to even). For other resolutions the resize
is `image_size * 8 // 7` (224 -> 256, 384 -> 438, 448 -> 512, the official pairs).

Evaluation images are finished here (`center_crop_image`). Training images keep the freedom of the
random crop: each is stored as a fixed-shape *canvas* (`canvas_image`), the resized image turned
landscape (portrait images transposed) on a `resize x 2 * resize` array, with its extent (long side
length, transposed flag); the crop and the flip run on the accelerator
(`vpt_jax.data.preprocess.canvas_crop`). A long side beyond twice the short side (panoramas, rare in
FGVC) is cut to its central `2 * resize` pixels, so crops of those images are drawn from the middle
two thirds or so of their length; every other image gets exactly the official crop distribution.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from vpt_jax.errors import UserError

# How much longer than the short side a canvas holds; longer images are cut to their middle.
CANVAS_ASPECT = 2


def resize_size(image_size: int) -> int:
    """The shorter-side resize before a crop of `image_size` (224 -> 256, as the official code)."""
    return image_size * 8 // 7


def open_rgb(path: str) -> Image.Image:
    """Decodes an image file to RGB as torchvision's `default_loader` does (grayscale, CMYK,
    palette and alpha images converted by Pillow).

    Raises:
        UserError: The file is missing or is not an image Pillow reads.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist; the split file lists it") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot decode image {path} ({error}); fix or remove the file") from None


def shorter_side_resize(image: Image.Image, size: int) -> Image.Image:
    """torchvision's `Resize(size)` on a PIL image: shorter side to `size`, aspect kept."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new = (size, new_long) if width <= height else (new_long, size)
    if new == (width, height):
        return image
    return image.resize(new, Image.BILINEAR)


def center_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
    """torchvision's `CenterCrop` corner for an image at least `crop` on both sides."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def center_crop_image(image: Image.Image, image_size: int) -> np.ndarray:
    """The evaluation transform: shorter side to `resize_size`, centre crop `image_size`.

    Returns:
        uint8 `(image_size, image_size, 3)`.
    """
    pixels = np.asarray(shorter_side_resize(image, resize_size(image_size)), np.uint8)
    top, left = center_offsets(pixels.shape[0], pixels.shape[1], image_size)
    return np.ascontiguousarray(pixels[top : top + image_size, left : left + image_size])


def canvas_shape(image_size: int) -> tuple[int, int, int]:
    """Shape of one training canvas: `(resize, CANVAS_ASPECT * resize, 3)`."""
    size = resize_size(image_size)
    return size, CANVAS_ASPECT * size, 3


def canvas_image(image: Image.Image, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The training form of an image: resized, turned landscape, on a fixed-shape canvas.

    Returns:
        `(canvas uint8 canvas_shape(image_size), extent int32 (2,))`: the extent is the long side's
        length on the canvas and 1 if the image was transposed (portrait), else 0. Pixels beyond
        the long side are zero.
    """
    pixels = np.asarray(shorter_side_resize(image, resize_size(image_size)), np.uint8)
    transposed = pixels.shape[0] > pixels.shape[1]
    if transposed:
        pixels = pixels.transpose(1, 0, 2)
    rows, cols, _ = canvas_shape(image_size)
    length = pixels.shape[1]
    if length > cols:  # a panorama: its middle part
        start = (length - cols) // 2
        pixels, length = pixels[:, start : start + cols], cols
    canvas = np.zeros((rows, cols, 3), np.uint8)
    canvas[:, :length] = pixels
    return canvas, np.asarray([length, int(transposed)], np.int32)
