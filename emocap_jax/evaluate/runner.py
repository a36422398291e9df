"""Runs one protocol of one benchmark with a model: finds the dataset folders, extracts features
with an `Encoder`, calls the protocol's pure functions and assembles the result dict that
`report.py` writes.

    encoder = Encoder.load("runs/demo/export")
    result = run(encoder, "rafdb", "zero_shot", "/data/rafdb_tfrecords")
    result["value"]          # the headline metric (UAR for classification) in [0, 1]

`data` is a dataset folder (metadata.json + shards), or the output folder of
`python -m data_prep.benchmarks` / `data_prep.synthetic_benchmarks`, where the benchmark's test
split (and train split, folds) are found by name: OUT/<split>/ or OUT/fold<k>/<split>/.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Optional, Sequence

import numpy as np

import emocap_jax.storage as storage
from emocap_jax.data.shard_writer import datasets_below, load_metadata
from emocap_jax.evaluate import (au_detection, few_shot, grounding, leakage, linear_probe,
                                 metrics, multiple_choice, registry, retrieval, zero_shot)
from emocap_jax.evaluate.features import Encoder, ImageFeatures, read_records
from emocap_jax.evaluate.prompts import canonical, compound_parts

# Frames sampled per clip unless asked otherwise (DFEW / MAFW practice), capped at what is stored.
DEFAULT_VIDEO_FRAMES = 16


@dataclasses.dataclass
class Options:
    """Protocol settings (the command line's flags; `python -m emocap_jax.evaluate --help`)."""
    batch_size: int = 256
    frames: Optional[int] = None
    zero_shot_mode: str = "embedding"
    templates: Optional[tuple[str, ...]] = None
    prompt_words: Optional[tuple[str, ...]] = None
    fold: Optional[int] = None
    train_data: Optional[str] = None
    num_folds: Optional[int] = None
    val_fraction: float = 0.2
    c_grid: tuple[float, ...] = linear_probe.DEFAULT_C_GRID
    shots: tuple[int, ...] = few_shot.DEFAULT_SHOTS
    seeds: tuple[int, ...] = few_shot.DEFAULT_SEEDS
    caption_field: str = "full"
    questions: Optional[str] = None
    mc_template: str = multiple_choice.DEFAULT_TEMPLATE
    au_threshold: float = 0.0
    seed: int = 0
    balanced_probe: bool = True
    regions: Optional[str] = None
    grounding_tolerance: float = 0.0


@dataclasses.dataclass(frozen=True)
class Split:
    """The data of one evaluation (one official fold, or the whole benchmark)."""
    fold: Optional[int]
    test: str
    train: Optional[str]


def is_dataset(path) -> bool:
    return storage.isfile(storage.join(path, "metadata.json"))


def find_splits(spec: registry.Benchmark, data, fold: Optional[int] = None,
                train_data: Optional[str] = None) -> list[Split]:
    """The test (and train) dataset folders of a benchmark under `data`."""
    data = storage.fspath(data)
    for flag, path in (("--data", data), ("--train-data", train_data)):
        if path is not None and storage.isfile(path):
            raise FileNotFoundError(f"{flag} {path}: is a file, not a dataset folder (give the "
                                    "folder holding metadata.json)")
    if not storage.isdir(data):
        raise FileNotFoundError(f"--data {data}: no such directory")
    if train_data is not None and not is_dataset(train_data):
        raise FileNotFoundError(f"--train-data {train_data}: not a dataset folder (no "
                                "metadata.json)")
    if fold is not None and not spec.official_folds:
        raise ValueError(f"--fold {fold}: {spec.name} has no official folds")
    if is_dataset(data):
        return [Split(fold, str(data), train_data)]
    hint = (f"convert it with `python -m data_prep.benchmarks --name {spec.converter} --root "
            f"<download> --output {data}`" if spec.converter else
            "give the dataset folder itself (the one holding metadata.json)")
    if spec.official_folds:
        folds = [fold] if fold is not None else list(spec.official_folds)
        if fold is not None and fold not in spec.official_folds:
            raise ValueError(f"--fold {fold}: {spec.name} has folds {list(spec.official_folds)}")
        splits = []
        for k in folds:
            test = storage.join(data, f"fold{k}", spec.test_split)
            if not is_dataset(test):
                raise FileNotFoundError(f"--data {data}: no dataset at {test} ({hint})")
            train = storage.join(data, f"fold{k}", spec.train_split) if spec.train_split else None
            splits.append(Split(k, str(test), str(train) if train and is_dataset(train)
                                else train_data))
        return splits
    test = storage.join(data, spec.test_split)
    if not is_dataset(test):
        below = datasets_below(data)
        if below:  # converted already, in other splits (`data_prep.benchmarks --val-fraction`)
            hint = f"it holds the datasets {', '.join(below)}: give the one to test on"
            if {"train", "val"} <= set(below):
                hint += (f" and the training one, --data {storage.join(data, 'val')} "
                         f"--train-data {storage.join(data, 'train')}")
        raise FileNotFoundError(f"--data {data}: neither a dataset folder (metadata.json) nor a "
                                f"folder holding {spec.test_split}/metadata.json ({hint})")
    train = storage.join(data, spec.train_split) if spec.train_split else None
    return [Split(None, str(test), train_data if train_data is not None else
                  (str(train) if train is not None and is_dataset(train) else None))]


def _num_frames(spec: registry.Benchmark, data_dir: str, requested: Optional[int]
                ) -> Optional[int]:
    """Frames per clip for video benchmarks: the request (or 16), at most what each record
    stores (sampling more would only repeat frames).

    `data_prep` records the stored count as metadata.json's `frames_per_record`; a dataset
    written by another tool may lack it. Then the request is used as it is, and without one the
    default with a warning naming the folder: falling back to one frame instead (as before)
    evaluated every clip on a single frame without a word, a different protocol from the one
    asked for."""
    if not spec.video:
        return None
    wanted = requested or DEFAULT_VIDEO_FRAMES
    metadata = load_metadata(data_dir)
    if "frames_per_record" not in metadata:
        if requested is None:
            warnings.warn(f"{data_dir}: metadata.json has no 'frames_per_record' (a dataset not "
                          f"written by data_prep), so the frames stored per clip are unknown; "
                          f"sampling the default {wanted} per clip (frames repeat in clips that "
                          "store fewer). Pass --frames N, or record the count in metadata.json",
                          stacklevel=2)
        return wanted
    stored = metadata["frames_per_record"]
    if isinstance(stored, bool) or not isinstance(stored, int) or stored < 1:
        raise ValueError(f"{storage.join(data_dir, 'metadata.json')}: 'frames_per_record' must "
                         f"be a positive whole number, got {stored!r}")
    return max(1, min(wanted, stored))


def _resolve(spec: registry.Benchmark, splits: Sequence[Split]) -> registry.Benchmark:
    """The benchmark with its classes fixed by the first test split, checked against the recorded
    class order of every test and train folder: label_id i must name the same class in all of them
    (a train split or a later fold converted in another order would otherwise be scored against
    the wrong prompts or probe classes without a word)."""
    resolved = spec.resolve(load_metadata(splits[0].test).get("classes"))
    folders = [s.test for s in splits] + [s.train for s in splits if s.train is not None]
    for folder in dict.fromkeys(folders):
        try:
            resolved.resolve(load_metadata(folder).get("classes"))
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from None
    return resolved


def _labelled(features: ImageFeatures) -> ImageFeatures:
    missing = int(np.sum(features.labels < 0))
    if missing:
        raise ValueError(f"{features.data_dir}: {missing} of {len(features.labels)} records have "
                         "no label_id; classification needs a labelled dataset")
    return features


def _prediction_rows(features: ImageFeatures, predictions, classes, fold=None, rows=None):
    rows = np.arange(len(features.ids)) if rows is None else rows
    return [{"id": features.ids[r], "label": classes[features.labels[r]],
             "prediction": classes[int(p)], **({"fold": fold} if fold is not None else {})}
            for r, p in zip(rows, predictions)]


def _pooled(fold_reports: Sequence[dict], classes: Sequence[str]) -> dict:
    """One classification report over all folds (summed confusion matrices) plus fold means."""
    cm = np.sum([np.asarray(r["confusion_matrix"]) for r in fold_reports], axis=0)
    recalls = metrics.per_class_recall(cm)
    return {
        "num_examples": int(cm.sum()), "uar": metrics.uar(cm), "war": metrics.war(cm),
        "macro_f1": metrics.macro_f1(cm), "classes": list(classes),
        "per_class_recall": {c: (None if np.isnan(r) else float(r))
                             for c, r in zip(classes, recalls)},
        "confusion_matrix": cm.tolist(),
        "fold_summary": {m: metrics.summarize_folds([r[m] for r in fold_reports])
                         for m in ("uar", "war", "macro_f1")},
    }


def _headline(pooled: dict, metric: str, folded: bool) -> float:
    """Fold mean when there are folds (the DFEW / MAFW convention), else the pooled value."""
    return pooled["fold_summary"][metric]["mean"] if folded else pooled[metric]


# ------------------------------------------------------------------------------------------------
# Protocols


def run_zero_shot(encoder: Encoder, spec, splits, options: Options, frames: bool = False,
                  single_frame_baseline: bool = False) -> dict:
    spec = _resolve(spec, splits)
    words = options.prompt_words or spec.prompt_words
    if len(words) != len(spec.classes):
        raise ValueError(f"--classes gives {len(words)} prompt words for {len(spec.classes)} "
                         f"classes {list(spec.classes)}")
    templates = options.templates or spec.templates
    texts = zero_shot.prompt_texts(words, templates, spec.descriptions, options.zero_shot_mode)
    prompt_emb = zero_shot.prompt_embeddings(encoder.texts, texts)
    fold_reports, predictions, baseline = [], [], []
    for split in splits:
        num_frames = _num_frames(spec, split.test, options.frames) if frames else None
        feats = _labelled(encoder.images(split.test, num_frames))
        scores = zero_shot.zero_shot_scores(feats.features, prompt_emb, options.zero_shot_mode)
        pred = np.argmax(scores, axis=-1)
        report = metrics.classification_report(feats.labels, pred, list(spec.classes))
        report.update(fold=split.fold, dataset=split.test, num_frames=num_frames)
        if spec.group == "compound FER" or spec.paper_protocol == registry.COMPOUND:
            report["partial_match"] = compound_partial_match(feats.labels, pred, spec.classes)
        fold_reports.append(report)
        predictions += _prediction_rows(feats, pred, spec.classes, split.fold)
        if single_frame_baseline and num_frames and num_frames > 1:
            # The middle frame alone: what averaging the frames adds.
            middle = _labelled(encoder.images(split.test, 1))
            single = np.argmax(zero_shot.zero_shot_scores(middle.features, prompt_emb,
                                                          options.zero_shot_mode), axis=-1)
            baseline.append(metrics.classification_report(middle.labels, single,
                                                          list(spec.classes)))
    pooled = _pooled(fold_reports, spec.classes)
    result = {"report": pooled, "folds": fold_reports, "predictions": predictions,
              "prompts": _prompts_used(words, templates, spec.descriptions,
                                       options.zero_shot_mode),
              "value": _headline(pooled, "uar", len(splits) > 1), "metric": "uar"}
    if baseline:
        result["single_frame"] = {m: metrics.summarize_folds([b[m] for b in baseline])["mean"]
                                  for m in ("uar", "war", "macro_f1")}
    return result


def _prompts_used(words, templates, descriptions, mode: str) -> dict:
    """What the class prompts were made of, for the report: the descriptions in mode
    "description" (where prompt words and templates play no part), else words and templates."""
    if mode == "description":
        return {"mode": mode, "descriptions": list(descriptions)}
    return {"mode": mode, "words": list(words), "templates": list(templates)}


def compound_partial_match(labels, predictions, classes) -> Optional[float]:
    """Fraction of faces whose predicted compound shares at least one basic emotion with the
    true one ("happily surprised" for "fearfully surprised" counts): how often the model gets one
    component right. None when the class names do not decompose."""
    parts = []
    for name in classes:
        p = compound_parts(name) or ([canonical(name)] if canonical(name) else None)
        if p is None:
            return None
        parts.append(set(p))
    hits = [bool(parts[int(y)] & parts[int(p)]) for y, p in zip(labels, predictions)]
    return float(np.mean(hits)) if hits else None


def _groups(features: ImageFeatures) -> np.ndarray:
    """The records' subjects ("" where none), as the encoder read them with the pixels."""
    if features.groups is None:
        raise ValueError(f"{features.data_dir}: the encoder returned no groups (subjects) for "
                         "the records; the probe needs them to keep subjects apart")
    return np.asarray(features.groups)


def _digests(features: ImageFeatures) -> np.ndarray:
    if features.digests is None:
        raise ValueError(f"{features.data_dir}: the encoder returned no image digests for the "
                         "records; copies of training faces in the test split cannot be counted")
    return features.digests


def _copies(train_digests, test_digests, where: str) -> int:
    """Test faces byte-identical to a training face, with a warning naming `where` if any."""
    count = leakage.train_test_copies(train_digests, test_digests)
    leakage.warn_copies(count, len(test_digests), where)
    return count


def _fold_groups(groups: np.ndarray, digests: np.ndarray) -> tuple[np.ndarray, str]:
    """What the cross-validation folds keep apart, and its name for messages: the subjects where
    the records name them; else the images themselves, so that byte-identical copies (FER2013's
    folders hold hundreds) fall into one fold instead of training the probe on the faces it is
    then scored on; README "Evaluation" has what it changed on FER2013)."""
    if (groups != "").any():
        return groups, "subjects"
    return np.asarray([bytes(d).hex() for d in np.asarray(digests, np.uint8)]), "distinct images"


def _probe_data(encoder: Encoder, spec, split: Split, options: Options):
    """(train features, test features, fold index pairs or None, groups or None): with a train
    split the probe trains on it; otherwise cross-validation over the test dataset, folds kept
    apart by subject / actor, or by image where no record names one (`_fold_groups`). `groups`
    are the subjects ("" where none), for the C carve-out and the few-shot draws."""
    num_frames = _num_frames(spec, split.test, options.frames)
    test = _labelled(encoder.images(split.test, num_frames))
    if split.train is not None:
        return _labelled(encoder.images(split.train, num_frames)), test, None, None
    num_folds = options.num_folds or spec.cv_folds
    if not num_folds:
        raise ValueError(f"{spec.name} has no train split under the data folder and no "
                         "cross-validation folds: pass --train-data DIR or --num-folds N")
    groups = _groups(test)
    fold_groups, group_word = _fold_groups(groups, _digests(test))
    try:
        folds = linear_probe.cv_folds(test.labels, fold_groups, num_folds, options.seed,
                                      spec.classes, group_word)
    except linear_probe.PartlyGrouped as e:
        raise ValueError(f"{split.test}: {e}") from None
    except linear_probe.TooFewForFolds as e:
        default = "" if options.num_folds else f"; {num_folds} is {spec.name}'s default"
        hint = (f" (--num-folds {e.most}{default}), or give a training split with --train-data DIR"
                if e.most >= 2 else " (--train-data DIR)")
        raise ValueError(f"{split.test}: {e}{hint}") from None
    return None, test, folds, groups


def run_linear_probe(encoder: Encoder, spec, splits, options: Options) -> dict:
    spec = _resolve(spec, splits)
    fold_reports, predictions = [], []
    for split in splits:
        train, test, folds, groups = _probe_data(encoder, spec, split, options)
        if folds is None:
            try:
                report = linear_probe.linear_probe(
                    train.features, train.labels, test.features, test.labels, spec.classes,
                    train_groups=_groups(train), val_fraction=options.val_fraction,
                    c_grid=options.c_grid, seed=options.seed, balanced=options.balanced_probe)
            except linear_probe.PartlyGrouped as e:
                # Few-shot draws no carve-out by subject and still runs on such a folder.
                raise ValueError(f"{split.train}: {e}; the linear probe chooses C on a part of "
                                 "this training folder that must not share a subject with the "
                                 "rest") from None
            report.update(fold=split.fold, dataset=split.test, train_dataset=split.train,
                          train_test_copies=_copies(_digests(train), _digests(test),
                                                    f"{split.test} against {split.train}"))
            predictions += _prediction_rows(test, report.pop("predictions"), spec.classes,
                                            split.fold)
            fold_reports.append(report)
            continue
        for k, (tr, te) in enumerate(folds, start=1):
            report = linear_probe.linear_probe(
                test.features[tr], test.labels[tr], test.features[te], test.labels[te],
                spec.classes, train_groups=groups[tr], val_fraction=options.val_fraction,
                c_grid=options.c_grid, seed=options.seed, balanced=options.balanced_probe)
            report.update(fold=k, dataset=split.test, cross_validation=True,
                          test_groups=sorted(set(groups[te].tolist())),
                          train_test_copies=_copies(_digests(test)[tr], _digests(test)[te],
                                                    f"{split.test} fold {k}"))
            predictions += _prediction_rows(test, report.pop("predictions"), spec.classes, k,
                                            rows=te)
            fold_reports.append(report)
    pooled = _pooled(fold_reports, spec.classes)
    return {"report": pooled, "folds": fold_reports, "predictions": predictions,
            "value": _headline(pooled, "uar", len(fold_reports) > 1), "metric": "uar",
            "train_test_copies": sum(r["train_test_copies"] for r in fold_reports)}


def run_few_shot(encoder: Encoder, spec, splits, options: Options) -> dict:
    spec = _resolve(spec, splits)
    per_k: dict[int, list] = {}
    folds_out = []
    for split in splits:
        train, test, folds, groups = _probe_data(encoder, spec, split, options)
        if folds is None:
            pairs = [(train.features, train.labels, _digests(train), _groups(train),
                      test.features, test.labels, _digests(test), split.fold,
                      f"{split.test} against {split.train}")]
        else:
            digests = _digests(test)
            pairs = [(test.features[tr], test.labels[tr], digests[tr], groups[tr],
                      test.features[te], test.labels[te], digests[te], k, f"{split.test} fold {k}")
                     for k, (tr, te) in enumerate(folds, start=1)]
        for train_x, train_y, train_d, train_g, test_x, test_y, test_d, fold, where in pairs:
            # Counted against the whole training pool, whichever faces a draw takes from it.
            copies = _copies(train_d, test_d, where)
            out = few_shot.few_shot(train_x, train_y, test_x, test_y, spec.classes,
                                    options.shots, options.seeds, options.c_grid,
                                    balanced=options.balanced_probe, train_groups=train_g)
            folds_out.append({"fold": fold, "dataset": split.test, "train_test_copies": copies,
                              **out})
            for k, entry in out["shots"].items():
                per_k.setdefault(k, []).extend(entry["runs"])
    shots = {k: {m: metrics.summarize_folds([r[m] for r in runs])
                 for m in ("uar", "war", "macro_f1")} for k, runs in sorted(per_k.items())}
    top = max(shots)
    return {"shots": shots, "folds": folds_out, "value": shots[top]["uar"]["mean"],
            "metric": f"uar@{top}-shot", "classes": list(spec.classes),
            "train_test_copies": sum(f["train_test_copies"] for f in folds_out)}


def run_au_detection(encoder: Encoder, spec, splits, options: Options) -> dict:
    reports = []
    for split in splits:
        records = read_records(split.test)
        annotations = [r.aus for r in records]
        if not any(annotations):
            raise ValueError(f"{split.test}: no record has action-unit annotations (the "
                             "records' au/names); AU detection needs them")
        codes = list(spec.aus) or au_detection.codes_in(annotations)
        feats = encoder.images(split.test, _num_frames(spec, split.test, options.frames))
        if feats.ids != [r.id for r in records]:
            raise RuntimeError(f"{split.test}: features and records are not in the same order")
        labels = au_detection.au_labels(annotations, codes, options.au_threshold)
        positive, negative = au_detection.au_prompt_embeddings(encoder.texts, codes)
        scores = au_detection.au_scores(feats.features, positive, negative)
        report = au_detection.au_detection_report(labels, scores, codes)
        report.update(fold=split.fold, dataset=split.test)
        reports.append(report)
    value = metrics.summarize_folds([r["mean_f1"] for r in reports])["mean"]
    return {"report": reports[0] if len(reports) == 1 else None, "folds": reports,
            "value": value, "metric": "mean_f1"}


def run_retrieval(encoder: Encoder, spec, splits, options: Options) -> dict:
    reports = []
    for split in splits:
        records = read_records(split.test)
        sentences = [retrieval.caption_sentences(r, options.caption_field) for r in records]
        keep = np.asarray([bool(s) for s in sentences])
        if not keep.any():
            raise ValueError(f"{split.test}: no record has a caption ({options.caption_field!r} "
                             "field); retrieval needs a captioned split")
        feats = encoder.images(split.test, _num_frames(spec, split.test, options.frames))
        if feats.ids != [r.id for r in records]:
            raise RuntimeError(f"{split.test}: features and records are not in the same order")
        kept = [s for s, k in zip(sentences, keep) if k]
        captions = retrieval.caption_embeddings(encoder.texts, kept)
        report = retrieval.retrieval_metrics(feats.features[keep], captions, captions=kept)
        report.update(fold=split.fold, dataset=split.test, caption_field=options.caption_field,
                      without_caption=int((~keep).sum()))
        reports.append(report)
    value = metrics.summarize_folds([r["mean_recall"] for r in reports])["mean"]
    return {"report": reports[0] if len(reports) == 1 else None, "folds": reports,
            "value": value, "metric": "mean_recall"}


def run_multiple_choice(encoder: Encoder, spec, splits, options: Options) -> dict:
    reports = []
    for split in splits:
        path = options.questions or storage.join(split.test, multiple_choice.QUESTIONS_FILE)
        if not storage.isfile(path):
            raise FileNotFoundError(
                f"{path}: no questions file; pass --questions FILE or put "
                f"{multiple_choice.QUESTIONS_FILE} in the dataset folder (for the synthetic "
                "benchmark, `python -m data_prep.synthetic_benchmarks` writes one)")
        questions = multiple_choice.load_questions(path)
        # Questions marked skip (several images, yes/no answers, ...) are counted, not answered.
        skipped = [q for q in questions if q.skip]
        questions = [q for q in questions if not q.skip]
        # Options that tokenize alike would tie; such questions are skipped and named, not guessed.
        questions, tied = multiple_choice.skip_same_token_options(questions, [
            encoder.tokenize(multiple_choice.option_texts(q, options.mc_template))
            for q in questions])
        skipped += tied
        if not questions:
            raise ValueError(f"{path}: all {len(skipped)} questions are marked skip or have "
                             "options that encode the same text; there is nothing to score")
        feats = encoder.images(split.test, _num_frames(spec, split.test, options.frames))
        row_of = {record_id: i for i, record_id in enumerate(feats.ids)}
        unknown = sorted({q.id for q in questions if q.id not in row_of})
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} questions refer to images not in "
                             f"{split.test}: {unknown[:5]}")
        texts = [multiple_choice.option_texts(q, options.mc_template) for q in questions]
        flat = encoder.texts([t for options_ in texts for t in options_])
        bounds = np.cumsum([0] + [len(t) for t in texts])
        option_emb = [flat[bounds[i]:bounds[i + 1]] for i in range(len(questions))]
        image = feats.features[[row_of[q.id] for q in questions]]
        choices = multiple_choice.choose(image, option_emb)
        report = multiple_choice.accuracy_report(choices, questions, skipped)
        report.update(fold=split.fold, dataset=split.test, questions=str(path),
                      template=options.mc_template)
        reports.append(report)
    value = metrics.summarize_folds([r["accuracy"] for r in reports])["mean"]
    return {"report": reports[0] if len(reports) == 1 else None, "folds": reports,
            "value": value, "metric": "accuracy"}


