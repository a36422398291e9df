"""Multiple-choice questions of a benchmark release, made answerable by a two-tower (CLIP) model.

A two-tower model answers a question by comparing the image with one text per option and taking
the closest (`emocap_jax.evaluate.multiple_choice`). The layout readers of the multiple-choice
benchmarks (face_human_bench.py, facexbench.py) turn every question of a release into a
`Question` that is one of

- scored: it is about one image (`image_id`, the record id of that image in the dataset) and
  carries one prompt per option: a statement that answers the question with that option ("a
  photo of a 30-year-old person."), so the question is folded into the text the model reads;
- skipped: a two-tower model cannot answer it without guessing, and `skip` says why ("<code>:
  <detail>", codes below): several images, identity across two faces, yes/no answers with no
  statement to stand for them, counts beyond a few, options that point at other options ("None
  of the above", "Image 2"), negated questions ("which attribute is NOT present"), text-only
  questions, tasks with no prompt rule, two options given the same statement (duplicate_options,
  as the evaluation would skip it);
- rejected: the entry is malformed, repeats a JSON key (common.DUPLICATE_KEY) or its image is
  missing (`reject`, "<code>: <detail>").

After the images are written, `write_questions` writes OUT/<split>/questions.jsonl with the
scored questions (id, prompts) and the skipped ones (skip, no id), so the evaluation reports how
many were skipped and why, and lists in rejected.jsonl every rejected question and every scored
question whose image could not be written. Nothing is dropped without a line saying so.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from data_prep.benchmark_formats import common
from emocap_jax.data import json_keys
from emocap_jax.evaluate import multiple_choice

QUESTIONS_FILE = "questions.jsonl"  # the name emocap_jax.evaluate.multiple_choice reads

# Skip codes: questions a two-tower model cannot score.
SEVERAL_IMAGES = "several_images"
NO_IMAGE = "text_only"
IDENTITY = "identity_comparison"
YES_NO = "yes_no_answer"
COUNTING = "counting"
REFERS_TO_OPTIONS = "option_refers_to_options"
AMBIGUOUS = "ambiguous_answer"
NEGATED = "negated_question"
TASK_NOT_SCORABLE = "task_not_scorable"
UNKNOWN_TASK = "unknown_task"
# Two options given the same statement: the code the evaluation skips such a question under.
DUPLICATE_OPTIONS = multiple_choice.DUPLICATE_OPTIONS

# Rejection codes besides common.MALFORMED_ENTRY and common.IMAGE_NOT_FOUND.
IMAGE_NOT_WRITTEN = "image_not_written"
DUPLICATE_QUESTION = "duplicate_question"

# Counting questions are scored only when every option is at most this many people: CLIP-style
# models tell one, two or three people apart, not eight from eleven.
MAX_SCORED_COUNT = 5

_REFERS = re.compile(
    r"^(none|all|both|neither|either)(\s+of\s+(the\s+)?(above|below|images|these|them|options|"
    r"choices|people|faces))?\.?$|^images?\s*\d|^the\s+(first|second|third|fourth|left|right)\s+"
    r"(image|one|person)", re.IGNORECASE)
_NEGATED = re.compile(r"\bNOT\b|\bnot\s+(present|have|has|show|shown|visible|wearing)\b|"
                      r"\b(do|does|is|are)\s+not\b|n't\b")
_YES_NO = frozenset({"yes", "no", "true", "false"})


@dataclasses.dataclass(frozen=True)
class Question:
    """One question of a release (see the module docstring for scored / skipped / rejected)."""
    qid: str
    task: str
    question: str
    options: tuple[str, ...]
    answer: int
    source: str                     # "<file>#<entry>", for messages
    image_id: str = ""              # record id of its image (scored questions)
    prompts: tuple[str, ...] = ()   # one text per option (scored questions)
    skip: str = ""
    reject: str = ""

    @property
    def scored(self) -> bool:
        return not self.skip and not self.reject


def skipped(code: str, detail: str) -> str:
    return f"{code}: {detail}"


def rejected(qid: str, task: str, source: str, code: str, detail: str) -> Question:
    """A question whose entry cannot be used; options and answer may be unknown."""
    return Question(qid=qid, task=task, question="", options=(), answer=-1, source=source,
                    reject=f"{code}: {detail}")


def option_texts(raw: Any, where: str) -> tuple[str, ...] | str:
    """The options as strings (releases store counts and ages as JSON numbers), or a reason."""
    if not isinstance(raw, list) or len(raw) < 2:
        return f"{where}: options must be a list of at least 2, got {raw!r}"
    texts = []
    for i, option in enumerate(raw):
        if isinstance(option, bool) or not isinstance(option, (str, int, float)) or \
                not str(option).strip():
            return f"{where}: option {i} is {option!r}, not a non-empty string or number"
        texts.append(str(option).strip())
    return tuple(texts)


def with_article(text: str) -> str:
    """"a person", "an East Asian person", "an 80-year-old" (by the first letter or digit)."""
    vowel = text[:1].lower() in "aeiou" or text.startswith("8") or \
        re.match(r"1[18]\b", text) is not None
    return f"{'an' if vowel else 'a'} {text}"


def integer_options(options: Sequence[str]) -> list[int] | None:
    """The options as integers when every one is a whole number, else None."""
    if all(re.fullmatch(r"\d+", o) for o in options):
        return [int(o) for o in options]
    return None


def generic_skip(question: str, options: Sequence[str], answer: int, *,
                 check_negation: bool = True) -> str:
    """Why no option-by-option statement can answer this question, or "" when one can."""
    key = " ".join(options[answer].split()).lower()
    if sum(" ".join(o.split()).lower() == key for o in options) > 1:
        # A repeated right option would make the answer depend on tie-breaking. (A repeated
        # wrong one gives two equal prompts: `repeated_prompts` skips that question.)
        return skipped(AMBIGUOUS, f"the answer {options[answer]!r} appears more than once "
                       "among the options")
    for option in options:
        if _REFERS.search(option):
            return skipped(REFERS_TO_OPTIONS, f"option {option!r} is about the other options "
                           "or images, not about what the image shows")
    if check_negation and _NEGATED.search(question):
        return skipped(NEGATED, "the question asks which option is NOT shown")
    if {o.lower() for o in options} <= _YES_NO:
        return skipped(YES_NO, f"options {list(options)}: a yes/no answer has no visual "
                       "content to compare with the image")
    return ""


def repeated_prompts(options: Sequence[str], prompts: Sequence[str]) -> str:
    """Why the question is skipped when two options get the same statement ("happy" and
    "happiness" both read "... happiness."), else "". Compared as CLIP's tokenizer reads them
    (case and runs of whitespace aside): the evaluation skips such a question as
    duplicate_options (emocap_jax.evaluate.multiple_choice), so the converter's counts say so
    first. Texts that differ only past the text context are left to the evaluation, which knows
    the tokenizer."""
    groups: dict[str, list[int]] = {}
    for index, text in enumerate(prompts):
        groups.setdefault(" ".join(text.split()).lower(), []).append(index)
    repeats = [g for g in groups.values() if len(g) > 1]
    if not repeats:
        return ""
    return skipped(DUPLICATE_OPTIONS, "; ".join(
        f"options {', '.join(map(str, g))} ({', '.join(repr(options[i]) for i in g)}) all "
        f"read {prompts[g[0]]!r}" for g in repeats))


def count_prompts(options: Sequence[str]) -> tuple[str, ...] | str:
    """'a photo of N people.' per option when every count is at most MAX_SCORED_COUNT."""
    counts = integer_options(options)
    if counts is None:
        return skipped(COUNTING, f"options {list(options)} are not all whole numbers")
    if max(counts) > MAX_SCORED_COUNT:
        return skipped(COUNTING, f"counts up to {max(counts)} (scored only up to "
                       f"{MAX_SCORED_COUNT})")
    return tuple(f"a photo of {n} {'person' if n == 1 else 'people'}." for n in counts)


def letter_index(letter: Any, num_options: int) -> int | None:
    """'B' -> 1 when within the options, else None."""
    if not isinstance(letter, str) or not re.fullmatch(r"\s*[A-Za-z]\s*", letter):
        return None
    index = ord(letter.strip().upper()) - ord("A")
    return index if index < num_options else None


def load_json(path: str) -> tuple[Any, str]:
    """(parsed JSON, "") or (None, reason) for a file that cannot be read as JSON. Objects that
    repeat a key remember it (`json_keys.repeated_key`): the readers reject those entries."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json_keys.loads(f.read()), ""
    except json.JSONDecodeError as e:
        return None, f"{path} is not JSON ({e.msg} at line {e.lineno} column {e.colno})"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path} cannot be read ({e})"


