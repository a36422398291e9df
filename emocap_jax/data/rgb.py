"""Upright RGB pixels from any image: the one conversion training, evaluation and inference share.

`to_rgb` turns any Pillow image into RGB (transparency onto white, 16-bit grayscale scaled, not
clipped); `upright_rgb` first applies the EXIF orientation (phone photos are often stored
sideways). `emocap_jax.preprocess` (inference), the dataset converters
(`emocap_jax.data.manifest`) and the training / evaluation decoder (`emocap_jax.data.augment`)
all use them, so a model sees the same pixels of a file whichever way it reaches it.

`jpeg_header` and `orient` do the EXIF part for JPEG bytes that libjpeg-turbo decodes without
Pillow: reading the orientation takes microseconds (the segment headers before the image data),
so the fast JPEG path stays fast.

Here rather than in `preprocess`, which imports `augment`: `augment` needs these too.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

_ORIENTATION_TAG = 0x0112

# The modes Pillow opens high-bit-depth grayscale as: 16-bit PNG / TIFF, 32-bit integer, float.
_DEEP_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of any Pillow image, also the training / benchmark converter's
    (`emocap_jax.data.manifest`), so a model sees at inference what it was trained and evaluated
    on: transparent pixels (RGBA, LA, PA, a palette or grayscale image with a transparent colour)
    are composited onto white, high-bit-depth grayscale is scaled to 8 bits instead of being
    clipped, everything else goes through Pillow's convert("RGB")."""
    if img.mode == "RGB":
        return img
    if img.mode in _DEEP_GRAY_MODES:
        img = _deep_gray_to_8_bit(img)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")  # also what a palette with transparency needs (no warning)
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _deep_gray_to_8_bit(img: Image.Image) -> Image.Image:
    """L (or LA, when the file names a transparent gray level) from a high-bit-depth image."""
    raw = np.asarray(img)
    values = raw.astype(np.float64)
    # 16-bit files (PNG, TIFF) open as I;16 or I: map their full range onto 0..255. Float
    # images in [0, 1] are scaled up; anything else that already fits in 8 bits is kept.
    if img.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values / 257.0
    elif img.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    transparent = img.info.get("transparency")
    if isinstance(transparent, (int, float)) and not isinstance(transparent, bool):
        alpha = np.where(raw == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray, alpha], axis=-1))  # LA
    return Image.fromarray(gray)  # L


def upright_rgb(img: Image.Image) -> Image.Image:
    """`to_rgb` of the image turned by its EXIF orientation (Pillow's exif_transpose)."""
    if img.getexif().get(_ORIENTATION_TAG, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def jpeg_header(data: bytes) -> tuple[int, int]:
    """(EXIF orientation 1..8, colour components) of JPEG bytes, read from the marker segments
    before the image data. Orientation is 1 when there is none or it cannot be read (tag 0x0112
    of the first IFD of the first APP1 "Exif" segment ahead of the frame header, as Pillow's
    getexif() reads it); components is 0 when no frame header comes before the scan."""
    orientation, components = 1, 0
    if data[:2] != b"\xff\xd8":
        return orientation, components
    pos, end, seen_exif = 2, len(data), False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: the headers are over
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xE1 and not seen_exif and data[pos + 4:pos + 10] == b"Exif\0\0":
            seen_exif = True
            orientation = _tiff_orientation(data[pos + 10:pos + 2 + length])
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            # SOFn (length, precision, height, width, components). The APPn segments EXIF lives
            # in precede the frame header, so nothing after it is needed.
            return orientation, data[pos + 9] if pos + 9 < end else 0
        pos += 2 + length
    return orientation, components


def _tiff_orientation(tiff: bytes) -> int:
    """Tag 0x0112 (SHORT or LONG) of the first IFD of a TIFF header (the EXIF payload)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for i in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            return 1
        if int.from_bytes(tiff[entry:entry + 2], order) == _ORIENTATION_TAG:
            kind = int.from_bytes(tiff[entry + 2:entry + 4], order)
            width = {3: 2, 4: 4}.get(kind)  # SHORT, LONG
            if width is None:
                return 1
            value = int.from_bytes(tiff[entry + 8:entry + 8 + width], order)
            return value if 1 <= value <= 8 else 1
    return 1


# Pillow's exif_transpose on an [H, W, C] array, by orientation: mirror, rotate 180, flip,
# transpose, rotate 90 clockwise, transverse, rotate 90 counter-clockwise.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """`image` [H, W, C] turned upright for an EXIF `orientation` (1..8), as a contiguous array
    (OpenCV and batching want one); orientation 1 returns `image` itself."""
    turn = _ORIENT.get(orientation)
    return image if turn is None else np.ascontiguousarray(turn(image))
