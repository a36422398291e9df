"""The embedded synthetic-faces corpus: a seeded generator of captioned, AU-labelled faces.

A fresh machine trains and evaluates on this corpus with no download. The output has exactly the
layout a user brings for a real caption corpus (emocap_jax/data/manifest.py)::

    DIR/manifest.jsonl           training faces, one JSON object per line:
                                 {"id", "image" (relative to DIR), "global", "local", "summary",
                                  "label", "aus" (drawn AUs only), "group" (identity)}
    DIR/images/<id>.jpg          training images (basic and compound expressions)
    DIR/eval/<class>/<id>.jpg    held-out faces of the 8 basic classes, benchmark-style folders
    DIR/eval/manifest.jsonl      the same fields for the eval faces ("image" relative to DIR/eval)
    DIR/eval/regions.jsonl       per eval face: where its facial regions are and which region each
                                 local sentence describes (`grounding_record`; the grounding
                                 protocol of emocap_jax.evaluate reads it)
    DIR/preview.png              contact sheet: one column per class, labels under the faces
    DIR/corpus.json              generator arguments, version, class lists, counts

Eval identities never appear in training. Every face is a pure function of (seed, split, index), so
the same arguments give byte-identical files whatever the number of worker processes.

`prepare_data` in emocap_jax/train.py generates it for a run without a train_dir; the CLI::

    python -m data_prep.synthetic --output data/synthetic --num 10000 --seed 0
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from emocap_jax.data.pools import pool_context
from emocap_jax.data.synthetic.appearance import with_appearance
from emocap_jax.data.synthetic.captions import Caption, write_caption
from emocap_jax.data.synthetic.faces import (
    ALL_CLASSES,
    AU_CODES,
    AU_NAMES,
    BASIC_CLASSES,
    COMPOUND_CLASSES,
    SPLIT_CODES,
    STREAM_APPEARANCE,
    STREAM_CAPTION,
    STREAM_SCHEDULE,
    VISIBILITY_THRESHOLD,
    MIN_FACE_SIZE,
    FaceSpec,
    face_regions,
    render_face,
    sample_face_spec,
    stream_rng,
)

# 1.1.0 adds eval/regions.jsonl; images, manifests and captions are those of 1.0.0.
GENERATOR_VERSION = "1.1.0"
# Beside an eval split (the corpus's eval/ folder, a converted dataset folder): one JSON object per
# face, see `grounding_record`.
REGIONS_FILE = "regions.jsonl"
IMAGE_FORMATS = {"jpeg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}
DEFAULT_COMPOUND_FRACTION = 0.15
DEFAULT_FACES_PER_IDENTITY = 4
DEFAULT_JPEG_QUALITY = 92
# The arguments' ranges, which data_prep.synthetic's options share.
SIZE_RANGE = (MIN_FACE_SIZE, 1024)
JPEG_QUALITY_RANGE = (1, 100)
PREVIEW_ROWS = 6
# Below this many faces the start-up of worker processes costs more than it saves.
_MIN_FACES_FOR_POOL = 200


@dataclasses.dataclass(frozen=True)
class FaceTask:
    """One face to draw: ``sample_face_spec(seed, split, index, label, identity_index)``."""

    split: str
    index: int
    label: str
    identity_index: int
    record_id: str
    image: str  # relative to the split's root directory


@dataclasses.dataclass(frozen=True)
class _RenderSettings:
    seed: int
    size: int
    image_format: str
    jpeg_quality: int
    output_dir: str
    au_drop_probability: float = 0.0
    appearance_captions: bool = False


def face_caption(spec: FaceSpec, seed: int, split: str, index: int, appearance_captions: bool = False) -> Caption:
    """The caption of face ``index`` of ``split``, written from the spec's drawn AUs; with
    ``appearance_captions`` its global sentence is followed by one on the face's looks
    (``appearance``), drawn from a stream of its own so every other sentence stays the same."""
    caption_rng = stream_rng(STREAM_CAPTION, seed, SPLIT_CODES[split], index)
    caption = write_caption(spec.label, spec.aus, spec.unilateral_aus, caption_rng)
    if not appearance_captions:
        return caption
    appearance_rng = stream_rng(STREAM_APPEARANCE, seed, SPLIT_CODES[split], index)
    return dataclasses.replace(caption, global_=with_appearance(caption.global_, spec, appearance_rng))


def face_record(spec: FaceSpec, record_id: str, image: str, seed: int, split: str, index: int,
                appearance_captions: bool = False) -> dict[str, Any]:
    """Manifest record of a face; captions come from the spec's drawn AUs."""
    caption = face_caption(spec, seed, split, index, appearance_captions)
    return {
        "id": record_id,
        "image": image,
        "global": caption.global_,
        "local": list(caption.local),
        "summary": caption.summary,
        "label": spec.label,
        "aus": {f"AU{code}": value for code, value in sorted(spec.aus.items())},
        "group": spec.group,
    }


