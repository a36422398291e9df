"""The benchmark registry: every benchmark's release layout, what it is for evaluation and how the
paper reports it. The one table both sides read: `python -m data_prep.benchmarks` converts the
layouts of LAYOUTS (its --list and --name), and evaluation reads BENCHMARKS.

A `Layout` is how a release lies on disk (the expected files, the owners' splits and folds):
what `python -m data_prep.benchmarks --name NAME` converts, with the reader
`data_prep.benchmark_formats.READERS[NAME]`. Layouts and benchmarks are not one to one, so each
`Benchmark` names its layout in `converter` (its `layout`) rather than repeating it: FABA-Bench's
one release feeds two benchmarks (faba-emotion, faba-au), FER2013 ships in two layouts (fer2013,
fer2013-folders; both convert to FER2013's class order), imagefolder is a generic layout for any
labelled folder tree, and the synthetic benchmarks have no release (data_prep.synthetic_benchmarks
writes them). Every benchmark's splits, folds and video flag are checked against its layout's.

Each entry fixes the class order (from `emocap_jax.data.class_orders`, the table the converters
write label_id by, so label_id means the same here as in the TFRecords), the prompt word and one
description per class, the prompt templates, the splits and folds, the protocol and metric the
paper reports, and the paper's EmoCapCLIP ViT-B/32 and FLIP-80M ViT-B/32 numbers (zero-shot, read
off the paper's radar chart, +-0.1).

    from emocap_jax.evaluate import registry
    spec = registry.get("rafdb")
    spec.classes, spec.prompt_words, spec.paper

Entries whose classes are fixed by the data rather than by the benchmark (imagefolder, MAFW
compound, whose class set is every label found in its lists) have `classes = None`; `resolve`
derives the prompt words and descriptions from the dataset's recorded classes.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from emocap_jax.data import class_orders as co
from emocap_jax.data.synthetic import faces as synthetic_faces
from emocap_jax.evaluate import prompts

# Task groups, in the paper's order.
GROUPS = ("static FER", "compound FER", "dynamic FER (video)", "action units",
          "face understanding", "synthetic")

# Protocols (see emocap_jax/evaluate/runner.py).
ZERO_SHOT = "zero_shot"
LINEAR_PROBE = "linear_probe"
FEW_SHOT = "few_shot"
VIDEO = "video"
COMPOUND = "compound"
AU_DETECTION = "au_detection"
RETRIEVAL = "retrieval"
MULTIPLE_CHOICE = "multiple_choice"
GROUNDING = "grounding"
PROTOCOLS = (ZERO_SHOT, LINEAR_PROBE, FEW_SHOT, VIDEO, COMPOUND, AU_DETECTION, RETRIEVAL,
             MULTIPLE_CHOICE, GROUNDING)
CLASSIFICATION_PROTOCOLS = (ZERO_SHOT, LINEAR_PROBE, FEW_SHOT)

# FABA-Bench AU detection scores these 12 AUs (JackYFL/EmoLA, emollava/eval/eval_FABA.py,
# `select_AUs` for FABA); its annotations use a 20-AU vocabulary.
FABA_AUS = co.FABA_SCORED_AUS
# FABA-Bench emotion labels in the order of the same script's `emotions2num`.
FABA_EMOTION_CLASSES = co.FABA_EMOTIONS
_MC_NOTE = ("accuracy over the questions a two-tower model can score, each option read as a "
            "statement answering the question; questions it cannot score (several images, "
            "identities across faces, yes/no without a statement, large counts, 'None of the "
            "above' options, ...) are skipped and counted per task in the details, so the "
            "number covers fewer questions than the paper's")


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """The paper's zero-shot numbers (percent) for ViT-B/32."""
    emocapclip: float
    flip: float
    metric: str = "uar"


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a benchmark's release lies on disk: what `python -m data_prep.benchmarks --name NAME`
    converts (its reader is data_prep.benchmark_formats.READERS[NAME]).

    name: the converter's name (--name).
    description: the expected layout, in one line (--list prints it; metadata.json records it).
    splits: the split names the owners define; single-split sets use "all".
    folds: official fold numbers (written to OUT/fold<k>/<split>/), or () without official folds.
    video: clips rather than still images.
    """
    name: str
    description: str
    splits: tuple[str, ...]
    folds: tuple[int, ...] = ()
    video: bool = False


def _affectnet(num_classes: int) -> Layout:
    return Layout(
        f"affectnet-{num_classes}",
        f"AffectNet {num_classes} classes: train_set|val_set/images/<n>.jpg + "
        "annotations/<n>_exp.npy, or training.csv/validation.csv + Manually_Annotated_Images/",
        ("train", "val"))


# The converters, in the order `python -m data_prep.benchmarks --list` prints them.
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("rafdb", "RAF-DB basic: basic/EmoLabel/list_patition_label.txt + "
                    "basic/Image/aligned/<name>_aligned.jpg (or Image/original/); 7 classes",
           ("train", "test")),
    Layout("rafdb-compound", "RAF-DB compound: compound/EmoLabel/list_patition_label.txt + "
                             "compound/Image/aligned/ (or Image/original/); 11 compound classes",
           ("train", "test")),
    _affectnet(7),
    _affectnet(8),
    Layout("ferplus", "FERPlus: fer2013new.csv (10 vote columns, majority rule) + the row-aligned "
                      "fer2013.csv pixels; 8 classes",
           ("train", "val", "test")),
    Layout("fer2013", "FER2013: fer2013.csv (emotion,pixels,Usage); Training/PublicTest/"
                      "PrivateTest -> train/val/test; 7 classes",
           ("train", "val", "test")),
    Layout("fer2013-folders",
           "FER2013 image folders: train/<class>/*.png, test/<class>/*.png; 7 classes",
           ("train", "test")),
    Layout("sfew", "SFEW 2.0: Train/<Class>/*.png, Val/<Class>/*.png; 7 classes", ("train", "val")),
    Layout("ckplus", "CK+ sequences: cohn-kanade-images/S###/###/*.png + Emotion/S###/###/"
                     "*_emotion.txt; last 3 frames per labelled sequence; group = subject",
           ("all",)),
    Layout("ckplus48", "CK+48: <class>/S<subject>_<seq>_<frame>.png; 7 classes; group = subject",
           ("all",)),
    Layout("jaffe", "JAFFE: *.tiff named <identity>.<code><n>.<id>.tiff (AN DI FE HA NE SA SU); "
                    "group = identity",
           ("all",)),
    Layout("imagefolder",
           "generic: ROOT/<class>/**/<image>; classes = sorted folder names or --classes",
           ("all",)),
    Layout("dfew", "DFEW: EmoLabel_DataSplit/{train,test}(single-labeled)/set_<k>.csv + "
                   "Clip/clip_224x224/<id>/ frames or Clip/original/<id>.avi; 7 classes; 5 folds",
           ("train", "test"), folds=co.VIDEO_FOLDS, video=True),
    Layout("ferv39k", "FERV39k: 4_setups/All_scenes/{train,test}_All.csv (or 0_7_LabelClassSplit/) "
                      "+ 2_ClipsforFaceCrop/<Scene>/<Class>/<clip>/ frames; 7 classes",
           ("train", "test"), video=True),
    Layout("mafw", "MAFW: 'Train & Test Set/single/no_caption/set_<k>/{train,test}.txt' + "
                   "data/clips/<name>.mp4 or data/frames/<name>/; 11 classes; 5 folds",
           ("train", "test"), folds=co.VIDEO_FOLDS, video=True),
    Layout("mafw-compound", "MAFW compound: 'Train & Test Set/compound/no_caption/set_<k>/"
                            "{train,test}.txt'; classes = labels found in those lists; 5 folds",
           ("train", "test"), folds=co.VIDEO_FOLDS, video=True),
    Layout("afew", "AFEW: Train_AFEW/<Class>/*.avi, Val_AFEW/<Class>/*.avi; 7 classes; video",
           ("train", "val"), video=True),
    Layout("crema-d", "CREMA-D: VideoFlash/<actor>_<sentence>_<ANG|DIS|FEA|HAP|NEU|SAD>_<level>"
                      ".flv; 6 classes; group = actor",
           ("all",), video=True),
    Layout("ravdess", "RAVDESS: Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4 (modality 01/02, one per "
                      "recording); 8 classes; group = actor",
           ("all",), video=True),
    Layout("enterface05", "eNTERFACE'05: subject <N>/<emotion>/sentence <M>/*.avi; 6 classes; "
                          "group = subject",
           ("all",), video=True),
    Layout("faba-bench", "FABA-Bench: FABAInstruct/eval/eval_emotion_anno.json and "
                         "eval_au_anno.json + FABAInstruct/eval/images/; splits emotion (7 "
                         "classes) and au (20-AU vocabulary)",
           ("emotion", "au")),
    Layout("face-human-bench", "Face-Human-Bench: data/Face-Human-Bench/<split>/json/en/*.json + "
                               "images built by the authors' prepare_data.py in <split>/output/"
                               "eval_data/ (or raw_data/ copies); multiple choice -> "
                               "questions.jsonl",
           ("test", "dev")),
    Layout("facexbench", "FaceXBench: benchmark/*.json (questions) + benchmark/images/<file>/"
                         "question_<n>.png (source-dataset paths such as data/WMCA/... under "
                         "benchmark/); multiple choice -> questions.jsonl",
           ("test",)),
)}


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One evaluation benchmark.

    name: registry key (the converter's name where one exists).
    title: how papers name it.
    group: one of GROUPS.
    classes: class names in label_id order, or None when the dataset's metadata fixes them.
    prompt_words / descriptions: one per class, aligned with `classes`.
    templates: zero-shot templates ("{}" is the prompt word).
    protocols: the protocols that apply; `paper_protocol` is the one the paper reports.
    metric: the headline metric of `paper_protocol` ("uar", "mean_f1" or "accuracy").
    test_split / train_split: split folders written by `python -m data_prep.benchmarks`.
    official_folds: fold numbers with OUT/fold<k>/<split>/ folders (DFEW, MAFW), or ().
    cv_folds: folds of a subject-independent cross-validation for single-split benchmarks (linear
      probe, few-shot), grouped by the records' `group` (subject / actor).
    video: clips; frames are sampled uniformly and their features averaged.
    aus: AU codes scored by AU detection.
    converter: the name of its release's Layout (a key of LAYOUTS: what data_prep.benchmarks
      --name converts), or "" when there is none; `layout` is that Layout.
    paper: the paper's numbers; other: other published zero-shot numbers {model: value}.
    note: anything a reader of the report must know.
    """
    name: str
    title: str
    group: str
    classes: Optional[tuple[str, ...]]
    prompt_words: Optional[tuple[str, ...]] = None
    descriptions: Optional[tuple[str, ...]] = None
    templates: tuple[str, ...] = prompts.EMOTION_TEMPLATES
    protocols: tuple[str, ...] = CLASSIFICATION_PROTOCOLS
    paper_protocol: str = ZERO_SHOT
    metric: str = "uar"
    test_split: str = "test"
    train_split: Optional[str] = "train"
    official_folds: tuple[int, ...] = ()
    cv_folds: int = 0
    video: bool = False
    aus: tuple[int, ...] = ()
    converter: str = ""
    paper: Optional[PaperResult] = None
    other: dict = dataclasses.field(default_factory=dict)
    note: str = ""

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"{self.name}: group {self.group!r} is none of {GROUPS}")
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"{self.name}: unknown protocols {unknown}")
        if self.paper_protocol not in self.protocols:
            raise ValueError(f"{self.name}: paper protocol {self.paper_protocol} not in "
                             f"{self.protocols}")
        if self.classes is not None:
            for field in ("prompt_words", "descriptions"):
                value = getattr(self, field)
                if value is not None and len(value) != len(self.classes):
                    raise ValueError(f"{self.name}: {len(value)} {field} for "
                                     f"{len(self.classes)} classes")
        if self.converter:
            if self.converter not in LAYOUTS:
                raise ValueError(f"{self.name}: converter {self.converter!r} is none of the "
                                 f"layouts {list(LAYOUTS)}")
            layout = LAYOUTS[self.converter]
            splits = (self.test_split,) + ((self.train_split,) if self.train_split else ())
            if not set(splits) <= set(layout.splits):
                raise ValueError(f"{self.name}: splits {list(splits)} are not all among layout "
                                 f"{layout.name}'s {list(layout.splits)}")
            if (self.official_folds, self.video) != (layout.folds, layout.video):
                raise ValueError(f"{self.name}: official folds {self.official_folds} and video="
                                 f"{self.video} differ from layout {layout.name}'s "
                                 f"{layout.folds} and video={layout.video}")

    @property
    def layout(self) -> Optional[Layout]:
        """The release layout the converters CLI writes this benchmark from, or None."""
        return LAYOUTS[self.converter] if self.converter else None

    def resolve(self, recorded_classes: Optional[Sequence[str]]) -> "Benchmark":
        """This entry with classes, prompt words and descriptions filled in from the dataset's
        recorded class order; raises when the dataset's order is not the benchmark's."""
        recorded = list(recorded_classes) if recorded_classes else None
        classes = self.classes
        if classes == ():
            # AU detection and multiple-choice benchmarks have no classes to check.
            return self
        if classes is None:
            if recorded is None:
                raise ValueError(f"benchmark {self.name} takes its classes from the dataset, but "
                                 "the dataset's metadata.json records none")
            classes = tuple(recorded)
        elif recorded is not None and list(classes) != recorded:
            raise ValueError(
                f"the dataset's class order {recorded} is not benchmark {self.name}'s "
                f"{list(classes)}: convert it with `python -m data_prep.benchmarks --name "
                f"{self.converter or self.name}` or pick the benchmark that matches")
        words = self.prompt_words if self.prompt_words is not None else tuple(
            (prompts.compound_prompt_word if self.group == "compound FER" else prompts.prompt_word)(c)
            for c in classes)
        descriptions = self.descriptions if self.descriptions is not None else tuple(
            prompts.description(c) for c in classes)
        return dataclasses.replace(self, classes=tuple(classes), prompt_words=tuple(words),
                                   descriptions=tuple(descriptions))


