"""FaceXBench (Narayan, VS & Patel, 2025), multiple-choice face understanding, as its authors
release it.

Layout (github.com/Kartik-3004/facexbench; ROOT is a clone of the repository, or its
benchmark/ folder):

    benchmark/<name>.json        one file per source dataset and question kind, e.g.
                                 affectnet_single_mcq.json, lfw_multiple_mcq.json,
                                 fairface_single_mcq_age_test.json, tools_retrieval.json
        {"category": "attributes_expression", "sub-category": "expression",
         "dataset": "affectnet", "num_images": "single" | "multiple" | "zero", ...,
         "questions": {"1": {"image_paths": ["images/affectnet_single_mcq/question_1.png"],
                             "question_text": "Which expression is the person showing ...?",
                             "options": ["happy", "sad", "neutral", "surprise"],
                             "correct_answer_option": "D", "answer": "surprise"}, ...}}
    benchmark/images/<name>/question_<n>[_<k>].png      the images the repository ships

Image paths are relative to benchmark/ (also looked up under ROOT). A few files point into the
source datasets instead (wmca_single_mcq.json: data/WMCA/RGB/...): those images are not shipped;
put them at benchmark/data/... . A missing image rejects its question (image_not_found, naming
the paths tried). Every file is read: the authors' evaluate.py scores all of them (about 5,000
questions; "_val" in a name is the source dataset's split, not a benchmark split).

The task of a question is its file's sub-category (age, gender, race, expression, attributes,
headpose, segmentation, crowd_counting, hr_fr, lr_fr, celebrity_identification, fas,
deepfakes, tools_retrieval). Each option becomes a statement answering the question (see
PROMPT_RULES); questions about several images, head-pose angle bins, segmentation masks, crowd
counts, identities across images and tool-use text, questions asking what is NOT shown,
yes/no answers without a statement to stand for them and options such as "None of the above"
are skipped, with the reason, in questions.jsonl. Single split: test. Record id: the image
path without its extension; question id: "<file stem>/<question key>".
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable, Sequence

from data_prep.benchmark_formats import common, questions as mcq
from emocap_jax.data import json_keys
from emocap_jax.evaluate import prompts

NAME = "facexbench"
BENCHMARK_DIR = "benchmark"

Rule = Callable[[str, Sequence[str]], "tuple[str, ...] | str"]


def _template(text: str, word: Callable[[str], str] = str, numeric: bool = False) -> Rule:
    """Each option through `word` into `text`; whole-number options (counts) are skipped
    unless `numeric` (ages)."""
    def rule(question, options):
        if not numeric and mcq.integer_options(options) is not None:
            return mcq.skipped(mcq.COUNTING, f"options {list(options)} are counts")
        return tuple(text.format(option=word(o)) for o in options)
    return rule


def _statements(table: dict[str, str], what: str) -> Rule:
    """Options that are known words ("Bonafide", "Attack") stand for fixed statements."""
    def rule(question, options):
        missing = [o for o in options if o.lower() not in table]
        if missing:
            return mcq.skipped(mcq.YES_NO if {o.lower() for o in options} <= {"yes", "no"}
                               else mcq.TASK_NOT_SCORABLE,
                               f"options {list(options)}: no {what} statement for {missing}")
        return tuple(table[o.lower()] for o in options)
    return rule


def _skip(code: str, detail: str) -> Rule:
    return lambda question, options: mcq.skipped(code, detail)


def _words(option: str) -> str:
    """CelebA attribute names read as words: "Wearing_Hat" -> "wearing hat"."""
    return option.replace("_", " ").lower()


_REAL = "a photo of a real, live person's face."
_SPOOF = "a photo of a face presentation attack: a printed photo, a screen or a mask."
_FAS = {"bonafide": _REAL, "bona fide": _REAL, "real": _REAL, "live": _REAL, "genuine": _REAL,
        "attack": _SPOOF, "spoof": _SPOOF, "fake": _SPOOF}
_UNEDITED = "a photo of a real, unedited face."
_DEEPFAKE = "a photo of a deepfake: a digitally manipulated face."
_DEEPFAKES = {"real": _UNEDITED, "original": _UNEDITED, "genuine": _UNEDITED,
              "fake": _DEEPFAKE, "deepfake": _DEEPFAKE, "manipulated": _DEEPFAKE,
              "forged": _DEEPFAKE}

# Per sub-category: the statement each option stands for, or why the sub-category is skipped.
PROMPT_RULES: dict[str, Rule] = {
    "age": _template("a photo of a person aged {option}.", numeric=True),
    "gender": _template("a photo of {option} person.", lambda o: mcq.with_article(o.lower())),
    "race": _template("a photo of {option} person.", mcq.with_article),
    "expression": _template(
        "{option}", lambda o: prompts.EMOTION_TEMPLATES[0].format(prompts.prompt_word(o))),
    "attributes": _template("a photo of a person, {option}.", _words),
    "celebrity_identification": _template("a photo of {option}."),
    "fas": _statements(_FAS, "face anti-spoofing"),
    "deepfakes": _statements(_DEEPFAKES, "deepfake"),
    "headpose": _skip(mcq.TASK_NOT_SCORABLE, "head-pose angle bins (yaw, pitch, roll in "
                      "degrees) are numbers, not something a caption describes"),
    "segmentation": _skip(mcq.TASK_NOT_SCORABLE, "questions about which face region a "
                          "segmentation mask paints white, or which region is absent"),
    "crowd_counting": _skip(mcq.COUNTING, "crowd counts are far beyond a few people"),
    "hr_fr": _skip(mcq.IDENTITY, "face recognition compares identities across images"),
    "lr_fr": _skip(mcq.IDENTITY, "face recognition compares identities across images"),
    "tools_retrieval": _skip(mcq.NO_IMAGE, "choosing a sequence of API calls is a text task "
                             "(the image is blank)"),
}


def _benchmark_dir(root: str) -> str:
    for base in (os.path.join(root, BENCHMARK_DIR), root):
        if glob.glob(os.path.join(base, "*.json")):
            return base
    raise common.LayoutError(f"{NAME}: expected {BENCHMARK_DIR}/*.json (the repository's "
                             f"question files) under {root}, or *.json in it")


def _prompts(task: str, question: str, options: tuple[str, ...], answer: int,
             num_images: int) -> tuple[str, ...] | str:
    """The option statements of a question, or why it is skipped."""
    if num_images == 0:
        return mcq.skipped(mcq.NO_IMAGE, "the question has no image")
    if num_images > 1:
        return mcq.skipped(mcq.SEVERAL_IMAGES, f"the question is about {num_images} images")
    rule = PROMPT_RULES.get(task)
    if rule is None:
        return mcq.skipped(mcq.UNKNOWN_TASK, f"sub-category {task!r} has no prompt rule")
    texts = rule(question, options)
    if isinstance(texts, str):
        return texts
    return mcq.generic_skip(question, options, answer) or \
        mcq.repeated_prompts(options, texts) or texts


def _file_questions(path: str, bench_dir: str, root: str, images: mcq.ImageTable
                    ) -> list[mcq.Question]:
    name = os.path.basename(path)
    stem = os.path.splitext(name)[0]
    data, error = mcq.load_json(path)
    error_code = common.MALFORMED_ENTRY
    if not error and (not isinstance(data, dict) or not isinstance(data.get("questions"), dict)):
        error = f"{path} is not an object with a 'questions' object"
    if not error and json_keys.repeated_keys(data):
        error_code = common.DUPLICATE_KEY
        error = f"{path} repeats the key {json_keys.repeated_keys(data)[0]!r} at its top level"
    task = data.get("sub-category") if not error else None
    if not error and (not isinstance(task, str) or not task.strip()):
        error = f"{path} has no 'sub-category'"
    if error:
        return [mcq.rejected(stem, "", name, error_code,
                             f"{error}; its questions were not read")]
    task = task.strip()
    out = []
    # A question key written twice keeps only its last question; the one read is rejected too,
    # as nothing says which of the two the release meant.
    repeated_questions = json_keys.repeated_keys(data["questions"])
    for key, entry in data["questions"].items():
        qid, where = f"{stem}/{key}", f"{name}#questions[{key!r}]"
        repeated = (f"the question key {key!r} appears more than once in 'questions'; only the "
                    "last of its questions would be read") if key in repeated_questions else \
            json_keys.repeated_key(entry)
        if repeated:
            out.append(mcq.rejected(qid, task, where, common.DUPLICATE_KEY, f"{where}: {repeated}"))
            continue
        if not isinstance(entry, dict):
            out.append(mcq.rejected(qid, task, where, common.MALFORMED_ENTRY,
                                    f"{where} is {type(entry).__name__}, not an object"))
            continue
        question = entry.get("question_text")
        options = mcq.option_texts(entry.get("options"), where)
        paths = entry.get("image_paths")
        reason = ""
        if not isinstance(question, str) or not question.strip():
            reason = f"{where}: question_text is {question!r}"
        elif isinstance(options, str):
            reason = options
        elif not isinstance(paths, list):
            reason = f"{where}: image_paths is {paths!r}, not a list"
        else:
            answer = mcq.letter_index(entry.get("correct_answer_option"), len(options))
            if answer is None:
                reason = (f"{where}: correct_answer_option {entry.get('correct_answer_option')!r}"
                          f" is not a letter among the {len(options)} options")
            elif "answer" in entry and \
                    " ".join(str(entry["answer"]).split()).lower() != \
                    " ".join(options[answer].split()).lower():
                reason = (f"{where}: answer {entry['answer']!r} is not option "
                          f"{entry['correct_answer_option']} ({options[answer]!r})")
        if reason:
            out.append(mcq.rejected(qid, task, where, common.MALFORMED_ENTRY, reason))
            continue
        base = mcq.Question(qid=qid, task=task, question=question.strip(), options=options,
                            answer=answer, source=where)
        texts = _prompts(task, question.strip(), options, answer, len(paths))
        if isinstance(texts, str):
            out.append(dataclasses.replace(base, skip=texts))
            continue
        relative = mcq.safe_relative(paths[0])
        if relative is None:
            out.append(dataclasses.replace(base, reject=(
                f"{common.MALFORMED_ENTRY}: {where}: image path {paths[0]!r} is not a relative "
                "path")))
            continue
        found, tried = mcq.find_image(relative, [bench_dir, root])
        if found is None:
            hint = ("" if relative.startswith("images/") else
                    f"; FaceXBench does not ship {relative.split('/')[0]}/...: put the source "
                    f"dataset's file at {os.path.join(bench_dir, relative)}")
            out.append(dataclasses.replace(base, reject=(
                f"{common.IMAGE_NOT_FOUND}: no image for question {qid} at "
                f"{' or '.join(tried)}{hint}")))
            continue
        record_id = images.add(mcq.image_id(relative), found)
        out.append(dataclasses.replace(base, image_id=record_id, prompts=texts))
    return out


def _list_split(root: str, split: str, fold: int | None,
                options: common.ReaderOptions) -> common.SplitListing:
    del split, fold, options
    bench_dir = _benchmark_dir(root)
    files = sorted(glob.glob(os.path.join(bench_dir, "*.json")), key=common.natural_key)
    images = mcq.ImageTable()
    questions: list[mcq.Question] = []
    for path in files:
        questions += _file_questions(path, bench_dir, root, images)
    return common.SplitListing(
        classes=[], items=images.entries(), questions=mcq.reject_repeated_qids(questions),
        info={"benchmark_dir": bench_dir, "num_json_files": len(files)})


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {NAME: _list_split}