def grounding_record(spec: FaceSpec, record_id: str, seed: int, split: str, index: int, size: int) -> dict[str, Any]:
    """What the grounding protocol needs of one face, as a line of ``REGIONS_FILE``::

        {"id": record id,
         "image_size": [width, height] of the stored image, in pixels,
         "regions": {region: [[x0, y0, x1, y1], ...]} for every region of faces.FACE_REGIONS:
                    half-open pixel boxes of the stored image (faces.face_regions),
         "local": [{"region": region or null, "text": sentence}, ...]: the face's local caption
                  sentences in caption order, each with the region it describes (null: the
                  relaxed-face sentence, which describes none)}
    """
    caption = face_caption(spec, seed, split, index)
    return {
        "id": record_id,
        "image_size": [size, size],
        "regions": {region: [list(box) for box in boxes] for region, boxes in face_regions(spec, size).items()},
        "local": [{"region": region, "text": text} for region, text in zip(caption.local_regions, caption.local)],
    }


def eval_grounding_records(seed: int, eval_per_class: int, size: int, faces_per_identity: int = DEFAULT_FACES_PER_IDENTITY,
                           au_drop_probability: float = 0.0) -> list[dict[str, Any]]:
    """``grounding_record`` of every eval face of a corpus generated with these arguments (with
    the default ``au_drop_probability``, the same faces `emocap_jax.evaluate.synthetic_benchmarks`
    writes as its basic split), in manifest order. Nothing is rendered: about 5 ms a face."""
    _, tasks = plan_corpus(0, seed, eval_per_class, faces_per_identity=faces_per_identity)
    return [
        grounding_record(sample_face_spec(seed, task.split, task.index, task.label, task.identity_index, au_drop_probability),
                         task.record_id, seed, task.split, task.index, size)
        for task in tasks
    ]


