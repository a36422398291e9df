"""The on-disk record schema: a face sample <-> a serialised `tf.train.Example`.

Every TFRecord shard of the project (caption corpus, benchmarks, synthetic faces) holds
`tf.train.Example` protos with these features (SCHEMA_VERSION 1; text is UTF-8):

| key               | kind        | content                                                    |
|-------------------|-------------|------------------------------------------------------------|
| `id`              | bytes [1]   | unique sample id                                           |
| `image`           | bytes [K]   | encoded images: K=1 for a still, K frames for a video clip |
| `image/format`    | bytes [1]   | codec of `image`, e.g. "jpeg", "png"                       |
| `caption/global`  | bytes [1]   | global sentence (overall affective state); may be empty    |
| `caption/local`   | bytes [R]   | local sentences, one per region / action unit; R may be 0  |
| `caption/summary` | bytes [1]   | summary sentence; may be empty                             |
| `label`           | bytes [1]   | class name or free-text emotion label; may be empty        |
| `label_id`        | int64 [1]   | class index in the dataset's recorded class order, -1 none |
| `au/names`        | bytes [A]   | action-unit names, e.g. "AU12"                             |
| `au/intensity`    | float [A]   | intensities, aligned with `au/names` (stored as float32)   |
| `group`           | bytes [1]   | source group (movie, subject) that must stay in one split  |
| `tokens/global`   | int64 [n]   | optional: token ids of `caption/global` (no SOT/EOT, whole) |
| `tokens/summary`  | int64 [n]   | optional: token ids of `caption/summary`                   |
| `tokens/local`    | int64 [sum] | optional: token ids of every `caption/local` sentence, one |
|                   |             | after the other (empty sentences contribute none)          |
| `tokens/local/lengths` | int64 [R] | optional: ids per local sentence, aligned with `caption/local` |

The `tokens/*` features are written together or not at all. They hold the tokenizer's `encode`
output for each sentence, untruncated and without the start / end tokens, so any context length
can be cut from them; the dataset's `metadata.json` names the tokenizer under `tokenizer` (its
`identity()`: kind and hash of the vocabulary, and the versions of the libraries the ids depend
on, such as ftfy or sentencepiece), and the input pipeline uses the ids only when the
run's tokenizer has that identity, tokenizing the text otherwise.

Decoding tolerates missing optional features (older or foreign files) but requires `id` and
`image`. The schema version lives in each dataset's `metadata.json`.

TensorFlow is not needed: the `Example` proto is the wire-compatible copy that
tensorflow-datasets ships (`tensorflow_datasets.proto.tf_example_generated_pb2`). Importing it
the ordinary way runs all of `tensorflow_datasets/__init__` (~0.8 s and ~650 modules, though
never TensorFlow), so `_load_example_proto` loads just the two generated files under their
canonical module names; a later `import tensorflow_datasets` reuses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys
import types

from google.protobuf.message import DecodeError

SCHEMA_VERSION = 1

_PROTO_PACKAGE = "tensorflow_datasets.proto"
_PROTO_MODULES = ("tf_feature_generated_pb2", "tf_example_generated_pb2")


def _load_example_proto() -> types.ModuleType:
    """Returns tensorflow-datasets' tf_example_generated_pb2 without importing all of tfds."""
    example_name = f"{_PROTO_PACKAGE}.tf_example_generated_pb2"
    if example_name in sys.modules:
        return sys.modules[example_name]
    if "tensorflow_datasets" in sys.modules:  # tfds already paid for: import normally
        from tensorflow_datasets.proto import tf_example_generated_pb2  # only when already loaded
        return tf_example_generated_pb2
    package_spec = importlib.util.find_spec("tensorflow_datasets")  # locates, does not execute
    if package_spec is None or not package_spec.submodule_search_locations:
        raise ImportError("tensorflow-datasets is required for the tf.train.Example proto")
    proto_dir = f"{package_spec.submodule_search_locations[0]}/proto"
    # The generated example module does `from tensorflow_datasets.proto import
    # tf_feature_generated_pb2`; empty stand-in packages satisfy that without running the real
    # package __init__ files. They are removed afterwards so a later real import works.
    placeholders = {}
    for name in ("tensorflow_datasets", _PROTO_PACKAGE):
        placeholder = types.ModuleType(name)
        placeholders[name] = placeholder
        sys.modules[name] = placeholder
    try:
        for short_name in _PROTO_MODULES:
            full_name = f"{_PROTO_PACKAGE}.{short_name}"
            spec = importlib.util.spec_from_file_location(full_name, f"{proto_dir}/{short_name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[full_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[full_name]
                raise
            setattr(placeholders[_PROTO_PACKAGE], short_name, module)
    finally:
        for name, placeholder in placeholders.items():
            if sys.modules.get(name) is placeholder:
                del sys.modules[name]
    return sys.modules[example_name]


_pb2 = _load_example_proto()
Example = _pb2.Example


@dataclasses.dataclass
class FaceRecord:
    """One sample: a face image (or K video frames) with its caption parts and labels."""

    id: str
    images: list[bytes]
    image_format: str = "jpeg"
    global_caption: str = ""
    local_captions: list[str] = dataclasses.field(default_factory=list)
    summary: str = ""
    label: str = ""
    label_id: int = -1
    aus: dict[str, float] = dataclasses.field(default_factory=dict)
    group: str = ""
    # Token ids computed at conversion (all three or none; see the module docstring).
    global_tokens: list[int] | None = None
    summary_tokens: list[int] | None = None
    local_tokens: list[list[int]] | None = None

    @property
    def has_tokens(self) -> bool:
        return self.global_tokens is not None


IMAGE_DIGEST_SIZE = 16


def image_digest(images: list[bytes]) -> bytes:
    """16-byte BLAKE2b of a record's encoded image bytes: equal digests mean byte-identical
    images (evaluation counts test faces that are copies of training faces by it). A still's
    digest is that of its file bytes, so a file on disk can be looked up; a clip's frames are
    hashed each after its length, so frame boundaries cannot shift without changing it."""
    if len(images) == 1:
        return hashlib.blake2b(bytes(images[0]), digest_size=IMAGE_DIGEST_SIZE).digest()
    h = hashlib.blake2b(digest_size=IMAGE_DIGEST_SIZE)
    for image in images:
        h.update(len(image).to_bytes(8, "little"))
        h.update(bytes(image))
    return h.digest()


TOKEN_KEYS = ("tokens/global", "tokens/summary", "tokens/local", "tokens/local/lengths")


def with_token_ids(rec: FaceRecord, tokenizer) -> FaceRecord:
    """`rec` with the token ids of its global, summary and local sentences (`tokenizer.encode`)."""
    texts = [rec.global_caption, rec.summary, *rec.local_captions]
    try:
        ids = tokenizer.encode_batch(texts)
    except (TypeError, ValueError) as e:
        raise ValueError(f"record {rec.id!r}: cannot tokenize its captions: {e}") from e
    return dataclasses.replace(rec, global_tokens=list(ids[0]), summary_tokens=list(ids[1]),
                               local_tokens=[list(x) for x in ids[2:]])


def _check_token_ids(rec_id: str, field: str, ids) -> list[int]:
    ids = list(ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"record {rec_id!r}: {field} must hold non-negative ints, got {i!r}")
    return ids


def _check_text(rec_id: str, field: str, value) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"record {rec_id!r}: {field} must be str, got {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"record {rec_id!r}: {field} is not valid Unicode ({e.reason})") from e


def encode_record(rec: FaceRecord) -> bytes:
    """Serialises a FaceRecord as a tf.train.Example (see the module docstring for the keys)."""
    rec_id = rec.id
    id_bytes = _check_text(rec_id, "id", rec_id)
    if not id_bytes:
        raise ValueError("record id must be a non-empty string")
    if not rec.images:
        raise ValueError(f"record {rec_id!r}: needs at least one image")
    for i, image in enumerate(rec.images):
        if not isinstance(image, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"record {rec_id!r}: images[{i}] must be encoded bytes, got {type(image).__name__}")
    if isinstance(rec.local_captions, str):
        raise TypeError(f"record {rec_id!r}: local_captions must be a list of str, not a str")
    if isinstance(rec.label_id, bool) or not isinstance(rec.label_id, int):
        raise TypeError(
            f"record {rec_id!r}: label_id must be int, got {type(rec.label_id).__name__}")

    example = Example()
    feature = example.features.feature
    feature["id"].bytes_list.value.append(id_bytes)
    feature["image"].bytes_list.value.extend(bytes(image) for image in rec.images)
    feature["image/format"].bytes_list.value.append(
        _check_text(rec_id, "image_format", rec.image_format))
    feature["caption/global"].bytes_list.value.append(
        _check_text(rec_id, "global_caption", rec.global_caption))
    feature["caption/local"].bytes_list.value.extend(
        _check_text(rec_id, f"local_captions[{i}]", s) for i, s in enumerate(rec.local_captions))
    feature["caption/summary"].bytes_list.value.append(
        _check_text(rec_id, "summary", rec.summary))
    feature["label"].bytes_list.value.append(_check_text(rec_id, "label", rec.label))
    feature["label_id"].int64_list.value.append(rec.label_id)
    names = list(rec.aus)
    feature["au/names"].bytes_list.value.extend(
        _check_text(rec_id, "au name", name) for name in names)
    feature["au/intensity"].float_list.value.extend(float(rec.aus[name]) for name in names)
    feature["group"].bytes_list.value.append(_check_text(rec_id, "group", rec.group))
    token_fields = (rec.global_tokens, rec.summary_tokens, rec.local_tokens)
    if any(f is not None for f in token_fields):
        if any(f is None for f in token_fields):
            raise ValueError(f"record {rec_id!r}: global_tokens, summary_tokens and local_tokens "
                             "must be given together")
        if len(rec.local_tokens) != len(rec.local_captions):
            raise ValueError(f"record {rec_id!r}: {len(rec.local_tokens)} local_tokens rows for "
                             f"{len(rec.local_captions)} local_captions")
        feature["tokens/global"].int64_list.value.extend(
            _check_token_ids(rec_id, "global_tokens", rec.global_tokens))
        feature["tokens/summary"].int64_list.value.extend(
            _check_token_ids(rec_id, "summary_tokens", rec.summary_tokens))
        local = [_check_token_ids(rec_id, f"local_tokens[{i}]", row)
                 for i, row in enumerate(rec.local_tokens)]
        feature["tokens/local"].int64_list.value.extend(i for row in local for i in row)
        feature["tokens/local/lengths"].int64_list.value.extend(len(row) for row in local)
    # Deterministic: the same record always gives the same bytes (map keys sorted).
    return example.SerializeToString(deterministic=True)


_EMPTY = ()


def _values(feature, key: str, kind: str):
    """The values of `feature[key]` (of list kind `kind`), empty when the key is absent. One map
    lookup (`in` followed by `[]` costs two): decoding runs once per record per training step."""
    f = feature.get(key)
    return _EMPTY if f is None else getattr(f, kind).value


def _first_text(feature, key: str) -> str:
    values = _values(feature, key, "bytes_list")
    return values[0].decode("utf-8") if values else ""


def decode_record(data: bytes) -> FaceRecord:
    """Parses a serialised tf.train.Example written by `encode_record` back into a FaceRecord.

    Bytes that are not an Example, or one without `id` or `image`, raise ValueError."""
    try:
        example = Example.FromString(data)
    except DecodeError as e:
        # protobuf's error names no record; a ValueError lets the readers add where it lies.
        raise ValueError(f"the record is not a serialised tf.train.Example ({e})") from None
    feature = example.features.feature
    ids = _values(feature, "id", "bytes_list")
    if not ids:
        raise ValueError(f"tf.train.Example has no 'id' feature (keys: {sorted(feature)})")
    rec_id = ids[0].decode("utf-8")
    images = _values(feature, "image", "bytes_list")
    if not images:
        raise ValueError(f"record {rec_id!r}: tf.train.Example has no 'image' feature")
    try:
        names = [n.decode("utf-8") for n in _values(feature, "au/names", "bytes_list")]
        intensities = list(_values(feature, "au/intensity", "float_list"))
        if len(names) != len(intensities):
            raise ValueError(
                f"record {rec_id!r}: {len(names)} au/names but {len(intensities)} au/intensity")
        label_ids = _values(feature, "label_id", "int64_list")
        local_captions = [s.decode("utf-8") for s in _values(feature, "caption/local",
                                                                "bytes_list")]
        tokens = _decode_token_ids(rec_id, feature, len(local_captions))
        return FaceRecord(
            id=rec_id,
            images=list(images),
            image_format=_first_text(feature, "image/format") or "jpeg",
            global_caption=_first_text(feature, "caption/global"),
            local_captions=local_captions,
            summary=_first_text(feature, "caption/summary"),
            label=_first_text(feature, "label"),
            label_id=int(label_ids[0]) if label_ids else -1,
            aus=dict(zip(names, intensities)),
            group=_first_text(feature, "group"),
            **tokens,
        )
    except UnicodeDecodeError as e:
        raise ValueError(f"record {rec_id!r}: a text feature is not valid UTF-8 ({e})") from e


def _decode_token_ids(rec_id: str, feature, num_local: int) -> dict:
    found = [feature.get(key) for key in TOKEN_KEYS]
    if all(f is None for f in found):
        return {}
    if any(f is None for f in found):
        present = [key for key, f in zip(TOKEN_KEYS, found) if f is not None]
        raise ValueError(f"record {rec_id!r}: has {present} but not "
                         f"{sorted(set(TOKEN_KEYS) - set(present))} (token ids come together)")
    global_ids, summary_ids, flat, lengths = (f.int64_list.value for f in found)
    flat = list(flat)
    if len(lengths) != num_local or sum(lengths) != len(flat) or min(lengths, default=0) < 0:
        raise ValueError(f"record {rec_id!r}: tokens/local/lengths {list(lengths)[:10]} do not "
                         f"split the {len(flat)} tokens/local ids over its {num_local} local "
                         "sentences")
    local, start = [], 0
    for n in lengths:
        local.append(flat[start:start + n])
        start += n
    return {"global_tokens": list(global_ids), "summary_tokens": list(summary_ids),
            "local_tokens": local}