def _classes(names: Sequence[str], compound: bool = False) -> dict:
    """classes, prompt words and descriptions of a fixed class list."""
    word = prompts.compound_prompt_word if compound else prompts.prompt_word
    return dict(classes=tuple(names), prompt_words=tuple(word(c) for c in names),
                descriptions=tuple(prompts.description(c) for c in names))


_VIDEO_PROTOCOLS = (VIDEO, LINEAR_PROBE, FEW_SHOT)
_COMPOUND_PROTOCOLS = (COMPOUND, LINEAR_PROBE, FEW_SHOT)
_CK_NOTE = "CK+ numbers as the paper reports them; CK+48 is a 48x48 crop of CK+'s last frames"

_ENTRIES = (
    # ----- static FER
    Benchmark("rafdb", "RAF-DB", "static FER", **_classes(co.RAFDB_BASIC),
              converter="rafdb", paper=PaperResult(62.8, 45.1),
              other={"CLIP B/32": 35.0, "Exp-CLIP L/14": 58.7}),
    Benchmark("affectnet-7", "AffectNet-7", "static FER", **_classes(co.AFFECTNET_EXPRESSIONS[:7]),
              test_split="val", converter="affectnet-7", paper=PaperResult(51.9, 38.3),
              note="AffectNet's test set is not public: the validation set is the test split"),
    Benchmark("affectnet-8", "AffectNet-8", "static FER", **_classes(co.AFFECTNET_EXPRESSIONS[:8]),
              test_split="val", converter="affectnet-8", paper=PaperResult(43.4, 32.9),
              note="AffectNet's test set is not public: the validation set is the test split"),
    Benchmark("ferplus", "FERPlus", "static FER", **_classes(co.FERPLUS),
              converter="ferplus", paper=PaperResult(55.1, 44.7)),
    Benchmark("ckplus", "CK+", "static FER", **_classes(co.CK_EMOTIONS),
              test_split="all", train_split=None, cv_folds=10, converter="ckplus",
              paper=PaperResult(57.5, 46.4),
              note="last 3 frames of the 327 labelled sequences; subject-independent 10 folds"),
    Benchmark("ckplus48", "CK+48", "static FER", **_classes(co.CKPLUS48),
              test_split="all", train_split=None, cv_folds=10, converter="ckplus48",
              paper=PaperResult(57.5, 46.4), note=_CK_NOTE),
    Benchmark("jaffe", "JAFFE", "static FER", **_classes(co.JAFFE),
              test_split="all", train_split=None, cv_folds=10, converter="jaffe",
              paper=PaperResult(54.4, 40.6), note="10 identities; folds are identity-independent"),
    Benchmark("sfew", "SFEW 2.0", "static FER", **_classes(co.SFEW),
              test_split="val", converter="sfew", paper=PaperResult(49.3, 27.8),
              note="SFEW's test labels are not public: the validation set is the test split"),
    Benchmark("faba-emotion", "FABA-Bench emotion", "static FER",
              **_classes(FABA_EMOTION_CLASSES), test_split="emotion", train_split=None,
              converter="faba-bench", paper=PaperResult(67.9, 42.7),
              note="FABA-Instruct's 403 evaluation faces (eval_emotion_anno.json), converted "
                   "by data_prep.benchmarks --name faba-bench into OUT/emotion/"),
    Benchmark("fer2013", "FER2013", "static FER", **_classes(co.FER2013),
              converter="fer2013", note="not in the paper's chart"),
    Benchmark("imagefolder", "image folder", "static FER", classes=None, test_split="all",
              train_split=None, cv_folds=5, converter="imagefolder",
              note="classes are the dataset's recorded ones (its folder names)"),
    # ----- compound FER
    Benchmark("rafdb-compound", "RAF-DB compound", "compound FER",
              **_classes(co.RAFDB_COMPOUND, compound=True),
              templates=prompts.COMPOUND_TEMPLATES, protocols=_COMPOUND_PROTOCOLS,
              paper_protocol=COMPOUND, converter="rafdb-compound",
              paper=PaperResult(32.7, 22.8)),
    Benchmark("mafw-compound", "MAFW compound", "compound FER", classes=None,
              templates=prompts.COMPOUND_TEMPLATES, protocols=_COMPOUND_PROTOCOLS,
              paper_protocol=COMPOUND, official_folds=co.VIDEO_FOLDS, video=True,
              converter="mafw-compound", paper=PaperResult(9.3, 5.9),
              note="classes are every label of the compound lists (data_prep.benchmarks)"),
    # ----- dynamic FER (video)
    Benchmark("dfew", "DFEW", "dynamic FER (video)", **_classes(co.DFEW),
              protocols=_VIDEO_PROTOCOLS, paper_protocol=VIDEO,
              official_folds=co.VIDEO_FOLDS, video=True, converter="dfew",
              paper=PaperResult(42.2, 27.5),
              other={"CLIP B/32": 22.1, "Exp-CLIP L/14": 40.2, "EmoCLIP B/32": 36.8}),
    Benchmark("ferv39k", "FERV39k", "dynamic FER (video)",
              **_classes(co.FERV39K), protocols=_VIDEO_PROTOCOLS,
              paper_protocol=VIDEO, video=True, converter="ferv39k",
              paper=PaperResult(29.9, 20.3)),
    Benchmark("mafw", "MAFW", "dynamic FER (video)", **_classes(co.MAFW),
              protocols=_VIDEO_PROTOCOLS, paper_protocol=VIDEO,
              official_folds=co.VIDEO_FOLDS, video=True, converter="mafw",
              paper=PaperResult(30.8, 20.8), other={"EmoCLIP B/32": 25.9}),
    Benchmark("afew", "AFEW", "dynamic FER (video)", **_classes(co.AFEW),
              protocols=_VIDEO_PROTOCOLS, paper_protocol=VIDEO, test_split="val", video=True,
              converter="afew", paper=PaperResult(39.9, 21.8),
              note="AFEW's test labels are not public: the validation set is the test split"),
    Benchmark("crema-d", "CREMA-D", "dynamic FER (video)",
              **_classes(co.CREMA), protocols=_VIDEO_PROTOCOLS,
              paper_protocol=VIDEO, test_split="all", train_split=None, cv_folds=5, video=True,
              converter="crema-d", paper=PaperResult(48.7, 25.1)),
    Benchmark("ravdess", "RAVDESS", "dynamic FER (video)",
              **_classes(co.RAVDESS), protocols=_VIDEO_PROTOCOLS,
              paper_protocol=VIDEO, test_split="all", train_split=None, cv_folds=6, video=True,
              converter="ravdess", paper=PaperResult(50.4, 25.9),
              note="24 actors; folds are actor-independent (4 actors each)"),
    Benchmark("enterface05", "eNTERFACE'05", "dynamic FER (video)",
              **_classes(co.ENTERFACE), protocols=_VIDEO_PROTOCOLS,
              paper_protocol=VIDEO, test_split="all", train_split=None, cv_folds=5, video=True,
              converter="enterface05", paper=PaperResult(35.2, 20.6)),
    # ----- action units
    Benchmark("faba-au", "FABA-Bench AU", "action units", classes=(), protocols=(AU_DETECTION,),
              paper_protocol=AU_DETECTION, metric="mean_f1", test_split="au", train_split=None,
              aus=FABA_AUS, converter="faba-bench",
              paper=PaperResult(57.0, 51.8, metric="mean_f1"),
              note="FABA-Instruct's 325 evaluation faces (eval_au_anno.json, OUT/au/ of "
                   "data_prep.benchmarks --name faba-bench); the paper's AU metric is not "
                   "stated: ours is the mean F1 over the 12 AUs FABA-Bench's script scores"),
    # ----- face understanding (multiple-choice questions)
    Benchmark("face-human-bench", "Face-Human-Bench", "face understanding", classes=(),
              protocols=(MULTIPLE_CHOICE,), paper_protocol=MULTIPLE_CHOICE, metric="accuracy",
              train_split=None, converter="face-human-bench",
              paper=PaperResult(71.9, 56.0, metric="accuracy"),
              note="English test split, every entry asked once per image variant as the "
                   "authors' evaluation does; " + _MC_NOTE),
    Benchmark("facexbench", "FaceXBench", "face understanding", classes=(),
              protocols=(MULTIPLE_CHOICE,), paper_protocol=MULTIPLE_CHOICE, metric="accuracy",
              train_split=None, converter="facexbench",
              paper=PaperResult(69.9, 58.5, metric="accuracy"),
              note="tasks are the release's sub-categories; " + _MC_NOTE),
    # ----- the embedded synthetic faces (python -m data_prep.synthetic_benchmarks)
    Benchmark("synthetic", "synthetic faces", "synthetic",
              **_classes(synthetic_faces.BASIC_CLASSES),
              protocols=(ZERO_SHOT, LINEAR_PROBE, FEW_SHOT, AU_DETECTION, RETRIEVAL,
                         MULTIPLE_CHOICE, GROUNDING),
              test_split="basic", train_split=None, cv_folds=5,
              aus=synthetic_faces.AU_CODES,
              note="held-out identities of the synthetic corpus (its eval split)"),
    Benchmark("synthetic-compound", "synthetic compound", "synthetic",
              **_classes(synthetic_faces.COMPOUND_CLASSES, compound=True),
              templates=prompts.COMPOUND_TEMPLATES, protocols=_COMPOUND_PROTOCOLS,
              paper_protocol=COMPOUND, test_split="compound", train_split=None, cv_folds=3),
    Benchmark("synthetic-video", "synthetic video", "synthetic",
              **_classes(synthetic_faces.BASIC_CLASSES), protocols=_VIDEO_PROTOCOLS,
              paper_protocol=VIDEO, test_split="video", train_split=None, cv_folds=3,
              video=True, note="clips ramp from a neutral face to the expression's apex"),
)

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _ENTRIES}


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def names() -> list[str]:
    return list(BENCHMARKS)


def paper_table() -> list[Benchmark]:
    """The benchmarks with paper numbers, in the paper's group order."""
    rows = [b for b in _ENTRIES if b.paper is not None]
    return sorted(rows, key=lambda b: GROUPS.index(b.group))