def find_image(relative: str, bases: Iterable[str]) -> tuple[str | None, list[str]]:
    """(first existing file among base/relative, every path tried)."""
    tried = []
    for base in bases:
        path = os.path.normpath(os.path.join(base, relative))
        if path in tried:
            continue
        tried.append(path)
        if os.path.isfile(path):
            return path, tried
    return None, tried


def safe_relative(path: Any) -> str | None:
    """A release's relative image path, '/'-separated, or None when it is absolute, empty or
    climbs out of its folder."""
    if not isinstance(path, str) or not path.strip():
        return None
    path = path.strip().replace("\\", "/")
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", path):
        return None
    return "/".join(p for p in parts if p not in ("", "."))


def image_id(relative: str) -> str:
    """Record id of an image: its release path without the extension."""
    return os.path.splitext(relative)[0]


class ImageTable:
    """The distinct images the scored questions need: one Entry per file, in first-use order.

    Two files whose paths differ only in the extension would share a record id; the later one
    gets "#2" (then "#3", ...) appended, so every question points at its own file.
    """

    def __init__(self):
        self._by_path: dict[str, common.Entry] = {}
        self._ids: set[str] = set()

    def add(self, record_id: str, path: str) -> str:
        """The record id of the image at `path` (added on first use)."""
        entry = self._by_path.get(path)
        if entry is None:
            unique, n = record_id, 1
            while unique in self._ids:
                n += 1
                unique = f"{record_id}#{n}"
            self._ids.add(unique)
            entry = common.Entry(id=unique, label="", label_id=-1, source=path)
            self._by_path[path] = entry
        return entry.id

    def entries(self) -> list[common.Entry]:
        return list(self._by_path.values())


