"""Shared vocabulary of the benchmark converters: what a layout reader produces.

A layout reader (one per benchmark family) turns a dataset root into a `SplitListing`: the
class order plus one item per input entry, each either an `Entry` (a file, frame folder or
pixel row to decode, with its label) or a `Rejection` (an entry that is already known to be
unusable: label out of range, file listed but missing, unknown class folder ...). Decoding
happens later, in worker processes (see `decode.py`), so readers only touch the file system
and label files.

Rejection reasons have the form "<code>: <detail>"; the codes are the constants below.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from emocap_jax.data.manifest import (BAD_IMAGE, DUPLICATE_KEY, IMAGE_NOT_FOUND, NOT_UTF8, Rejection,
                                      wide_text_error)

__all__ = [
    "BAD_IMAGE", "DUPLICATE_KEY", "IMAGE_NOT_FOUND", "NOT_UTF8", "Rejection", "SplitlessRejection", "Entry",
    "SplitListing", "Reader", "LayoutError", "ReaderOptions",
]

# Rejection codes (BAD_IMAGE, DUPLICATE_KEY, IMAGE_NOT_FOUND and NOT_UTF8 are shared with the
# caption converter; DUPLICATE_KEY: a JSON entry repeats a key, see emocap_jax.data.json_keys).
VIDEO_NOT_FOUND = "video_not_found"
BAD_VIDEO = "bad_video"
NO_FRAMES = "no_frames"
BAD_PIXELS = "bad_pixels"
LABEL_OUT_OF_RANGE = "label_out_of_range"
BAD_LABEL = "bad_label"
UNKNOWN_CLASS = "unknown_class"
EXCLUDED_CLASS = "excluded_class"
NO_MAJORITY = "no_majority"
MISSING_ANNOTATION = "missing_annotation"
MALFORMED_LINE = "malformed_line"
MALFORMED_ENTRY = "malformed_entry"
BAD_FILE_NAME = "bad_file_name"
NOT_AN_IMAGE_FILE = "not_an_image_file"
NOT_A_VIDEO_FILE = "not_a_video_file"
NOT_IN_CLASS_FOLDER = "not_in_class_folder"
DUPLICATE_ID = "duplicate_id"
DUPLICATE_VIDEO = "duplicate_video"

_BOM = b"\xef\xbb\xbf"
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".flv", ".mov", ".mkv", ".webm", ".mpg", ".mpeg"})

# Entry kinds: how the worker turns `source` into images.
IMAGE = "image"      # one image file
VIDEO = "video"      # a video file, K frames sampled uniformly
FRAMES = "frames"    # a folder of frame images, K sampled uniformly
PIXELS = "pixels"    # FER2013-style 48x48 grayscale pixel string in `pixels`


class LayoutError(ValueError):
    """The root does not hold the layout a benchmark expects (names what was expected)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One labelled input to decode: an image, a video, a frame folder or a pixel row."""
    id: str
    label: str
    label_id: int
    source: str
    kind: str = IMAGE
    group: str = ""
    line: int | None = None
    pixels: str | None = None
    aus: tuple[tuple[str, float], ...] = ()  # (name, intensity) pairs, e.g. (("AU1", 1.0),)


@dataclasses.dataclass(frozen=True)
class SplitlessRejection(Rejection):
    """A rejected line of a label file that several splits read, which belongs to none of them
    (its split column or name prefix is missing or unknown). Every split's reader lists it; the
    converter keeps it in the first split it converts (of each fold) only, so each input line
    is listed once in all."""


def splitless(rejection: Rejection) -> SplitlessRejection:
    return SplitlessRejection(line=rejection.line, id=rejection.id, reason=rejection.reason)


@dataclasses.dataclass
class SplitListing:
    """The class order and every input item of one split (of one fold).

    questions: multiple-choice benchmarks only, one `questions.Question` per question of the
    release (written, skipped or rejected after the images are decoded; see questions.py).
    """
    classes: list[str]
    items: list[Entry | Rejection]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    questions: list | None = None


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
    """Options that change what a layout reader lists.

    classes: imagefolder only, the class order (folders not in it are rejected).
    with_neutral: CK+ sequences only, also emit the first frame of each labelled sequence
      as "neutral".
    """
    classes: tuple[str, ...] | None = None
    with_neutral: bool = False


# A layout's reader: (root, split, fold, options) -> SplitListing; raises LayoutError when `root`
# does not hold the layout. The split and fold are among those its Layout
# (emocap_jax.evaluate.registry.LAYOUTS) defines; single-split sets use "all".
Reader = Callable[[str, str, int | None, ReaderOptions], SplitListing]


def reject(code: str, detail: str, id: str | None = None,  # pylint: disable=redefined-builtin
           line: int | None = None) -> Rejection:
    return Rejection(line=line, id=id, reason=f"{code}: {detail}")


def whole_number(value: Any) -> int:
    """The integer a label value stands for: an int, or a finite number or number text with no
    fractional part ("3", "3.0", "3.0000000e+00", 3.0).

    Raises ValueError saying what the value is not (a number, finite, whole): a label is never
    truncated ("2.7" is not 2) nor overflows into a traceback ("inf", "nan").
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    elif isinstance(value, numbers.Real):
        number = float(value)
    else:
        raise ValueError(f"{value!r} is not a number")
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    if not number.is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