PROTOCOL_RUNNERS = {
    registry.ZERO_SHOT: run_zero_shot,
    registry.VIDEO: lambda e, s, sp, o: run_zero_shot(e, s, sp, o, frames=True,
                                                      single_frame_baseline=True),
    registry.COMPOUND: lambda e, s, sp, o: run_zero_shot(e, s, sp, o, frames=s.video),
    registry.LINEAR_PROBE: run_linear_probe,
    registry.FEW_SHOT: run_few_shot,
    registry.AU_DETECTION: run_au_detection,
    registry.RETRIEVAL: run_retrieval,
    registry.MULTIPLE_CHOICE: run_multiple_choice,
    registry.GROUNDING: grounding.run_grounding,
}


def run(encoder: Encoder, benchmark: str, protocol: str, data, options: Optional[Options] = None
        ) -> dict:
    """One benchmark x protocol evaluation; returns the result dict (see module docstring)."""
    options = options or Options()
    spec = registry.get(benchmark)
    if protocol not in spec.protocols:
        raise ValueError(f"--protocol {protocol}: benchmark {benchmark} supports "
                         f"{', '.join(spec.protocols)}")
    if options.zero_shot_mode not in zero_shot.MODES:
        raise ValueError(f"--zero-shot-mode {options.zero_shot_mode!r} is none of "
                         f"{zero_shot.MODES}")
    if options.caption_field not in retrieval.FIELDS:
        raise ValueError(f"--caption-field {options.caption_field!r} is none of "
                         f"{retrieval.FIELDS}")
    splits = find_splits(spec, data, options.fold, options.train_data)
    start = time.perf_counter()
    result = PROTOCOL_RUNNERS[protocol](encoder, spec, splits, options)
    paper = spec.paper if protocol == spec.paper_protocol else None
    result.update(
        benchmark=spec.name, title=spec.title, group=spec.group, protocol=protocol,
        checkpoint=encoder.description, data=str(data),
        splits=[dataclasses.asdict(s) for s in splits],
        options={k: (list(v) if isinstance(v, tuple) else v)
                 for k, v in dataclasses.asdict(options).items()},
        paper=dataclasses.asdict(paper) if paper else None,
        devices=encoder.mesh.devices.size, seconds=time.perf_counter() - start)
    return result
