"""Training / evaluation decoding of stored images (`augment.decode_image`) against inference's
reading of the same file (`preprocess.read_image`, Pillow with exif_transpose), and the JPEGs the
converters write decoding exactly as before (simplejpeg alone)."""
import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageOps

from emocap_jax import preprocess
from emocap_jax.data import augment, rgb
from emocap_jax.data.manifest import encode_face_image

ORIENTATION = 0x0112


def _encode(img, fmt, **kwargs):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _photo(height=24, width=40, seed=0):
    """A smooth colour image (JPEG keeps it close) with a bright corner, so a turn shows."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    img[:4, :4] = 255
    return img.astype(np.uint8)


def _exif(orientation):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def _foreign_records():
    """(name, bytes, format) of images another tool might have stored in a record."""
    rng = np.random.default_rng(0)
    rgba = np.dstack([rng.integers(0, 256, (16, 20, 3), dtype=np.uint8),
                      np.tile(np.linspace(0, 255, 20).astype(np.uint8), (16, 1))])
    rgba[:, :5] = 0  # transparent pixels stored black
    palette = Image.fromarray(rgba[..., 1]).convert("P")
    palette.info["transparency"] = 0
    deep = np.linspace(0, 65535, 16 * 20).round().astype(np.uint16).reshape(16, 20)
    records = [
        ("rgba png", _encode(Image.fromarray(rgba), "PNG"), "png"),
        ("la png", _encode(Image.fromarray(rgba[..., [0, 3]]), "PNG"), "png"),
        ("palette png with transparency", _encode(palette, "PNG"), "png"),
        ("16-bit gray png", _encode(Image.fromarray(deep), "PNG"), "png"),
        ("rgba webp", _encode(Image.fromarray(rgba), "WEBP", lossless=True), "webp"),
        ("cmyk jpeg", _encode(Image.fromarray(_photo()).convert("CMYK"), "JPEG"), "jpeg"),
        ("gray jpeg", _encode(Image.fromarray(_photo()[..., 0]), "JPEG"), "jpeg"),
    ]
    for orientation in range(1, 9):
        photo = Image.fromarray(_photo())
        records.append((f"png orientation {orientation}",
                        _encode(photo, "PNG", exif=_exif(orientation)), "png"))
        records.append((f"jpeg orientation {orientation}",
                        _encode(photo, "JPEG", quality=95, exif=_exif(orientation)), "jpeg"))
    return [pytest.param(*record, id=record[0]) for record in records]


@pytest.mark.parametrize("name, data, fmt", _foreign_records())
def test_records_of_other_tools_decode_as_inference_reads_the_file(tmp_path, name, data, fmt):
    """Before, a record that was not a JPEG went through Pillow's convert("RGB") without its EXIF
    orientation (and a JPEG's orientation was ignored too): transparent pixels came out black
    where inference makes them white, 16-bit gray saturated to white, a sideways photo stayed
    sideways, so training and dataset evaluation saw other pixels than `predict` on the file."""
    path = tmp_path / f"image.{fmt}"
    path.write_bytes(data)
    expected = np.asarray(preprocess.read_image(path))
    decoded = augment.decode_image(data, fmt)
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, expected, err_msg=name)


def test_transparency_and_16_bit_gray_are_the_shared_conversion():
    """The two cases the old decoder got most visibly wrong, against plain NumPy."""
    rgba = np.zeros((4, 4, 4), np.uint8)  # transparent black
    assert (augment.decode_image(_encode(Image.fromarray(rgba), "PNG"), "png") == 255).all()
    gray = np.full((4, 4), 32768, np.uint16)  # mid gray in 16 bits
    assert (augment.decode_image(_encode(Image.fromarray(gray), "PNG"), "png") == 128).all()


def _mm_exif_jpeg(orientation, kind=3):
    """A JPEG whose EXIF is big-endian ("MM", as many cameras write it), after a JFIF segment:
    Pillow writes only little-endian EXIF."""
    value = orientation.to_bytes(2, "big") + b"\0\0" if kind == 3 else orientation.to_bytes(4, "big")
    entry = ORIENTATION.to_bytes(2, "big") + kind.to_bytes(2, "big") + (1).to_bytes(4, "big") + value
    tiff = b"MM\0\x2a" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + entry + b"\0" * 4
    app1 = b"Exif\0\0" + tiff
    plain = _encode(Image.fromarray(_photo()), "JPEG")
    assert plain[2:4] == b"\xff\xe0"  # Pillow's JFIF APP0 first
    return plain[:2] + plain[2:4] + plain[4:6] + plain[6:2 + 2 + int.from_bytes(plain[4:6], "big")] \
        + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 \
        + plain[2 + 2 + int.from_bytes(plain[4:6], "big"):]


def test_jpeg_header_reads_what_pillow_reads():
    cases = [("none", _encode(Image.fromarray(_photo()), "JPEG"))]
    cases += [(f"II {o}", _encode(Image.fromarray(_photo()), "JPEG", exif=_exif(o)))
              for o in range(1, 9)]
    cases += [(f"MM {o} kind {k}", _mm_exif_jpeg(o, k)) for o in range(1, 9) for k in (3, 4)]
    other = Image.Exif()
    other[0x010F] = "camera maker"  # EXIF without an orientation
    cases.append(("no orientation tag", _encode(Image.fromarray(_photo()), "JPEG", exif=other)))
    for name, data in cases:
        with Image.open(io.BytesIO(data)) as img:
            assert rgb.jpeg_header(data) == (img.getexif().get(ORIENTATION, 1), 3), name
    # The colour components decide who decodes: CMYK goes to Pillow, as inference reads it.
    assert rgb.jpeg_header(_encode(Image.fromarray(_photo()[..., 0]), "JPEG"))[1] == 1
    assert rgb.jpeg_header(_encode(Image.fromarray(_photo()).convert("CMYK"), "JPEG"))[1] == 4
    # Damaged or foreign headers read as "no turn" rather than raising.
    for data in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe1\x00\x10Exif\0\0MM", b"not a jpeg",
                 _mm_exif_jpeg(6)[:40]):
        assert rgb.jpeg_header(data)[0] == 1


def test_orient_turns_arrays_as_exif_transpose_does():
    image = np.random.default_rng(1).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        png = Image.open(io.BytesIO(_encode(Image.fromarray(image), "PNG",
                                            exif=_exif(orientation))))
        expected = np.asarray(ImageOps.exif_transpose(png))
        np.testing.assert_array_equal(rgb.orient(image, orientation), expected,
                                      err_msg=str(orientation))


def _converter_jpegs():
    """JPEG bytes as the project's converters store them (`encode_face_image`): a re-encoded PNG,
    a sideways JPEG turned upright, an upright camera JPEG kept byte for byte (its EXIF says 1)."""
    photo = Image.fromarray(_photo(300, 420))
    camera = _encode(photo, "JPEG", quality=90, exif=_exif(1))
    stored = [encode_face_image(_encode(photo, "PNG"), None),
              encode_face_image(_encode(photo, "JPEG", exif=_exif(6)), None),
              encode_face_image(camera, None),
              encode_face_image(_encode(photo, "PNG"), 128)]
    assert stored[2] == camera
    return stored


@pytest.mark.parametrize("min_side", [0, 100])
def test_converter_jpegs_decode_bit_identically_to_before(min_side):
    """The fast path is unchanged for what the converters write: simplejpeg's pixels, reduced
    DCT scaling included, not one bit different."""
    for i, data in enumerate(_converter_jpegs()):
        before = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_side,
                                        min_width=min_side)
        np.testing.assert_array_equal(augment.decode_image(data, "jpeg", min_side), before,
                                      err_msg=str(i))
