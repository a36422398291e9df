"""Turns a listed `Entry` into a FaceRecord (runs in worker processes).

Still images go through `emocap_jax.data.manifest.encode_face_image` (full decode, EXIF rotation,
RGB, optional downscale, JPEG). Clips become K frames sampled uniformly over the frames that
actually decode: indices `round(linspace(0, n - 1, K))`, so every clip yields exactly K frames
(frames repeat when n < K) and batches of clips keep a static shape.
"""

from __future__ import annotations

import io
import os

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.benchmark_formats import common
from emocap_jax.data.example_codec import FaceRecord
from emocap_jax.data.manifest import JPEG_QUALITY, encode_face_image

FER_SIDE = 48
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class _Unusable(Exception):
    """Raised inside decoding; carries the rejection reason."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")


def sample_indices(num_frames: int, k: int) -> np.ndarray:
    """K frame indices spread uniformly over [0, num_frames - 1] (repeats when too few)."""
    return np.linspace(0, num_frames - 1, k).round().astype(np.int64)


def _read_image_file(path: str, max_side: int | None) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _Unusable(common.IMAGE_NOT_FOUND, f"no image file at {path}") from None
    except OSError as e:
        raise _Unusable(common.BAD_IMAGE, f"cannot read {path}: {e.strerror or e}") from None
    if not data:
        raise _Unusable(common.BAD_IMAGE, f"{path} is empty (0 bytes)")
    try:
        return encode_face_image(data, max_side)
    except UnidentifiedImageError:
        # Pillow's message names a BytesIO by address, which would differ between runs.
        raise _Unusable(common.BAD_IMAGE, f"{path} is not in any known image format") from None
    except _IMAGE_ERRORS as e:
        raise _Unusable(common.BAD_IMAGE, f"{path} is not a readable image ({e})") from None


def _encode_pil(img: Image.Image, max_side: int | None) -> bytes:
    """RGB JPEG of a decoded frame, resized like `encode_face_image` does for files."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _fer_pixels(pixels: str, max_side: int | None) -> bytes:
    try:
        values = np.array(pixels.split(), dtype=np.int64)
    except ValueError:
        raise _Unusable(common.BAD_PIXELS, "pixels are not all integers") from None
    if values.size != FER_SIDE * FER_SIDE:
        raise _Unusable(common.BAD_PIXELS, f"{values.size} pixel values, expected "
                        f"{FER_SIDE * FER_SIDE} ({FER_SIDE}x{FER_SIDE} grayscale)")
    if values.min() < 0 or values.max() > 255:
        raise _Unusable(common.BAD_PIXELS,
                        f"pixel values span {values.min()}..{values.max()}, expected 0..255")
    img = Image.fromarray(values.astype(np.uint8).reshape(FER_SIDE, FER_SIDE), mode="L")
    return _encode_pil(img, max_side)


def _frame_folder(path: str, k: int, max_side: int | None) -> list[bytes]:
    if not os.path.isdir(path):
        raise _Unusable(common.VIDEO_NOT_FOUND, f"no frame folder at {path}")
    frames = sorted((f for f in os.listdir(path)
                     if not f.startswith(".")
                     and os.path.splitext(f)[1].lower() in common.IMAGE_EXTENSIONS),
                    key=common.natural_key)
    if not frames:
        raise _Unusable(common.NO_FRAMES, f"frame folder {path} holds no image files")
    return [_read_image_file(os.path.join(path, frames[i]), max_side)
            for i in sample_indices(len(frames), k)]


def _decode_selected(path: str, wanted: set[int]) -> tuple[int, dict[int, Image.Image]]:
    """Decodes the whole first video stream; returns (frame count, {index: frame image})."""
    kept: dict[int, Image.Image] = {}
    count = 0
    with av.open(path) as container:
        if not container.streams.video:
            raise _Unusable(common.BAD_VIDEO, f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if count in wanted:
                kept[count] = frame.to_image()
            count += 1
    return count, kept


def _video_frames(path: str, k: int, max_side: int | None) -> list[bytes]:
    if not os.path.isfile(path):
        raise _Unusable(common.VIDEO_NOT_FOUND, f"no video file at {path}")
    try:
        with av.open(path) as container:
            hint = container.streams.video[0].frames if container.streams.video else 0
        # The container's frame count is only a hint (0 for FLV, sometimes off by a few):
        # the sampled indices must come from the decoded count, so a wrong hint costs a
        # second decoding pass.
        wanted = set(sample_indices(hint, k).tolist()) if hint > 0 else set()
        count, kept = _decode_selected(path, wanted)
        if count == 0:
            raise _Unusable(common.BAD_VIDEO, f"{path}: no frame could be decoded")
        indices = sample_indices(count, k).tolist()
        if not set(indices) <= set(kept):
            count_again, kept = _decode_selected(path, set(indices))
            if count_again != count:
                raise _Unusable(common.BAD_VIDEO, f"{path}: decoding gave {count} frames, then "
                                f"{count_again}")
    except _Unusable:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise _Unusable(common.BAD_VIDEO, f"{path} cannot be decoded ({e})") from None
    return [_encode_pil(kept[i], max_side) for i in indices]


def decode_entry(item: common.Entry | common.Rejection, frames: int, max_side: int | None
                 ) -> FaceRecord | common.Rejection:
    """Decodes one listed entry into a FaceRecord with empty captions (and the entry's action
    units, if any), or a Rejection."""
    if isinstance(item, common.Rejection):
        return item
    try:
        if item.kind == common.IMAGE:
            images = [_read_image_file(item.source, max_side)]
        elif item.kind == common.PIXELS:
            images = [_fer_pixels(item.pixels or "", max_side)]
        elif item.kind == common.FRAMES:
            images = _frame_folder(item.source, frames, max_side)
        elif item.kind == common.VIDEO:
            images = _video_frames(item.source, frames, max_side)
        else:
            raise ValueError(f"entry {item.id!r}: unknown kind {item.kind!r}")
    except _Unusable as e:
        return common.Rejection(line=item.line, id=item.id, reason=str(e))
    return FaceRecord(id=item.id, images=images, image_format="jpeg", label=item.label,
                      label_id=item.label_id, aus=dict(item.aus), group=item.group)


class DecodeEntry:
    """Picklable `decode_entry` with bound options, for the worker pool."""

    def __init__(self, frames: int, max_side: int | None):
        self.frames = frames
        self.max_side = max_side

    def __call__(self, item):
        return decode_entry(item, self.frames, self.max_side)
