"""Convert a caption-corpus manifest (JSON lines + image files) into TFRecord shards:
`convert_manifest` (training's `prepare_data` converts the synthetic corpus with it) and, on the
command line,

    python -m data_prep.captions --manifest M.jsonl --root DIR --output OUT \\
        [--num-shards 16] [--max-side PX] [--workers N] [--captions-from-labels] \\
        [--max-sentence-words 200] [--overwrite]

Each manifest line is one JSON object:

    {"id": "movie123_f0042", "image": "images/movie123_f0042.jpg",
     "global": "...", "local": ["...", "..."], "summary": "...",
     "label": "happily surprised", "aus": {"AU5": 0.9}, "group": "movie123"}

`image` is relative to --root (or absolute); `label`, `aus` and `group` are optional. The file
is UTF-8 (a byte-order mark and CRLF line ends are fine); one in UTF-16 or UTF-32 is refused
before anything is written, naming its encoding. Every line
ends up either written to a shard or listed in OUT/rejected.jsonl with a reason of the form
"<code>: <detail>" (codes below), so a few bad lines never kill a long conversion and nothing
is dropped silently. A line that repeats a key in any of its objects (two "image" keys, or two
"AU5" in "aus") is rejected as duplicate_key rather than read with one of the values (its id
is then unknown, as for malformed JSON). When an id appears on several lines the first line owns
it (even if that line is rejected for another reason) and later ones are rejected as duplicates.

Images are fully decoded (truncated files are caught), EXIF rotation is applied, grayscale /
CMYK / palette images become RGB, alpha is composited on white, and the longer side is
optionally limited to --max-side. The result is stored as JPEG quality 95; an RGB JPEG that needs
no change keeps its original bytes, so it is not recompressed.

With --captions-from-labels the lines need only "id", "image" and "label": the global sentence is
one of the zero-shot templates filled with the label's prompt word (chosen deterministically per
id), the summary is the label's class description (emocap_jax/data/label_captions.py: the
vocabulary the evaluation prompts use), local sentences are empty, and label_id indexes the sorted
set of labels (recorded in metadata.json as `classes`) of the lines not rejected on their text
(a bad field, a repeated id). A class all of whose images turn out unreadable keeps its place, so
the ids do not shift once the images are fixed, and is listed in metadata.json's
`classes_without_records` and warned about. Training does not need this step for
labelled faces: records with a label and no captions (`data_prep.benchmarks` output) get the same
captions at training time, a template drawn per step.

Output is deterministic (same input, same shards byte for byte, whatever --workers) and atomic:
shards are renamed into place on success and metadata.json, written last, marks a finished
dataset.

The image workers are forked, or spawned once JAX (or another runtime with native thread pools)
is loaded, as in training's `prepare_data` (`emocap_jax.data.pools`): a script that converts with
workers > 1 after importing JAX needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from emocap_jax.data import json_keys
from emocap_jax.data import label_captions
from emocap_jax.data import pools
from emocap_jax.data.example_codec import FaceRecord
from emocap_jax.data.rgb import to_rgb
from emocap_jax.data.shard_writer import REJECTED_FILE, ShardedRecordWriter
from emocap_jax.tokenizers import get_tokenizer

# Rejection reason codes (the part of `reason` before the colon).
BLANK_LINE = "blank_line"
NOT_UTF8 = "not_utf8"
MALFORMED_JSON = "malformed_json"
DUPLICATE_KEY = "duplicate_key"
NOT_AN_OBJECT = "not_an_object"
MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
BAD_TYPE = "bad_type"
BAD_VALUE = "bad_value"
MISSING_IMAGE = "missing_image"
IMAGE_NOT_FOUND = "image_not_found"
BAD_IMAGE = "bad_image"
MISSING_CAPTION = "missing_caption"
EMPTY_CAPTION = "empty_caption"
SENTENCE_TOO_LONG = "sentence_too_long"
MISSING_LABEL = "missing_label"
UNKNOWN_LABEL = "unknown_label"

JPEG_QUALITY = 95
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    root: str
    max_side: int | None = None
    captions_from_labels: bool = False
    max_sentence_words: int = 200
    label_to_id: dict[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class Rejection:
    line: int
    id: str | None
    reason: str

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """A manifest line whose text passed validation; its image is not checked yet."""
    line: int
    id: str
    image_path: str
    global_caption: str
    local_captions: list[str]
    summary: str
    label: str = ""
    label_id: int = -1
    aus: dict[str, float] = dataclasses.field(default_factory=dict)
    group: str = ""


class _Invalid(Exception):
    """Raised inside line validation; carries the rejection reason."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string_field(obj: dict, key: str, *, required: bool, missing_code: str) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise _Invalid(missing_code, f"no {key!r} field")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise _Invalid(BAD_TYPE, f"{key!r} must be a string, got {_type_name(value)}")
    _check_unicode(repr(key), value)
    return value.strip()


