"""Synthetic benchmark splits for every evaluation protocol, drawn by the synthetic-faces generator.

    python -m data_prep.synthetic_benchmarks --output DIR [--per-class 40] [--compound-per-class 20]
        [--clips-per-class 10] [--frames 8] [--size 96] [--seed 0] [--overwrite]

writes three TFRecord datasets (the layout of `data_prep.benchmarks`' output, so
`python -m emocap_jax.evaluate --benchmark synthetic --data DIR` finds them):

    DIR/basic/      held-out faces of the 8 basic classes (label, identity group, drawn AUs and an
                    EmoCap-style caption each): zero-shot, linear probe, few-shot, AU detection,
                    retrieval. For equal --seed, --size and --per-class these are exactly the faces
                    of the synthetic corpus's eval split (`emocap_jax.data.synthetic.corpus`, eval_per_class).
    DIR/basic/questions.jsonl   multiple-choice questions about those faces: which emotion, and
                    which facial movement is visible (4 options each)
    DIR/basic/regions.jsonl     where each face's brows, eyes, cheeks, nose, mouth and jaw are
                    (pixel boxes) and which region each local sentence describes (grounding)
    DIR/compound/   held-out faces of the 6 compound classes (compound protocol)
    DIR/video/      clips of the 8 basic classes, F frames each, the expression ramping from a
                    nearly neutral face to its apex while the head turns slightly (video protocol)

Every face is a pure function of (seed, split, index): the same arguments give the same records.
`--mode=eval` generates them on first use (evaluate/suite.py); the command above is
data_prep/synthetic_benchmarks.py.
Compound and video people come from their own identity streams, never seen in training.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import shutil
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from emocap_jax.data.synthetic.corpus import (DEFAULT_FACES_PER_IDENTITY, DEFAULT_JPEG_QUALITY, REGIONS_FILE,
                                              eval_grounding_records, face_record, plan_corpus,
                                              write_grounding_file)
from emocap_jax.data.synthetic.faces import (
    AU_CODES,
    BASIC_CLASSES,
    COMPOUND_CLASSES,
    MIN_FACE_SIZE,
    SPLIT_CODES,
    STREAM_SCHEDULE,
    VISIBILITY_THRESHOLD,
    render_face,
    sample_face_spec,
    stream_rng,
)
from emocap_jax.data.example_codec import FaceRecord
from emocap_jax.data.shard_writer import ShardedRecordWriter
from emocap_jax.evaluate.multiple_choice import QUESTIONS_FILE
from emocap_jax.evaluate.prompts import ACTION_UNITS, EMOTIONS, canonical

SPLITS = ("basic", "compound", "video")
NUM_OPTIONS = 4
# Streams of this module (the generator's own tags are 1..4).
STREAM_QUESTIONS = 11
# Head rotation added over a clip, in degrees, so frames differ by more than the expression.
CLIP_ROTATION_DEG = 3.0


def _jpeg(image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _record(spec, record_id: str, seed: int, split: str, index: int, label_id: int,
            images: list[bytes]) -> FaceRecord:
    """A FaceRecord with the caption the corpus writes for the same face."""
    fields = face_record(spec, record_id, "", seed, split, index)
    return FaceRecord(id=record_id, images=images, image_format="jpeg",
                      global_caption=fields["global"], local_captions=fields["local"],
                      summary=fields["summary"], label=spec.label, label_id=label_id,
                      aus=fields["aus"], group=fields["group"])


def _identities(seed: int, split: str, count: int, faces_per_identity: int) -> np.ndarray:
    """People assigned to faces at random, each with about faces_per_identity faces."""
    order = stream_rng(STREAM_SCHEDULE, seed, SPLIT_CODES[split], 0).permutation(count)
    return order // faces_per_identity


def basic_records(seed: int, per_class: int, size: int, quality: int,
                  faces_per_identity: int = DEFAULT_FACES_PER_IDENTITY):
    """The synthetic corpus's eval faces (same plan, same streams)."""
    _, tasks = plan_corpus(0, seed, per_class, faces_per_identity=faces_per_identity)
    for task in tasks:
        spec = sample_face_spec(seed, "eval", task.index, task.label, task.identity_index)
        yield _record(spec, task.record_id, seed, "eval", task.index,
                      BASIC_CLASSES.index(task.label), [_jpeg(render_face(spec, size), quality)])