def write_grounding_file(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> pathlib.Path:
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    _write_jsonl(tmp, records)
    os.replace(tmp, path)
    return path


def ensure_eval_regions(corpus_dir: str | os.PathLike, dataset_dir: str | os.PathLike) -> pathlib.Path:
    """Puts the eval faces' ``REGIONS_FILE`` into ``dataset_dir`` (the eval split converted to
    TFRecords) unless it is there: copied from the corpus, or, for a corpus written before the
    file existed, computed from the arguments in its corpus.json (the faces are a pure function of
    them)."""
    corpus_dir, dataset_dir = pathlib.Path(corpus_dir), pathlib.Path(dataset_dir)
    target = dataset_dir / REGIONS_FILE
    if target.is_file():
        return target
    source = corpus_dir / "eval" / REGIONS_FILE
    if source.is_file():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        return target
    arguments = json.loads((corpus_dir / "corpus.json").read_text(encoding="utf-8"))["arguments"]
    records = eval_grounding_records(arguments["seed"], arguments["eval_per_class"], arguments["size"],
                                     arguments.get("faces_per_identity", DEFAULT_FACES_PER_IDENTITY),
                                     arguments.get("au_drop_probability", 0.0))
    return write_grounding_file(target, records)


def _render_task(task: FaceTask, settings: _RenderSettings) -> dict[str, Any]:
    spec = sample_face_spec(settings.seed, task.split, task.index, task.label, task.identity_index, settings.au_drop_probability)
    image = render_face(spec, settings.size)
    root = pathlib.Path(settings.output_dir) / ("eval" if task.split == "eval" else "")
    path = root / task.image
    pil_format, _ = IMAGE_FORMATS[settings.image_format]
    if pil_format == "JPEG":
        image.save(path, format="JPEG", quality=settings.jpeg_quality)
    else:
        image.save(path, format="PNG")
    return face_record(spec, task.record_id, task.image, settings.seed, task.split, task.index,
                       settings.appearance_captions)


def _train_label_schedule(num: int, seed: int, compound_fraction: float) -> list[str]:
    """Balanced labels: basic classes in equal shares, compounds in equal shares, then shuffled."""
    num_compound = int(round(num * compound_fraction))
    labels = [BASIC_CLASSES[i % len(BASIC_CLASSES)] for i in range(num - num_compound)]
    labels += [COMPOUND_CLASSES[i % len(COMPOUND_CLASSES)] for i in range(num_compound)]
    order = stream_rng(STREAM_SCHEDULE, seed, 0, 0).permutation(len(labels))
    return [labels[i] for i in order]


def plan_corpus(
    num: int,
    seed: int,
    eval_per_class: int,
    extension: str = ".jpg",
    compound_fraction: float = DEFAULT_COMPOUND_FRACTION,
    faces_per_identity: int = DEFAULT_FACES_PER_IDENTITY,
) -> tuple[list[FaceTask], list[FaceTask]]:
    """The faces of a corpus in manifest order: (training tasks, eval tasks).

    Training labels are balanced and shuffled; eval faces are class-major. Identities cycle so each
    person shows several expressions; eval people come from a separate stream (group prefix
    ``syn_eval_id``) and never appear in training.
    """
    train_labels = _train_label_schedule(num, seed, compound_fraction)
    train_identities = max(1, math.ceil(num / faces_per_identity))
    train = [
        FaceTask("train", i, label, i % train_identities, f"syn_{i:06d}", f"images/syn_{i:06d}{extension}")
        for i, label in enumerate(train_labels)
    ]
    num_eval = eval_per_class * len(BASIC_CLASSES)
    # Eval people get faces_per_identity faces each, spread over random classes.
    eval_identity = stream_rng(STREAM_SCHEDULE, seed, 1, 0).permutation(num_eval) // faces_per_identity
    evaluation = []
    for j in range(num_eval):
        label = BASIC_CLASSES[j // eval_per_class]
        record_id = f"syn_eval_{j:05d}"
        evaluation.append(FaceTask("eval", j, label, int(eval_identity[j]), record_id, f"{label}/{record_id}{extension}"))
    return train, evaluation


def _prepare_output_dir(output_dir: pathlib.Path) -> None:
    """Creates ``output_dir``; clears it only when it holds a previous synthetic corpus."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output path {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not (output_dir / "corpus.json").is_file():
            raise ValueError(
                f"output directory {output_dir} is not empty and holds no corpus.json from this generator; "
                "refusing to write into it (choose an empty or new directory)"
            )
        for name in ("images", "eval"):
            shutil.rmtree(output_dir / name, ignore_errors=True)
        for name in ("manifest.jsonl", "preview.png", "corpus.json"):
            (output_dir / name).unlink(missing_ok=True)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    for label in BASIC_CLASSES:
        (output_dir / "eval" / label).mkdir(parents=True, exist_ok=True)


def _write_jsonl(path: pathlib.Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _resolve_workers(workers: int | None, num_faces: int) -> int:
    if workers is None:
        return 1 if num_faces < _MIN_FACES_FOR_POOL else max(1, os.cpu_count() or 1)
    return max(1, int(workers))




def _run_tasks(tasks: Sequence[FaceTask], settings: _RenderSettings, workers: int, progress: bool) -> list[dict[str, Any]]:
    render = functools.partial(_render_task, settings=settings)
    bar = tqdm(total=len(tasks), desc="synthetic faces", unit="face", disable=not progress)
    records = []
    try:
        if workers <= 1:
            for task in tasks:
                records.append(render(task))
                bar.update()
        else:
            context = pool_context()
            chunksize = max(1, min(32, len(tasks) // (workers * 8) or 1))
            with context.Pool(workers) as pool:
                for record in pool.imap(render, tasks, chunksize=chunksize):
                    records.append(record)
                    bar.update()
    finally:
        bar.close()
    return records


def _preview_records(eval_records: Sequence[dict[str, Any]], train_records: Sequence[dict[str, Any]]) -> tuple[list[list[dict[str, Any]]], str]:
    """Up to PREVIEW_ROWS records per basic class, from the eval split when it has any."""
    source, root = (eval_records, "eval") if eval_records else (train_records, "")
    columns = []
    for label in BASIC_CLASSES:
        columns.append([record for record in source if record["label"] == label][:PREVIEW_ROWS])
    return columns, root


def write_preview(output_dir: pathlib.Path, columns: Sequence[Sequence[dict[str, Any]]], image_root: str, size: int) -> pathlib.Path:
    """Contact sheet: one column per basic class, each face with its label under it."""
    cell = max(size, 96)
    caption_height = 14
    rows = max((len(column) for column in columns), default=0)
    sheet = Image.new("RGB", (cell * len(columns), max(1, rows) * (cell + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for col, column in enumerate(columns):
        for row, record in enumerate(column):
            with Image.open(output_dir / image_root / record["image"]) as face:
                tile = face.convert("RGB").resize((cell, cell), Image.BICUBIC)
            x, y = col * cell, row * (cell + caption_height)
            sheet.paste(tile, (x, y))
            draw.text((x + 3, y + cell + 1), record["label"], fill=(0, 0, 0), font=font)
    path = output_dir / "preview.png"
    sheet.save(path, format="PNG")
    return path


def generate_corpus(
    output_dir: str | os.PathLike,
    num: int,
    seed: int = 0,
    size: int = 96,
    eval_per_class: int = 40,
    workers: int | None = None,
    image_format: str = "jpeg",
    *,
    compound_fraction: float = DEFAULT_COMPOUND_FRACTION,
    faces_per_identity: int = DEFAULT_FACES_PER_IDENTITY,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    au_drop_probability: float = 0.0,
    appearance_captions: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes the synthetic corpus to ``output_dir`` and returns a summary.

    num: training faces (a ``compound_fraction`` share of them show compound expressions);
    eval_per_class: held-out faces per basic class, from identities not used in training;
    workers: processes (None: all cores for large corpora, in-process for small ones);
    au_drop_probability: each AU of a face's class, key AUs included, left out with this
    probability (``faces.sample_aus``; 0: the usual corpus, where a class's AUs come together);
    appearance_captions: each global caption also names what the face looks like (skin, hair,
    tilt, light, background, clothes; ``appearance``); the images and other sentences are the
    same as without it.
    The summary holds the paths written, counts per label for each split and the throughput.
    """
    image_format = {"jpg": "jpeg"}.get(str(image_format).lower(), str(image_format).lower())
    _check_arguments(num, seed, size, eval_per_class, workers, image_format, compound_fraction, faces_per_identity, jpeg_quality, au_drop_probability,
                     appearance_captions)
    out = pathlib.Path(output_dir)
    _prepare_output_dir(out)
    _, extension = IMAGE_FORMATS[image_format]
    train_tasks, eval_tasks = plan_corpus(num, seed, eval_per_class, extension, compound_fraction, faces_per_identity)
    settings = _RenderSettings(seed, size, image_format, jpeg_quality, str(out), au_drop_probability,
                               appearance_captions)
    start = time.perf_counter()
    records = _run_tasks(train_tasks + eval_tasks, settings, _resolve_workers(workers, len(train_tasks) + len(eval_tasks)), progress)
    seconds = time.perf_counter() - start
    train_records, eval_records = records[: len(train_tasks)], records[len(train_tasks) :]
    _write_jsonl(out / "manifest.jsonl", train_records)
    _write_jsonl(out / "eval" / "manifest.jsonl", eval_records)
    write_grounding_file(out / "eval" / REGIONS_FILE, eval_grounding_records(seed, eval_per_class, size, faces_per_identity, au_drop_probability))
    columns, preview_root = _preview_records(eval_records, train_records)
    preview = write_preview(out, columns, preview_root, size)
    counts = {
        "train": dict(sorted(collections.Counter(r["label"] for r in train_records).items(), key=lambda kv: ALL_CLASSES.index(kv[0]))),
        "eval": dict(sorted(collections.Counter(r["label"] for r in eval_records).items(), key=lambda kv: ALL_CLASSES.index(kv[0]))),
    }
    corpus = {
        "generator": "data_prep.synthetic",
        "version": GENERATOR_VERSION,
        "arguments": {
            "num": num,
            "seed": seed,
            "size": size,
            "eval_per_class": eval_per_class,
            "image_format": image_format,
            "compound_fraction": compound_fraction,
            "faces_per_identity": faces_per_identity,
            "jpeg_quality": jpeg_quality,
            "au_drop_probability": au_drop_probability,
            "appearance_captions": appearance_captions,
        },
        "classes": list(BASIC_CLASSES),
        "compound_classes": list(COMPOUND_CLASSES),
        "au_codes": [f"AU{code}" for code in AU_CODES],
        "au_names": {f"AU{code}": AU_NAMES[code] for code in AU_CODES},
        "au_visibility_threshold": VISIBILITY_THRESHOLD,
        "train_manifest": "manifest.jsonl",
        "eval_manifest": "eval/manifest.jsonl",
        "eval_image_root": "eval",
        "eval_regions": f"eval/{REGIONS_FILE}",
        "counts": counts,
        "num_train": len(train_records),
        "num_eval": len(eval_records),
        "num_train_identities": len({r["group"] for r in train_records}),
        "num_eval_identities": len({r["group"] for r in eval_records}),
    }
    (out / "corpus.json").write_text(json.dumps(corpus, indent=2) + "\n", encoding="utf-8")
    total = len(records)
    return {
        "output_dir": str(out),
        "train_manifest": str(out / "manifest.jsonl"),
        "eval_manifest": str(out / "eval" / "manifest.jsonl"),
        "eval_dir": str(out / "eval"),
        "preview": str(preview),
        "corpus_json": str(out / "corpus.json"),
        "counts": counts,
        "num_train": len(train_records),
        "num_eval": len(eval_records),
        "seconds": seconds,
        "faces_per_second": total / seconds if seconds > 0 else float("inf"),
    }


def _check_arguments(num, seed, size, eval_per_class, workers, image_format, compound_fraction, faces_per_identity, jpeg_quality, au_drop_probability=0.0,
                     appearance_captions=False) -> None:
    problems = []
    if not isinstance(num, (int, np.integer)) or num < 0:
        problems.append(f"num must be a non-negative integer, got {num!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(size, (int, np.integer)) or not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        problems.append(f"size must be an integer in [{SIZE_RANGE[0]}, {SIZE_RANGE[1]}], got {size!r}")
    if not isinstance(eval_per_class, (int, np.integer)) or eval_per_class < 0:
        problems.append(f"eval_per_class must be a non-negative integer, got {eval_per_class!r}")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 0):
        problems.append(f"workers must be None or a non-negative integer, got {workers!r}")
    if image_format not in IMAGE_FORMATS:
        problems.append(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    if not 0.0 <= compound_fraction <= 1.0:
        problems.append(f"compound_fraction must be in [0, 1], got {compound_fraction!r}")
    if not isinstance(faces_per_identity, (int, np.integer)) or faces_per_identity < 1:
        problems.append(f"faces_per_identity must be a positive integer, got {faces_per_identity!r}")
    if not JPEG_QUALITY_RANGE[0] <= jpeg_quality <= JPEG_QUALITY_RANGE[1]:
        problems.append(f"jpeg_quality must be in [{JPEG_QUALITY_RANGE[0]}, {JPEG_QUALITY_RANGE[1]}], got {jpeg_quality!r}")
    if not 0.0 <= au_drop_probability < 1.0:
        problems.append(f"au_drop_probability must be in [0, 1), got {au_drop_probability!r}")
    if not isinstance(appearance_captions, (bool, np.bool_)):
        problems.append(f"appearance_captions must be True or False, got {appearance_captions!r}")
    if num == 0 and eval_per_class == 0:
        problems.append("nothing to generate: num and eval_per_class are both 0")
    if problems:
        raise ValueError("; ".join(problems))