def natural_key(text: str) -> tuple[list, str]:
    """Sort key that orders "frame2" before "frame10".

    Names the natural order ranks alike ("1.jpg" and "01.jpg", "A.jpg" and "a.jpg") are then
    ordered by the text itself, so the order is total and never depends on the order in which
    the file system lists them.
    """
    return ([int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)],
            text)


def is_unicode(text: str) -> bool:
    """Whether `text` can be stored as UTF-8: False for a file name holding bytes that are not
    UTF-8 (Python lists them as lone surrogates, e.g. "\\udcff")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` with what cannot be stored as UTF-8 written as backslash escapes: the file name
    bytes b"cls/\\xff.jpg" (listed as "cls/\\udcff.jpg") become "cls/\\\\xff.jpg"."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def relative_id(path: str, root: str) -> str:
    """Record id of a file found by scanning: its path under root, '/'-separated, no suffix."""
    rel = os.path.relpath(path, root)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def require_dir(path: str, benchmark: str, what: str, root: str) -> str:
    if not os.path.isdir(path):
        raise LayoutError(f"{benchmark}: expected {what} under {root} (no directory {path})")
    return path


def require_file(path: str, benchmark: str, what: str, root: str) -> str:
    if not os.path.isfile(path):
        raise LayoutError(f"{benchmark}: expected {what} under {root} (no file {path})")
    return path


def first_existing(paths: Iterable[str], is_dir: bool = False) -> str | None:
    check = os.path.isdir if is_dir else os.path.isfile
    for path in paths:
        if check(path):
            return path
    return None


def files_under(directory: str) -> list[str]:
    """Every non-hidden file below `directory`, in natural order of the relative path.

    Linked subfolders are followed (a folder of images linked into a class folder holds inputs
    too; os.walk alone would skip it without a word), each real folder once, so a link back up
    the tree neither loops nor lists a file twice."""
    found = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(found, key=lambda p: natural_key(os.path.relpath(p, directory)))


def subdirectories(directory: str) -> list[str]:
    return sorted((d for d in os.listdir(directory)
                   if not d.startswith(".") and os.path.isdir(os.path.join(directory, d))),
                  key=natural_key)


def scan_class_folders(split_dir: str, id_root: str, classes: Sequence[str],
                       class_of_folder: Callable[[str], str | None], *, kind: str = IMAGE,
                       group_of: Callable[[str], str | Rejection] | None = None
                       ) -> list[Entry | Rejection]:
    """Lists `<split_dir>/<class folder>/**/<file>` as entries.

    Every file inside a recognised class folder becomes an entry (or a rejection when its
    extension is not an image/video one, or `group_of` rejects its name). A folder that is not
    a class (or whose name is not UTF-8) is rejected as a whole, as one item naming how many
    files it holds, so a stray folder of thousands of files does not flood rejected.jsonl.
    An image (video) file directly in `split_dir` belongs to no class and is rejected as
    not_in_class_folder; other files there (READMEs, licences) are not inputs and are ignored.
    """
    extensions = IMAGE_EXTENSIONS if kind == IMAGE else VIDEO_EXTENSIONS
    wrong_type = NOT_AN_IMAGE_FILE if kind == IMAGE else NOT_A_VIDEO_FILE
    class_ids = {name: i for i, name in enumerate(classes)}
    items: list[Entry | Rejection] = []
    for name in sorted(os.listdir(split_dir), key=natural_key):
        path = os.path.join(split_dir, name)
        if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions \
                and not os.path.isdir(path):
            items.append(reject(
                NOT_IN_CLASS_FOLDER, f"{printable(path)} is not inside a class folder (classes: "
                f"{list(classes)})", id=printable(relative_id(path, id_root))))
    for folder in subdirectories(split_dir):
        folder_path = os.path.join(split_dir, folder)
        if not is_unicode(folder):
            count = len(files_under(folder_path))
            items.append(reject(
                BAD_FILE_NAME, f"the name of folder {printable(folder_path)} is not UTF-8; "
                f"its {count} files were not read",
                id=printable(os.path.relpath(folder_path, id_root).replace(os.sep, "/"))))
            continue
        label = class_of_folder(folder)
        if label is None:
            count = len(files_under(folder_path))
            items.append(reject(
                UNKNOWN_CLASS, f"folder {folder_path} is not one of the classes "
                f"{list(classes)}; its {count} files were not read",
                id=os.path.relpath(folder_path, id_root).replace(os.sep, "/")))
            continue
        for path in files_under(folder_path):
            record_id = relative_id(path, id_root)
            if os.path.splitext(path)[1].lower() not in extensions:
                items.append(reject(wrong_type, f"{path} does not have a"
                                    f"{'n image' if kind == IMAGE else ' video'} extension",
                                    id=record_id))
                continue
            group = ""
            if group_of is not None:
                group = group_of(os.path.basename(path))
                if isinstance(group, Rejection):
                    items.append(dataclasses.replace(group, id=record_id))
                    continue
            items.append(Entry(id=record_id, label=label, label_id=class_ids[label],
                               source=path, kind=kind, group=group))
    return items


def case_insensitive_lookup(names: Sequence[str], aliases: dict[str, str] | None = None
                            ) -> Callable[[str], str | None]:
    """Maps a folder/label spelling to the canonical class name (case-insensitive)."""
    table = {name.lower(): name for name in names}
    for alias, name in (aliases or {}).items():
        table[alias.lower()] = name
    return lambda text: table.get(text.strip().lower())


def _first_non_utf8(path: str) -> tuple[int, int, int] | None:
    """(1-based line, 0-based byte in that line, byte value) of the first byte of `path` that is
    not UTF-8, or None."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1:
                raw = raw.removeprefix(_BOM)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return line_no, e.start, raw[e.start]
    return None


