"""Multiple-choice questions about faces (Face-Human-Bench, FaceXBench style), answered by a
two-tower model: the option whose text (optionally with the question) is closest to the image wins.

Questions live beside the images: `questions.jsonl` in the dataset folder (or a path given on the
command line), one JSON object per line:

    {"qid": "q17", "id": "<record id of the image>", "question": "Which emotion ...?",
     "options": ["a face showing happiness", "a face showing anger", ...],
     "answer": 0,                 # index into options, or a letter "A", "B", ...
     "task": "emotion"}           # optional: accuracy is also reported per task

Several questions may refer to one image. Option texts are encoded through `template`
("{option}" by default; "{question} {option}" puts the question in front).

Two optional keys come from the benchmark converters (`python -m data_prep.benchmarks --name
face-human-bench|facexbench`):

    "prompts": ["a photo of a 20-year-old person.", ...]   # one per option: the statement that
                                  # answers the question with that option; encoded in place of
                                  # the option text (through `template`, as {option})
    "skip": "several_images: the question is about 2 images"
                                  # a question a two-tower model cannot score ("<code>:
                                  # <detail>"); needs no "id", is not answered, and is counted
                                  # in the report (overall, per task, per code), never guessed

A question two of whose options encode to the same tokens (a converter that wrote one prompt for
two options, texts that differ only in case under CLIP's lower-casing tokenizer, or past the text
context) is skipped the same way, with the code "duplicate_options", and named in the report's
`duplicate_options` list. Those options get exactly the same score, so a plain argmax would pick
the first of them and count the question right or wrong by where the answer sits among the
options, not by anything the model sees. Standard multiple-choice scoring (argmax over options, as
lm-evaluation-harness and VLMEvalKit do) assumes distinct options; indistinguishable ones make the
item malformed, and a position-blind tie rule (a random pick, or 1/k credit) would still score
a question whose answer cannot be told from a wrong option. Between distinct texts an exact float
tie does not happen in practice, and argmax keeps the first option there.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import string
from typing import Sequence

import numpy as np

import emocap_jax.storage as storage
from emocap_jax.data import json_keys

QUESTIONS_FILE = "questions.jsonl"
DEFAULT_TEMPLATE = "{option}"
DUPLICATE_OPTIONS = "duplicate_options"


@dataclasses.dataclass(frozen=True)
class Question:
    qid: str
    id: str
    question: str
    options: tuple[str, ...]
    answer: int
    task: str = ""
    prompts: tuple[str, ...] = ()   # texts encoded instead of the options, when given
    skip: str = ""                  # why the question is not scored ("" = scored)


def _answer_index(answer, num_options: int, where: str) -> int:
    if isinstance(answer, str):
        letter = answer.strip().upper()
        if len(letter) == 1 and letter in string.ascii_uppercase:
            answer = string.ascii_uppercase.index(letter)
        elif letter.isdigit():
            answer = int(letter)
        else:
            raise ValueError(f"{where}: answer {answer!r} is neither an index nor a letter")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < num_options:
        raise ValueError(f"{where}: answer {answer!r} is not an option index in "
                         f"[0, {num_options})")
    return answer


def load_questions(path: str | os.PathLike) -> list[Question]:
    """Parses and validates a questions.jsonl file (errors name the file and line)."""
    path = storage.fspath(path)
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path}: no questions file (one JSON object per line with id, "
                                "question, options, answer)")
    questions, seen = [], set()
    with storage.open(path, "r") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                obj = json_keys.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e})") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: not a JSON object")
            repeated = json_keys.repeated_key(obj)
            if repeated:  # json would keep the last value: which answer was meant is unknown
                raise ValueError(f"{where}: {repeated}")
            skip = obj.get("skip", "")
            if not isinstance(skip, str):
                raise ValueError(f"{where}: skip must be a string (the reason), got {skip!r}")
            skip = skip.strip()
            required = ("options", "answer") if skip else ("id", "options", "answer")
            missing = [k for k in required if k not in obj]
            if missing:
                raise ValueError(f"{where}: missing {missing}")
            options = obj["options"]
            if not isinstance(options, list) or len(options) < 2 or \
                    not all(isinstance(o, str) and o.strip() for o in options):
                raise ValueError(f"{where}: options must be a list of at least 2 non-empty "
                                 "strings")
            texts = obj.get("prompts", [])
            if not isinstance(texts, list) or (texts and len(texts) != len(options)) or \
                    not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(f"{where}: prompts must be a list of {len(options)} non-empty "
                                 "strings, one per option")
            qid = str(obj.get("qid", f"line{line_no}"))
            if qid in seen:
                raise ValueError(f"{where}: question id {qid!r} is repeated")
            seen.add(qid)
            questions.append(Question(qid, str(obj.get("id", "")), str(obj.get("question", "")),
                                      tuple(options),
                                      _answer_index(obj["answer"], len(options), where),
                                      str(obj.get("task", "")), tuple(texts), skip))
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def option_texts(question: Question, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """The texts encoded for the options: each option (or its prompt) put into `template`."""
    return [template.format(question=question.question, option=o).strip()
            for o in (question.prompts or question.options)]


def same_token_options(tokens: np.ndarray) -> list[list[int]]:
    """Groups (two or more option indices, ascending) of one question's options whose token rows
    (`tokens`: [options, context]) are identical, so whose embeddings and scores are too."""
    groups: dict[bytes, list[int]] = {}
    for index, row in enumerate(np.asarray(tokens)):
        groups.setdefault(np.ascontiguousarray(row).tobytes(), []).append(index)
    return [g for g in groups.values() if len(g) > 1]


def skip_same_token_options(questions: Sequence[Question], tokens: Sequence[np.ndarray]
                            ) -> tuple[list[Question], list[Question]]:
    """(scorable, skipped): questions whose option token rows (`tokens[q]`) contain a repeat are
    marked skip with DUPLICATE_OPTIONS, naming the options and their text (see the module
    docstring for why they are not scored)."""
    scorable, skipped = [], []
    for question, rows in zip(questions, tokens):
        groups = same_token_options(rows)
        if not groups:
            scorable.append(question)
            continue
        texts = question.prompts or question.options
        detail = "; ".join(f"options {', '.join(map(str, g))} ({texts[g[0]]!r}) encode the same "
                           "tokens" for g in groups)
        skipped.append(dataclasses.replace(question, skip=f"{DUPLICATE_OPTIONS}: {detail}"))
    return scorable, skipped


def skip_code(question: Question) -> str:
    return question.skip.split(":", 1)[0].strip()


def choose(image_feats: np.ndarray, option_emb: Sequence[np.ndarray]) -> np.ndarray:
    """For question q (image_feats[q], option_emb[q] = [M_q, D]) the index of the closest option."""
    return np.asarray([int(np.argmax(np.asarray(options) @ np.asarray(image)))
                       for image, options in zip(image_feats, option_emb)], np.int64)


def accuracy_report(choices, questions: Sequence[Question],
                    skipped: Sequence[Question] = ()) -> dict:
    """Overall and per-task accuracy of the scored `questions`; chance is the mean of 1 / number
    of options (overall and per task, `task_chance`). `skipped` questions are only counted:
    num_skipped, skipped_by_reason (code -> count) and skipped_by_task (task -> count)."""
    choices = np.asarray(choices)
    answers = np.asarray([q.answer for q in questions])
    correct = choices == answers
    tasks, task_chance = {}, {}
    for task in sorted({q.task for q in questions if q.task}):
        mask = np.asarray([q.task == task for q in questions])
        tasks[task] = {"accuracy": float(correct[mask].mean()), "num_questions": int(mask.sum())}
        task_chance[task] = float(np.mean([1 / len(q.options) for q in questions
                                           if q.task == task]))
    by_reason = collections.Counter(skip_code(q) for q in skipped)
    by_task = collections.Counter(q.task for q in skipped)
    duplicates = [{"qid": q.qid, "id": q.id, "reason": q.skip} for q in skipped
                  if skip_code(q) == DUPLICATE_OPTIONS]
    return {"accuracy": float(correct.mean()), "num_questions": int(len(questions)),
            "chance": float(np.mean([1 / len(q.options) for q in questions])), "tasks": tasks,
            "task_chance": task_chance, "num_skipped": len(skipped),
            "skipped_by_reason": dict(sorted(by_reason.items())),
            "skipped_by_task": dict(sorted(by_task.items())), "duplicate_options": duplicates}
