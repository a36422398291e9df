"""Face-Human-Bench (Qin et al., NeurIPS 2025), multiple-choice questions, as its authors
release it.

Layout (github.com/Face-Human-Bench/face-human-bench and lxq1000/Face-Human-Bench; ROOT is a clone
of either repository, or its data/Face-Human-Bench/ folder):

    data/Face-Human-Bench/{dev,test}/json/en/<type>.json     25 files per split, 1800 questions
        {"data": [{"type": "face_age_basic_10",
                   "QA": {"question": "...", "options": ["20", "30", "40", "50"], "answer": 0},
                   "image": {"image_paths": {"cropped": "eval_data/face/age/basic_10/cropped/
                                                          sample_0007.jpg",
                                             "original": "eval_data/.../original/sample_0007.jpg"},
                             "source": {"dataset": "UTKFace",
                                        "paths": {"original": "raw_data/face/UTKFace/..."},
                                        "labels": {...}}}}, ...]}

The release ships no images: the authors' data/prepare_data.py (code/prepare_data.py in
lxq1000's copy) builds them from the source datasets (UTKFace, RAF-DB, CelebA, LFW, ...) into
`<split>/output/eval_data/...` (its suggested eval_data_root_path; `<split>/eval_data/...` and
`ROOT/eval_data/...` are looked at too). Where that script only copies a source file (the
variants named in `source.paths`: "original" for ages, basic expressions and counting,
"cropped" for attacks, compound expressions and face attributes), the source file is also
accepted from `ROOT/raw_data/...`. A missing image rejects its question (image_not_found,
naming the paths tried); the aligned crops, drawn boxes and side-by-side pairs exist only once
prepare_data.py has run.

Questions: as the authors' evaluation does (code/evaluation/eval.py), every entry is asked once
per image variant in `image_paths` (cropped / original / boxed), and the task is
"<type>-<variant>" ("face_age_basic_10-cropped"), their scoring key. Only the English files are
read. Each option becomes a statement answering the question ("a photo of a 30-year-old
person."), see PROMPT_RULES; face and person recognition (two faces side by side), counting
beyond five people and types without a rule are skipped, with the reason, in questions.jsonl.
Splits: test and dev (the authors' development set). Record id: the image path without its
extension; question id: "<file stem>[<entry index>]:<variant>".
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable, Sequence

from data_prep.benchmark_formats import common, questions as mcq
from emocap_jax.data import json_keys
from emocap_jax.evaluate import prompts

NAME = "face-human-bench"
LANGUAGE = "en"
DATA_DIR = os.path.join("data", "Face-Human-Bench")
# Where prepare_data.py's output is looked for, relative to the split folder.
PREPARED_DIRS = ("output", "")

Rule = Callable[[str, Sequence[str]], "tuple[str, ...] | str"]


def _template(text: str, word: Callable[[str], str] = str) -> Rule:
    """Each option through `word` into `text` ("{option}")."""
    return lambda question, options: tuple(text.format(option=word(o)) for o in options)


def _age(option: str) -> str:
    """"a photo of a 30-year-old person.", "... an 80-year-old person."."""
    return f"a photo of {mcq.with_article(option)}-year-old person."


def _yes_no(yes: str, no: str) -> Rule:
    """Statements standing for "yes" and "no" where the type fixes what the question asks."""
    statements = {"yes": yes, "no": no}

    def rule(question, options):
        lowered = [o.lower() for o in options]
        if sorted(lowered) != ["no", "yes"]:
            return mcq.skipped(mcq.YES_NO, f"options {list(options)} are not yes / no")
        return tuple(statements[o] for o in lowered)
    rule.answers_yes_no = True
    return rule


def _skip(code: str, detail: str) -> Rule:
    return lambda question, options: mcq.skipped(code, detail)


def _counting(question, options):
    return mcq.count_prompts(options)


def _expression(option: str) -> str:
    return prompts.EMOTION_TEMPLATES[0].format(prompts.prompt_word(option.lower()))


def _compound_expression(option: str) -> str:
    return prompts.COMPOUND_TEMPLATES[0].format(prompts.compound_prompt_word(option.lower()))


_REAL_FACE = "a photo of a real, live person's face."
_PAIR = _skip(mcq.IDENTITY, "the answer compares the identities of two faces shown side by "
              "side, which one image embedding cannot do")

# Per question type: the statement each option stands for, or why the type is skipped.
PROMPT_RULES: dict[str, Rule] = {
    "face_age_basic_5": _template("{option}", _age),
    "face_age_basic_10": _template("{option}", _age),
    "face_age_basic_15": _template("{option}", _age),
    "face_attack_digital_expression_swap": _yes_no(
        "a photo of a digitally manipulated face whose expression was swapped in.",
        "a photo of a real, unedited face."),
    "face_attack_digital_identity_swap": _yes_no(
        "a photo of a digitally manipulated face whose identity was swapped in.",
        "a photo of a real, unedited face."),
    "face_attack_physical_paper": _yes_no(
        "a photo of a printed paper photo of a face held up to the camera.", _REAL_FACE),
    "face_attack_physical_replay": _yes_no(
        "a photo of a face shown on a screen held up to the camera.", _REAL_FACE),
    "face_attribute_compound": _template("a photo of a person, {option}."),
    "face_expression_basic": _template("{option}", _expression),
    "face_expression_compound": _template("{option}", _compound_expression),
    "face_recognition_basic": _PAIR,
    "face_recognition_cross_age": _PAIR,
    "face_recognition_cross_pose": _PAIR,
    "face_recognition_mask": _PAIR,
    "face_recognition_similar_looking": _PAIR,
    "human_action_basic": _template("a photo of a person {option}."),
    "human_attribute_compound": _template("{option}"),
    "human_attribute_compound_cropped": _template("{option}"),
    "human_reid_basic": _skip(mcq.IDENTITY, "the answer compares the identities of two people "
                              "shown side by side, which one image embedding cannot do"),
    "human_social_relation_occupation": _template(
        "a photo of {option}.", lambda o: mcq.with_article(o.lower().replace("/", " or "))),
    "human_social_relation_relationship": _template(
        "a photo of two people whose relationship is: {option}.", str.lower),
    "human_spatial_relation_count_10": _counting,
    "human_spatial_relation_count_100": _counting,
    "human_spatial_relation_count_100plus": _counting,
    "human_spatial_relation_location": _template("{option}"),
}


def _data_dir(root: str, split: str) -> str:
    """The folder holding <split>/json/en/ (the repository's data/Face-Human-Bench/)."""
    for base in (os.path.join(root, DATA_DIR), os.path.join(root, "Face-Human-Bench"), root):
        if os.path.isdir(os.path.join(base, split, "json", LANGUAGE)):
            return base
    raise common.LayoutError(
        f"{NAME}: expected {DATA_DIR}/{split}/json/{LANGUAGE}/*.json (or "
        f"{split}/json/{LANGUAGE}/ directly) under {root}")


def _prompts(qtype: str, question: str, options: tuple[str, ...], answer: int
             ) -> tuple[str, ...] | str:
    """The option statements of a question, or why it is skipped (the type's own reason first,
    then the checks every question gets)."""
    rule = PROMPT_RULES.get(qtype)
    if rule is None:
        return mcq.skipped(mcq.UNKNOWN_TASK, f"question type {qtype!r} has no prompt rule")
    texts = rule(question, options)
    if isinstance(texts, str):
        return texts
    # The release's questions are all positive ("which ... best matches"); attack questions
    # are yes/no by design and handled by their rule.
    skip = "" if getattr(rule, "answers_yes_no", False) else \
        mcq.generic_skip(question, options, answer, check_negation=False)
    return skip or mcq.repeated_prompts(options, texts) or texts


def _entry_question(entry, where: str, qid_stem: str, split_dir: str, root: str,
                    images: mcq.ImageTable) -> list[mcq.Question]:
    """The questions of one entry: one per image variant."""
    if not isinstance(entry, dict):
        return [mcq.rejected(qid_stem, "", where, common.MALFORMED_ENTRY,
                             f"{where} is {type(entry).__name__}, not an object")]
    repeated = json_keys.repeated_key(entry)
    if repeated:
        return [mcq.rejected(qid_stem, str(entry.get("type") or ""), where, common.DUPLICATE_KEY,
                             f"{where}: {repeated}")]
    qtype = entry.get("type")
    qa = entry.get("QA")
    image = entry.get("image")
    problems = []
    if not isinstance(qtype, str) or not qtype.strip():
        problems.append("no 'type'")
    if not isinstance(qa, dict):
        problems.append("no 'QA' object")
    if not isinstance(image, dict) or not isinstance(image.get("image_paths"), dict) or \
            not image["image_paths"]:
        problems.append("no 'image.image_paths' object")
    if problems:
        return [mcq.rejected(qid_stem, str(qtype or ""), where, common.MALFORMED_ENTRY,
                             f"{where}: {', '.join(problems)}")]
    qtype = qtype.strip()
    question = qa.get("question")
    options = mcq.option_texts(qa.get("options"), where)
    answer = qa.get("answer")
    reason = ""
    if not isinstance(question, str) or not question.strip():
        reason = f"{where}: QA.question is {question!r}"
    elif isinstance(options, str):
        reason = options
    elif isinstance(answer, bool) or not isinstance(answer, int) or \
            not 0 <= answer < len(options):
        reason = f"{where}: QA.answer {answer!r} is not an option index in [0, {len(options)})"
    if reason:
        return [mcq.rejected(f"{qid_stem}:{variant}", f"{qtype}-{variant}", where,
                             common.MALFORMED_ENTRY, reason)
                for variant in image["image_paths"]]
    texts = _prompts(qtype, question.strip(), options, answer)
    source = image.get("source")
    source_paths = source.get("paths") if isinstance(source, dict) else None
    if not isinstance(source_paths, dict):
        source_paths = {}
    out = []
    for variant, relative in image["image_paths"].items():
        qid, task = f"{qid_stem}:{variant}", f"{qtype}-{variant}"
        base = mcq.Question(qid=qid, task=task, question=question.strip(), options=options,
                            answer=answer, source=where)
        if isinstance(texts, str):
            out.append(dataclasses.replace(base, skip=texts))
            continue
        relative_path = mcq.safe_relative(relative)
        if relative_path is None:
            out.append(dataclasses.replace(base, reject=(
                f"{common.MALFORMED_ENTRY}: {where}: image_paths.{variant} is {relative!r}, "
                "not a relative path")))
            continue
        bases = [os.path.join(split_dir, d) for d in PREPARED_DIRS] + [root]
        found, tried = mcq.find_image(relative_path, bases)
        copy_of = mcq.safe_relative(source_paths.get(variant))
        if found is None and copy_of is not None:
            found, tried_source = mcq.find_image(copy_of, [root])
            tried += tried_source
        if found is None:
            hint = (f"; or the source file {copy_of} under {root}" if copy_of else "")
            out.append(dataclasses.replace(base, reject=(
                f"{common.IMAGE_NOT_FOUND}: no image for question {qid} at "
                f"{' or '.join(tried)} (run the authors' data/prepare_data.py with its output "
                f"in {os.path.join(split_dir, PREPARED_DIRS[0])}{hint})")))
            continue
        record_id = images.add(mcq.image_id(relative_path), found)
        out.append(dataclasses.replace(base, image_id=record_id, prompts=texts))
    return out


def _list_split(root: str, split: str, fold: int | None,
                options: common.ReaderOptions) -> common.SplitListing:
    del fold, options
    data_dir = _data_dir(root, split)
    split_dir = os.path.join(data_dir, split)
    json_dir = os.path.join(split_dir, "json", LANGUAGE)
    files = sorted(glob.glob(os.path.join(json_dir, "*.json")), key=common.natural_key)
    if not files:
        raise common.LayoutError(f"{NAME}: no .json files in {json_dir}")
    images = mcq.ImageTable()
    questions: list[mcq.Question] = []
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        data, error = mcq.load_json(path)
        error_code = common.MALFORMED_ENTRY
        if not error and (not isinstance(data, dict) or not isinstance(data.get("data"), list)):
            error = f"{path} is not an object with a 'data' list"
        if not error and json_keys.repeated_keys(data):
            error_code = common.DUPLICATE_KEY
            error = f"{path} repeats the key {json_keys.repeated_keys(data)[0]!r} at its top level"
        if error:
            questions.append(mcq.rejected(stem, stem, os.path.basename(path), error_code,
                                          f"{error}; its questions were not read"))
            continue
        for i, entry in enumerate(data["data"]):
            questions += _entry_question(entry, f"{os.path.basename(path)}#data[{i}]",
                                         f"{stem}[{i}]", split_dir, root, images)
    return common.SplitListing(
        classes=[], items=images.entries(), questions=mcq.reject_repeated_qids(questions),
        info={"json_dir": json_dir, "language": LANGUAGE, "num_json_files": len(files)})


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {NAME: _list_split}