def not_utf8_error(path: str, benchmark: str) -> LayoutError:
    """The LayoutError for a text file that does not decode as UTF-8, naming where it breaks."""
    where = _first_non_utf8(path)
    detail = "" if where is None else \
        f": byte {where[1]} of line {where[0]} (0x{where[2]:02x}) is not valid UTF-8"
    return LayoutError(f"{benchmark}: {path} is not UTF-8 text{detail}")


def require_not_wide(path: str, benchmark: str | None = None) -> None:
    """LayoutError naming the encoding of a UTF-16 / UTF-32 text file (see wide_text_error)."""
    wide = wide_text_error(path)
    if wide:
        raise LayoutError(f"{benchmark}: {wide}" if benchmark else wide)


def read_text(path: str, benchmark: str) -> str:
    """The whole text of a UTF-8 file (a BOM is dropped); LayoutError when it is not UTF-8."""
    require_not_wide(path, benchmark)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise not_utf8_error(path, benchmark) from None


def csv_rows(path: str, benchmark: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, cells) of every row of a UTF-8 CSV file (a BOM is dropped).

    Raises LayoutError naming the file and line when the bytes are not UTF-8 or a row cannot be
    read as one line of CSV: no field of the benchmark lists holds a line break, so a row that
    runs over several lines (or past the csv module's field limit) has a quote left open, which
    would otherwise swallow the rows after it.
    """
    require_not_wide(path, benchmark)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise not_utf8_error(path, benchmark) from None
            except csv.Error as e:
                raise LayoutError(f"{benchmark}: {path}: the CSV row that starts on line "
                                  f"{start} cannot be read ({e}); is a quote left open?"
                                  ) from None
            if reader.line_num != start:
                raise LayoutError(f"{benchmark}: {path}: the CSV row that starts on line "
                                  f"{start} runs on to line {reader.line_num}; is a quote left "
                                  "open?")
            yield start, row


def is_blank_row(row: list[str]) -> bool:
    """Whether a CSV row is an empty (or all-space) line: no data row, and no row to count
    (",," is a row of empty cells, not a blank line)."""
    return not row or (len(row) == 1 and not row[0].strip())


def iter_text_lines(path: str) -> Iterator[tuple[int, str | Rejection]]:
    """(1-based line number, stripped text) of non-blank lines; tolerates a UTF-8 BOM.

    A line that is not UTF-8 comes as (line number, a not_utf8 Rejection naming the line and
    byte) instead of its text: decoding it with replacement characters would turn its name
    into one that matches no file, rejected for the wrong reason. A UTF-16 or UTF-32 file is a
    LayoutError naming its encoding.
    """
    require_not_wide(path)
    with open(path, "rb") as f:
        data = f.read()
    for line_no, raw in enumerate(data.splitlines(), start=1):
        if line_no == 1:
            raw = raw.removeprefix(_BOM)
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            yield line_no, reject(NOT_UTF8, f"byte {e.start} of line {line_no} of {path} is "
                                  "not valid UTF-8", line=line_no)
            continue
        if text:
            yield line_no, text