def compound_records(seed: int, per_class: int, size: int, quality: int,
                     faces_per_identity: int = DEFAULT_FACES_PER_IDENTITY):
    count = per_class * len(COMPOUND_CLASSES)
    people = _identities(seed, "eval_compound", count, faces_per_identity)
    for j in range(count):
        label = COMPOUND_CLASSES[j // per_class]
        spec = sample_face_spec(seed, "eval_compound", j, label, int(people[j]))
        yield _record(spec, f"syn_cmp_{j:05d}", seed, "eval_compound", j,
                      COMPOUND_CLASSES.index(label), [_jpeg(render_face(spec, size), quality)])


def clip_frames(spec, frames: int) -> list:
    """Specs of a clip: AU intensities scaled by (i + 1) / frames, so the clip goes from a faint
    onset to the sampled apex; AUs below the visibility threshold are not drawn."""
    out = []
    for i in range(frames):
        t = (i + 1) / frames
        aus = {c: round(v * t, 3) for c, v in spec.aus.items() if round(v * t, 3) > VISIBILITY_THRESHOLD}
        out.append(dataclasses.replace(
            spec, aus=aus, unilateral_aus=frozenset(spec.unilateral_aus & set(aus)),
            rotation_deg=spec.rotation_deg + CLIP_ROTATION_DEG * (t - 0.5)))
    return out


def video_records(seed: int, clips_per_class: int, frames: int, size: int, quality: int,
                  faces_per_identity: int = DEFAULT_FACES_PER_IDENTITY):
    count = clips_per_class * len(BASIC_CLASSES)
    people = _identities(seed, "eval_video", count, faces_per_identity)
    for j in range(count):
        label = BASIC_CLASSES[j // clips_per_class]
        spec = sample_face_spec(seed, "eval_video", j, label, int(people[j]))
        images = [_jpeg(render_face(frame, size), quality) for frame in clip_frames(spec, frames)]
        # The caption describes the apex, the frame that carries the label.
        yield _record(spec, f"syn_vid_{j:05d}", seed, "eval_video", j,
                      BASIC_CLASSES.index(label), images)


def _emotion_option(label: str) -> str:
    noun = EMOTIONS[canonical(label)].noun
    return "a face with a neutral expression" if noun == "neutral" else f"a face showing {noun}"


def _options(rng: np.random.Generator, correct: str, distractors: Sequence[str]) -> tuple[list[str], int]:
    chosen = [distractors[i] for i in rng.choice(len(distractors), NUM_OPTIONS - 1, replace=False)]
    options = [correct] + chosen
    order = rng.permutation(NUM_OPTIONS)
    return [options[i] for i in order], int(np.flatnonzero(order == 0)[0])


def questions_for(records: Sequence[FaceRecord], seed: int) -> list[dict[str, Any]]:
    """An emotion question for every face, and an action-unit question for every face with a
    drawn AU (its strongest AU against three AUs that are not drawn)."""
    questions = []
    for i, record in enumerate(records):
        rng = stream_rng(STREAM_QUESTIONS, seed, 0, i)
        others = [_emotion_option(c) for c in BASIC_CLASSES if c != record.label]
        options, answer = _options(rng, _emotion_option(record.label), others)
        questions.append({"qid": f"{record.id}/emotion", "id": record.id, "task": "emotion",
                          "question": "Which emotion does this face show?", "options": options,
                          "answer": answer})
        drawn = {int(name.removeprefix("AU")): value for name, value in record.aus.items()}
        absent = [c for c in AU_CODES if c not in drawn]
        if drawn and len(absent) >= NUM_OPTIONS - 1:
            strongest = max(sorted(drawn), key=lambda c: drawn[c])
            describe = lambda c: ACTION_UNITS[c].present[:1].upper() + ACTION_UNITS[c].present[1:] + "."  # noqa: E731
            options, answer = _options(rng, describe(strongest), [describe(c) for c in absent])
            questions.append({"qid": f"{record.id}/action_unit", "id": record.id, "task": "action_unit",
                              "question": "Which facial movement is visible on this face?",
                              "options": options, "answer": answer})
    return questions


def _write(out_dir: pathlib.Path, records, total: int, classes: Sequence[str], split: str, metadata: dict[str, Any], num_shards: int, progress: bool) -> list[FaceRecord]:
    written = []
    with ShardedRecordWriter(out_dir, min(num_shards, max(1, total)), classes=list(classes),
                             metadata={"benchmark": "synthetic", "split": split, **metadata},
                             created_by="data_prep.synthetic_benchmarks", overwrite=True) as writer:
        for record in tqdm(records, total=total, desc=f"synthetic {split}", unit="record", disable=not progress):
            writer.add(record)
            written.append(dataclasses.replace(record, images=[]))
    return written


def generate_benchmarks(
    output_dir: str | os.PathLike,
    seed: int = 0,
    per_class: int = 40,
    compound_per_class: int = 20,
    clips_per_class: int = 10,
    frames: int = 8,
    size: int = 96,
    *,
    splits: Sequence[str] = SPLITS,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    num_shards: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes the requested splits under output_dir; returns {split: dataset folder} plus
    "questions" (the questions file) when the basic split is written."""
    problems = []
    for name, value, low in (("per_class", per_class, 1), ("compound_per_class", compound_per_class, 1),
                             ("clips_per_class", clips_per_class, 1), ("frames", frames, 1), ("size", size, MIN_FACE_SIZE),
                             ("num_shards", num_shards, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            problems.append(f"{name} must be an integer >= {low}, got {value!r}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        problems.append(f"unknown splits {unknown}; known: {list(SPLITS)}")
    if not list(splits):  # would write nothing and report success (`--splits ""`)
        problems.append(f"no splits given; choose from {list(SPLITS)}")
    if problems:
        raise ValueError("; ".join(problems))
    out = pathlib.Path(output_dir)
    existing = [s for s in splits if (out / s).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {existing}; pass overwrite=True (--overwrite) to replace them")
    generator = {"seed": seed, "size": size, "jpeg_quality": jpeg_quality}
    summary: dict[str, Any] = {"output_dir": str(out)}
    for split in splits:
        shutil.rmtree(out / split, ignore_errors=True)
    if "basic" in splits:
        records = _write(out / "basic", basic_records(seed, per_class, size, jpeg_quality), per_class * len(BASIC_CLASSES),
                         BASIC_CLASSES, "basic", {"generator": {**generator, "per_class": per_class}}, num_shards, progress)
        questions = questions_for(records, seed)
        path = out / "basic" / QUESTIONS_FILE
        path.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
        regions = write_grounding_file(out / "basic" / REGIONS_FILE,
                                       eval_grounding_records(seed, per_class, size))
        summary.update(basic=str(out / "basic"), questions=str(path), num_questions=len(questions),
                       regions=str(regions))
    if "compound" in splits:
        _write(out / "compound", compound_records(seed, compound_per_class, size, jpeg_quality),
               compound_per_class * len(COMPOUND_CLASSES), COMPOUND_CLASSES, "compound",
               {"generator": {**generator, "per_class": compound_per_class}}, num_shards, progress)
        summary["compound"] = str(out / "compound")
    if "video" in splits:
        _write(out / "video", video_records(seed, clips_per_class, frames, size, jpeg_quality),
               clips_per_class * len(BASIC_CLASSES), BASIC_CLASSES, "video",
               {"generator": {**generator, "clips_per_class": clips_per_class}, "frames_per_record": frames},
               num_shards, progress)
        summary["video"] = str(out / "video")
    return summary