def _check_unicode(where: str, value: str) -> None:
    # JSON escapes can smuggle lone surrogates ("\ud800") that cannot be stored as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _Invalid(NOT_UTF8, f"{where} is not valid Unicode ({e.reason})") from None


def _check_sentence(where: str, sentence: str, max_words: int) -> None:
    if not sentence:
        raise _Invalid(EMPTY_CAPTION, f"{where} is empty")
    num_words = len(sentence.split())
    if num_words > max_words:
        raise _Invalid(SENTENCE_TOO_LONG, f"{where} has {num_words} words (max {max_words})")


def template_captions(record_id: str, label: str) -> tuple[str, str]:
    """(global, summary) sentences for a label; the global template depends only on the id."""
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return (label_captions.global_caption(label, digest[0]),
            label_captions.summary_caption(label))


def _decode_line(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Invalid(NOT_UTF8, f"byte {e.start} of the line is not valid UTF-8") from None
    if not text.strip():
        raise _Invalid(BLANK_LINE, "the line is empty")
    try:
        obj = json_keys.loads(text)
    except json.JSONDecodeError as e:
        hint = ""
        if "\r" in text.rstrip():
            hint = ("; the line holds a carriage return (CR) without a line feed: lines "
                    "separated by CR alone (classic Mac OS) read as one line")
        raise _Invalid(MALFORMED_JSON, f"{e.msg} at column {e.colno}{hint}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise _Invalid(MALFORMED_JSON, str(e)) from None
    if not isinstance(obj, dict):
        raise _Invalid(NOT_AN_OBJECT, f"expected a JSON object, got {_type_name(obj)}")
    # Checked before the id is read: a repeated "id" leaves no single id to report.
    repeated = json_keys.repeated_key(obj)
    if repeated:
        raise _Invalid(DUPLICATE_KEY, repeated)
    return obj


def _read_id(obj: dict) -> str:
    if "id" not in obj or obj["id"] is None:
        raise _Invalid(MISSING_ID, "no 'id' field")
    if not isinstance(obj["id"], str):
        raise _Invalid(BAD_TYPE, f"'id' must be a string, got {_type_name(obj['id'])}")
    _check_unicode("'id'", obj["id"])
    record_id = obj["id"].strip()
    if not record_id:
        raise _Invalid(MISSING_ID, "'id' is empty")
    return record_id


def _validate_fields(obj: dict, record_id: str, line: int, options: ConvertOptions
                     ) -> ManifestEntry:
    image = _string_field(obj, "image", required=True, missing_code=MISSING_IMAGE)
    if not image:
        raise _Invalid(MISSING_IMAGE, "'image' is empty")
    if "\0" in image:  # JSON allows "\u0000"; no file name holds it, and open() raises ValueError
        raise _Invalid(BAD_VALUE, "'image' contains a NUL character (U+0000)")
    image_path = os.path.join(options.root, image)  # an absolute `image` overrides root

    if options.captions_from_labels:
        label = _string_field(obj, "label", required=True, missing_code=MISSING_LABEL)
        if not label:
            raise _Invalid(MISSING_LABEL, "'label' is empty")
        global_caption, summary = template_captions(record_id, label)
        local: list[str] = []
    else:
        label = _string_field(obj, "label", required=False, missing_code=MISSING_LABEL)
        global_caption = _string_field(obj, "global", required=True,
                                       missing_code=MISSING_CAPTION)
        summary = _string_field(obj, "summary", required=True, missing_code=MISSING_CAPTION)
        if "local" not in obj or obj["local"] is None:
            raise _Invalid(MISSING_CAPTION, "no 'local' field (use [] when there are none)")
        if not isinstance(obj["local"], list):
            raise _Invalid(BAD_TYPE, f"'local' must be a list of strings, got "
                           f"{_type_name(obj['local'])}")
        local = []
        for i, sentence in enumerate(obj["local"]):
            if not isinstance(sentence, str):
                raise _Invalid(BAD_TYPE, f"'local'[{i}] must be a string, got "
                               f"{_type_name(sentence)}")
            _check_unicode(f"'local'[{i}]", sentence)
            local.append(sentence.strip())
    for where, sentence in [("'global'", global_caption), ("'summary'", summary)] + \
            [(f"'local'[{i}]", s) for i, s in enumerate(local)]:
        _check_sentence(where, sentence, options.max_sentence_words)

    aus: dict[str, float] = {}
    raw_aus = obj.get("aus")
    if raw_aus is not None:
        if not isinstance(raw_aus, dict):
            raise _Invalid(BAD_TYPE, f"'aus' must be an object, got {_type_name(raw_aus)}")
        for name, value in raw_aus.items():
            _check_unicode("an 'aus' name", name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Invalid(BAD_TYPE, f"'aus'[{name!r}] must be a number, got "
                               f"{_type_name(value)}")
            # Records store AUs as float32: 1e300 is a finite double but would be written as
            # inf. (An int too large for a double is caught here too, before math.isfinite.)
            if not abs(value) <= _FLOAT32_MAX:
                raise _Invalid(BAD_VALUE, f"'aus'[{name!r}] is {value}, not a finite float32 "
                               "number")
            aus[name] = float(value)
    group = _string_field(obj, "group", required=False, missing_code="")

    label_id = -1
    if options.label_to_id is not None and label:
        if label not in options.label_to_id:
            raise _Invalid(UNKNOWN_LABEL, f"label {label!r} is not one of the classes "
                                          f"{sorted(options.label_to_id)}")
        label_id = options.label_to_id[label]
    return ManifestEntry(line=line, id=record_id, image_path=image_path,
                         global_caption=global_caption, local_captions=local, summary=summary,
                         label=label, label_id=label_id, aus=aus, group=group)


def parse_manifest_line(line: int, raw: bytes, options: ConvertOptions
                        ) -> ManifestEntry | Rejection:
    """Validates the text of one manifest line (1-based `line`, raw bytes without newline)."""
    record_id = None
    try:
        obj = _decode_line(raw)
        record_id = _read_id(obj)
        return _validate_fields(obj, record_id, line, options)
    except _Invalid as e:
        return Rejection(line=line, id=record_id, reason=str(e))


def _manifest_lines(manifest: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of every line; decoding is per line, done later."""
    with open(manifest, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\r\n")
            if line_no == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # UTF-8 byte-order mark
            yield line_no, raw


def _validated_entries(manifest: str, options: ConvertOptions, counter: list[int]
                       ) -> Iterator[ManifestEntry | Rejection]:
    """Parses every line in order and rejects duplicate ids; counts lines into counter[0]."""
    first_line_of: dict[str, int] = {}
    for line_no, raw in _manifest_lines(manifest):
        counter[0] += 1
        item = parse_manifest_line(line_no, raw, options)
        if item.id is not None:
            first = first_line_of.setdefault(item.id, line_no)
            # The label is checked against the class list last, so a line rejected for its
            # label is otherwise sound: a repeat of an id is reported as that first (the class
            # list from --captions-from-labels leaves out the labels of repeated ids).
            if first != line_no and (isinstance(item, ManifestEntry)
                                     or item.code == UNKNOWN_LABEL):
                item = Rejection(line=line_no, id=item.id,
                                 reason=f"{DUPLICATE_ID}: id first seen on line {first}")
        yield item


def _to_rgb(img: Image.Image) -> Image.Image:
    """Inference's own conversion (emocap_jax.data.rgb.to_rgb), so a model is trained and
    evaluated on the pixels it is later given: transparency composited onto white, 16-bit
    grayscale scaled to 8 bits (Pillow's convert("RGB") saturates it)."""
    return to_rgb(img)


def encode_face_image(data: bytes, max_side: int | None) -> bytes:
    """Decodes image bytes fully and returns RGB JPEG bytes (original bytes when unchanged).

    Raises OSError/ValueError/SyntaxError/Image.DecompressionBombError for bad images.
    """
    with Image.open(io.BytesIO(data)) as img:
        source_format = img.format
        img.load()  # decodes every byte: truncated or corrupt files fail here, not in training
        changed = False
        if img.getexif().get(0x0112, 1) not in (1, None):  # EXIF orientation
            img = ImageOps.exif_transpose(img)
            changed = True
        if img.mode != "RGB":
            img = _to_rgb(img)
            changed = True
        if max_side and max(img.size) > max_side:
            scale = max_side / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.Resampling.LANCZOS)
            changed = True
        if source_format == "JPEG" and not changed:
            return data
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def process_entry(item: ManifestEntry | Rejection, options: ConvertOptions
                  ) -> FaceRecord | Rejection:
    """Reads and normalises the image of a validated entry (runs in worker processes)."""
    if isinstance(item, Rejection):
        return item

    def reject(code: str, detail: str) -> Rejection:
        return Rejection(line=item.line, id=item.id, reason=f"{code}: {detail}")

    try:
        with open(item.image_path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return reject(IMAGE_NOT_FOUND, f"no image file at {item.image_path}")
    except OSError as e:
        return reject(BAD_IMAGE, f"cannot read {item.image_path}: {e.strerror or e}")
    if not data:
        return reject(BAD_IMAGE, f"{item.image_path} is empty (0 bytes)")
    try:
        image = encode_face_image(data, options.max_side)
    except UnidentifiedImageError:
        # Pillow's own message names a BytesIO by memory address, which would make
        # rejected.jsonl differ between runs.
        return reject(BAD_IMAGE, f"{item.image_path} is not in any known image format")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return reject(BAD_IMAGE, f"{item.image_path} is not a readable image ({e})")
    return FaceRecord(
        id=item.id, images=[image], image_format="jpeg", global_caption=item.global_caption,
        local_captions=list(item.local_captions), summary=item.summary, label=item.label,
        label_id=item.label_id, aus=dict(item.aus), group=item.group)


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """Maps fn over items in input order, on a process pool when workers > 1."""
    if workers <= 1:
        yield from map(fn, items)
        return
    chunksize = 8
    # Pool.imap drains its input eagerly; feeding bounded windows keeps memory flat on
    # manifests of millions of lines.
    window = workers * chunksize * 8
    # Not forked from a process that runs JAX (training converts its corpus in one): see pools.
    with pools.pool_context().Pool(workers) as pool:
        for batch in _batched(items, window):
            yield from pool.imap(fn, batch, chunksize)


def require_utf8_path(what: str, path: str) -> None:
    """metadata.json (the source paths) and rejected.jsonl (image paths) are UTF-8 text, but a
    Linux file name may hold any bytes (Python gives the undecodable ones as surrogates): such a
    path is refused before the conversion, not when those files are written at its end."""
    try:
        os.path.abspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {path!r}: the path is not valid UTF-8, and metadata.json and "
                         "rejected.jsonl record it as text; rename it, or link to it under a "
                         "UTF-8 name") from None


# Byte-order marks of the encodings a text file is saved in by Windows tools ("Unicode" in
# Notepad, `>` in Windows PowerShell 5), longest first (UTF-32 LE starts like UTF-16 LE).
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
              (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def wide_text_error(path: str) -> str | None:
    """Why a text file that must be UTF-8 is not, when it starts with a UTF-16 or UTF-32
    byte-order mark (read line by line, each of its lines would be rejected for a cause none
    names), else None."""
    with open(path, "rb") as f:
        head = f.read(4)
    for bom, encoding in _WIDE_BOMS:
        if head.startswith(bom):
            return (f"{path} is {encoding} text (it starts with the byte-order mark "
                    f"{bom.hex(' ')}); save it as UTF-8")
    return None


def _count_lines(manifest: str) -> int:
    with open(manifest, "rb") as f:
        return sum(1 for _ in f)


def _collect_labels(manifest: str, options: ConvertOptions) -> list[str]:
    """The sorted labels of the lines the conversion goes on to read an image for: a line
    rejected on its text (a bad field, a repeated id) adds no class. Whether an image is readable
    is known only once it is decoded, so a class whose every image is rejected stays in the list
    (its label_id then stays the same when the images are fixed and the manifest converted
    again) and is reported (`convert_manifest`)."""
    return sorted({item.label for item in _validated_entries(manifest, options, [0])
                   if isinstance(item, ManifestEntry)})


class EmptyClassesWarning(UserWarning):
    """Classes of the dataset's class list that no written record has (every line of them was
    rejected: see rejected.jsonl)."""


def convert_manifest(manifest: str | os.PathLike, root: str | os.PathLike,
                     output: str | os.PathLike, num_shards: int = 16,
                     max_side: int | None = None, workers: int | None = None,
                     captions_from_labels: bool = False, max_sentence_words: int = 200,
                     overwrite: bool = False, progress: bool = True,
                     classes: Sequence[str] | None = None,
                     tokenizer: Any = "clip") -> dict[str, Any]:
    """Converts a manifest into a dataset directory; returns a summary.

    `classes` fixes the class order (label_id = position of the record's label; a label outside
    it is rejected); without it, --captions-from-labels numbers the sorted labels it finds and
    other manifests get label_id -1.

    `tokenizer` (a name for `emocap_jax.tokenizers.get_tokenizer`, a Tokenizer, or None for none)
    stores the token ids of every sentence in the records and its identity in metadata.json, so
    training with that tokenizer reads ids instead of tokenizing (see `example_codec`).

    The summary holds `output`, `num_lines`, `num_written`, `num_rejected`,
    `rejected_by_reason` ({code: count}), `classes_without_records` (of the classes that
    --captions-from-labels reads off the lines, those that lost every line to rejections: also in
    metadata.json, and an EmptyClassesWarning) and the written `metadata`.
    """
    manifest, root, output = os.fspath(manifest), os.fspath(root), os.fspath(output)
    require_utf8_path("manifest", manifest)
    require_utf8_path("root", root)
    wide = wide_text_error(manifest)
    if wide:
        raise ValueError(f"manifest {wide} (JSON lines are UTF-8)")
    if max_side is not None and max_side <= 0:
        max_side = None
    if max_sentence_words < 1:
        raise ValueError(f"max_sentence_words must be >= 1, got {max_sentence_words}")
    workers = workers or os.cpu_count() or 1
    if isinstance(tokenizer, str):
        tokenizer = get_tokenizer(tokenizer)
    options = ConvertOptions(root=root, max_side=max_side,
                             captions_from_labels=captions_from_labels,
                             max_sentence_words=max_sentence_words)
    if classes is not None:
        classes = list(classes)
        if len(set(classes)) != len(classes) or not all(classes):
            raise ValueError(f"classes must be distinct non-empty names, got {classes}")
    classes_from_lines = classes is None and captions_from_labels
    if classes_from_lines:
        classes = _collect_labels(manifest, options)
    if classes is not None:
        options = dataclasses.replace(
            options, label_to_id={label: i for i, label in enumerate(classes)})

    metadata = {
        "source": {"manifest": os.path.abspath(manifest), "root": os.path.abspath(root)},
        "conversion": {"max_side": max_side, "jpeg_quality": JPEG_QUALITY,
                       "captions_from_labels": captions_from_labels,
                       "max_sentence_words": max_sentence_words},
    }
    lines_read = [0]
    rejected_by_reason: collections.Counter[str] = collections.Counter()
    written_labels: set[str] = set()
    with ShardedRecordWriter(output, num_shards, metadata=metadata, classes=classes,
                             created_by="data_prep.captions", overwrite=overwrite,
                             tokenizer=tokenizer) as writer:
        entries = _validated_entries(manifest, options, lines_read)
        results = _ordered_map(_ProcessWithOptions(options), entries, workers)
        total = _count_lines(manifest) if progress else None
        for result in tqdm(results, total=total, desc="converting", unit="line",
                           disable=not progress):
            if isinstance(result, Rejection):
                writer.reject(result.line, result.id, result.reason)
                rejected_by_reason[result.code] += 1
            else:
                writer.add(result)
                written_labels.add(result.label)
        if writer.num_records + writer.num_rejected != lines_read[0]:
            raise AssertionError(
                f"{lines_read[0]} manifest lines but {writer.num_records} written + "
                f"{writer.num_rejected} rejected")
        writer.update_metadata({"num_input_lines": lines_read[0],
                                "rejected_by_reason": dict(sorted(rejected_by_reason.items()))})
        # Only a class list read off the lines: a given one (--classes) may name classes this
        # manifest does not have at all, which metadata's label_counts shows.
        empty_classes = [c for c in classes if c not in written_labels] \
            if classes_from_lines else []
        if classes_from_lines:
            writer.update_metadata({"classes_without_records": empty_classes})
        written_metadata = writer.close()
    if empty_classes:
        warnings.warn(f"{output}: {len(empty_classes)} of the {len(classes)} classes have no "
                      f"written record (every line of them was rejected: see "
                      f"{REJECTED_FILE}): {', '.join(map(repr, empty_classes))}",
                      EmptyClassesWarning, stacklevel=2)
    return {
        "output": output,
        "num_lines": lines_read[0],
        "num_written": written_metadata["num_records"],
        "num_rejected": written_metadata["num_rejected"],
        "rejected_by_reason": dict(sorted(rejected_by_reason.items())),
        "classes_without_records": empty_classes,
        "metadata": written_metadata,
    }


@dataclasses.dataclass(frozen=True)
class _ProcessWithOptions:
    """Picklable `process_entry` bound to options, for the worker pool."""
    options: ConvertOptions

    def __call__(self, item: ManifestEntry | Rejection) -> FaceRecord | Rejection:
        return process_entry(item, self.options)