def reject_repeated_qids(questions: list[Question]) -> list[Question]:
    """A question id seen before makes the later question a rejection."""
    first: dict[str, str] = {}
    out = []
    for q in questions:
        if q.qid in first:
            q = dataclasses.replace(q, skip="", reject=f"{DUPLICATE_QUESTION}: {q.source} has "
                                    f"the question id of {first[q.qid]}")
        else:
            first[q.qid] = q.source
        out.append(q)
    return out


def _line(q: Question) -> dict[str, Any]:
    line: dict[str, Any] = {"qid": q.qid}
    if q.scored:
        line["id"] = q.image_id
    line.update(task=q.task, question=q.question, options=list(q.options), answer=q.answer)
    if q.scored:
        line["prompts"] = list(q.prompts)
    else:
        line["skip"] = q.skip
    line["source"] = q.source
    return line


def write_questions(out_dir: str, questions: Sequence[Question], written_ids: set[str],
                    image_rejections: dict[str, str],
                    reject: Callable[[int | None, str | None, str], None]) -> dict[str, Any]:
    """Writes OUT/<split>/questions.jsonl and reports every rejected question through `reject`.

    A scored question whose image is not among `written_ids` is rejected (image_not_written,
    with the image's own rejection reason from `image_rejections`). Returns the counts:
    num_questions, num_scored, num_skipped, num_rejected, by reason and by task.
    """
    lines, by_task = [], collections.defaultdict(collections.Counter)
    skipped_by, rejected_by = collections.Counter(), collections.Counter()
    for q in questions:
        if q.scored and q.image_id not in written_ids:
            why = image_rejections.get(q.image_id, "it was not written")
            q = dataclasses.replace(q, reject=f"{IMAGE_NOT_WRITTEN}: question {q.qid} "
                                    f"({q.source}) needs image {q.image_id}, which was "
                                    f"rejected ({why})")
        if q.reject:
            reject(None, q.qid, q.reject)
            rejected_by[q.reject.split(":", 1)[0]] += 1
            by_task[q.task]["rejected"] += 1
            continue
        lines.append(json.dumps(_line(q), ensure_ascii=False) + "\n")
        if q.skip:
            skipped_by[q.skip.split(":", 1)[0]] += 1
            by_task[q.task]["skipped"] += 1
        else:
            by_task[q.task]["scored"] += 1
    path = os.path.join(out_dir, QUESTIONS_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, path)
    num_skipped, num_rejected = sum(skipped_by.values()), sum(rejected_by.values())
    return {
        "num_questions": len(questions),
        "num_scored": len(questions) - num_skipped - num_rejected,
        "num_skipped": num_skipped,
        "num_rejected": num_rejected,
        "skipped_by_reason": dict(sorted(skipped_by.items())),
        "rejected_by_reason": dict(sorted(rejected_by.items())),
        "by_task": {task: {k: counts.get(k, 0) for k in ("scored", "skipped", "rejected")}
                    for task, counts in sorted(by_task.items())},
    }
