"""Images in, model-ready uint8 batches out: CLIP's evaluation preprocessing for inference.

    batch = load_images(["a.jpg", "b.png"], size=224)     # [2, 224, 224, 3] uint8
    batch = preprocess([pil_image, array_hw3], size=224)   # the same for images already in memory

Each image is converted to RGB (grayscale, palette, RGBA, 16-bit and CMYK inputs included;
transparent pixels onto white: `to_rgb` of `emocap_jax.data.rgb`, which the training converter
and the training / evaluation decoder use too), its shorter side resized to `size` with bicubic
filtering and the central `size` x `size` square cut out: the
preprocessing of OpenAI CLIP and open_clip, and of our own evaluation pipeline
(`emocap_jax.data.augment.resize_center_crop`, which does the resize and crop here too). Pixels
stay uint8; the model normalises them with CLIP's mean and std on the device.

Files are read with Pillow and turned upright by their EXIF orientation tag (phone photos are often
stored sideways), and every failure names the file. No JAX here: the CLI validates its inputs
before paying for a JAX import.
"""
from __future__ import annotations

import os
import pathlib
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from emocap_jax.data.augment import resize_center_crop
from emocap_jax.data.rgb import to_rgb, upright_rgb

# What a directory walk picks up; files named explicitly are read whatever their suffix.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm")

PathLike = Union[str, os.PathLike]
ImageLike = Union[PathLike, Image.Image, np.ndarray]


class ImageReadError(ValueError):
    """An image file that is missing or that Pillow cannot decode; the message names the file."""


def expand_image_paths(items: Iterable[PathLike], recursive: bool = True) -> list[pathlib.Path]:
    """Files as given, and for each directory the image files under it (by suffix, sorted, walking
    sub-directories when `recursive`). A missing path or a directory without images raises
    ImageReadError naming it."""
    paths: list[pathlib.Path] = []
    for item in items:
        path = pathlib.Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            # A dangling symbolic link is kept, so that it is reported as unreadable (naming it)
            # rather than left out without a word; other non-files (fifos, sockets) are not.
            found = sorted(p for p in path.glob(pattern)
                           if (p.is_file() or (p.is_symlink() and not p.exists()))
                           and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImageReadError(f"{path}: directory holds no image files "
                                     f"({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif path.exists():
            raise ImageReadError(f"{path}: not a regular file or directory")
        else:
            raise ImageReadError(f"{path}: no such file or directory")
    return paths


def check_image_file(path: PathLike) -> None:
    """Reads only the header: a cheap test that `path` is an image Pillow can open."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 (the header is parsed on open; size proves it was understood)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file{_dangling(path)}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from None


def _dangling(path: PathLike) -> str:
    """How a missing file came to be listed: a symbolic link to a file that is not there."""
    path = pathlib.Path(path)
    return f" (a broken symbolic link to {os.readlink(path)})" if path.is_symlink() else ""


def read_image(path: PathLike) -> Image.Image:
    """Decodes a file fully into an upright RGB PIL image; errors name the file."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here, with its name
            return upright_rgb(img)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file{_dangling(path)}") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory, not an image file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:
        # SyntaxError is what Pillow raises for some malformed headers (e.g. broken PNG chunks);
        # DecompressionBombError (not an OSError) for a header of more than twice
        # Image.MAX_IMAGE_PIXELS pixels, refused before any decoding.
        raise ImageReadError(f"{path}: not a readable image ({e})") from None


def _uint8_advice(array: np.ndarray) -> str:
    """How to turn a non-uint8 image array into uint8 pixels, read from its values: [0, 1] floats
    and 0..255 floats want different conversions, and negative values are no pixels at all."""
    if array.dtype == np.bool_:
        return "for a mask, convert with x.astype(np.uint8) * 255"
    if array.size == 0 or not np.issubdtype(array.dtype, np.number):
        return "convert to uint8 pixels (0..255)"
    low, high = float(np.min(array)), float(np.max(array))
    where = f"its values lie in [{low:.4g}, {high:.4g}]"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "it holds NaN or infinite values"
    if low < 0:
        return (f"{where}, negative: not pixels. CLIP-normalised images go in as one float batch "
                f"[N, S, S, 3] at the model's input size S (zero_shot, explain, encode_image); "
                f"pixels as uint8 (0..255)")
    if high <= 1 and np.issubdtype(array.dtype, np.floating):
        return f"{where}: for [0, 1] floats convert with np.clip(x * 255, 0, 255).round().astype(np.uint8)"
    if high <= 255:
        if np.issubdtype(array.dtype, np.integer):
            return f"{where}: convert with x.astype(np.uint8)"
        return f"{where}: convert with np.clip(x, 0, 255).round().astype(np.uint8)"
    return (f"{where}, beyond 255: scale them to 0..255 first (16-bit pixels: "
            f"(x // 257).astype(np.uint8))")


def _layout_hint(shape: tuple) -> str:
    """What an image array of an unusable shape probably is, and how to pass it."""
    if len(shape) == 4:
        return ("; it is a batch of images: pass the array itself, not inside a list (or join "
                "several batches with np.concatenate)")
    hints = []
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        hints.append("it looks channels-first [C, H, W] (PyTorch's layout): pass "
                     "x.transpose(1, 2, 0)")
    if len(shape) == 3:
        hints.append("for a stack of grayscale images [N, H, W] pass x[..., None]")
    return "; " + "; ".join(hints) if hints else ""


def _array_to_rgb(array: np.ndarray, where: str) -> np.ndarray:
    """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] uint8 -> [H, W, 3] uint8 ([H, W, 4] is RGBA:
    composited onto white, as `to_rgb` does for an RGBA image)."""
    if array.dtype != np.uint8:
        raise ValueError(
            f"{where}: image arrays must be uint8 pixels (0..255), got dtype {array.dtype} "
            f"of shape {array.shape}; {_uint8_advice(array)}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3 and array.shape[-1] == 3:
        return array
    if array.ndim == 3 and array.shape[-1] == 4:
        return np.asarray(to_rgb(Image.fromarray(np.ascontiguousarray(array))))  # RGBA
    raise ValueError(f"{where}: expected an image array [H, W], [H, W, 1], [H, W, 3] or "
                     f"[H, W, 4], got shape {array.shape}{_layout_hint(array.shape)}")


def channels_first_hint(shape: tuple) -> str:
    """For a 4-D batch [N, C, H, W] (PyTorch's layout), how to make it [N, H, W, C]; else ""."""
    if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return "it looks channels-first [N, C, H, W] (PyTorch's layout): pass x.transpose(0, 2, 3, 1)"
    return ""


def _is_array_like(x) -> bool:
    """A jax.Array, a CPU torch tensor, ...: anything NumPy reads through __array__."""
    return (hasattr(x, "__array__") and not isinstance(x, (np.ndarray, Image.Image, str, bytes))
            and hasattr(x, "shape"))


def _open_hint(x) -> str:
    """For encoded image bytes or an open file, how to make it an image; else ""."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return " (encoded image bytes? decode with PIL.Image.open(io.BytesIO(data)))"
    if hasattr(x, "read"):
        return " (an open file? decode it with PIL.Image.open(f))"
    return ""


def preprocess_one(image: ImageLike, size: int, where: str = "image") -> np.ndarray:
    """One image (a path, "~" expanded; a PIL image or a uint8 array) -> [size, size, 3] uint8."""
    if isinstance(image, (str, os.PathLike)):
        path = os.path.expanduser(image)  # "~/faces/1.png" is in the home folder, as in a shell
        array = np.asarray(read_image(path))
        where = path
    elif isinstance(image, Image.Image):
        array = np.asarray(to_rgb(image))
    elif isinstance(image, np.ndarray) or _is_array_like(image):
        array = _array_to_rgb(np.asarray(image), where)  # a jax.Array is read as NumPy
    else:
        raise TypeError(f"{where}: expected a file path, a PIL image or a NumPy array, got "
                        f"{type(image).__name__}{_open_hint(image)}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{where}: empty image of shape {array.shape}")
    return resize_center_crop(np.ascontiguousarray(array), size)


def preprocess(images: Union[ImageLike, Sequence[ImageLike]], size: int) -> np.ndarray:
    """CLIP evaluation preprocessing of one image or a sequence of them -> [N, size, size, 3]
    uint8. Items are paths, PIL images or uint8 arrays ([H, W] grayscale, [H, W, 1|3|4]); a 4-D
    uint8 array is a batch of [H, W, 3|4|1] images."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if _is_array_like(images):
        images = np.asarray(images)  # a jax.Array
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    elif isinstance(images, np.ndarray):
        if images.ndim == 4:
            hint = channels_first_hint(images.shape)
            if hint:
                raise ValueError(f"a batch of shape {images.shape}: {hint}")
            images = list(images)
        elif images.ndim in (2, 3):
            images = [images]
        else:
            raise ValueError(f"expected one image [H, W(, C)] or a batch [N, H, W, C], got an "
                             f"array of shape {images.shape}")
    elif isinstance(images, (list, tuple)):
        pass
    elif isinstance(images, Iterable) and not _open_hint(images):
        images = list(images)  # a generator, a map(...), a dict's values
    else:
        raise TypeError(f"expected an image (a file path, a PIL image or a NumPy array) or a "
                        f"sequence of them, got {type(images).__name__}{_open_hint(images)}")
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, image in enumerate(images):
        out[i] = preprocess_one(image, size, where=f"image {i}")
    return out


def load_images(paths: Sequence[PathLike], size: int) -> np.ndarray:
    """Reads and preprocesses image files -> [N, size, size, 3] uint8 (errors name the file)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"load_images takes file paths, got {type(path).__name__}; use "
                            "preprocess() for images already in memory")
    return preprocess(paths, size)


def load_readable_images(paths: Sequence[PathLike], size: int, on_unreadable
                         ) -> tuple[list[int], np.ndarray]:
    """`load_images` for files that may include bad ones: a file that cannot be read is handed to
    `on_unreadable(path, ImageReadError)` and left out instead of stopping the others. Returns the
    positions in `paths` of the files read and their images [n, size, size, 3] uint8."""
    kept, images = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_images([path], size)[0])
        except ImageReadError as e:
            on_unreadable(path, e)
        else:
            kept.append(i)
    return kept, (np.stack(images) if images else np.empty((0, size, size, 3), np.uint8))
