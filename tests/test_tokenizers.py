"""Tokenizers: CLIP BPE against open_clip's ids, the shared row format, sentencepiece training and CLI."""
import html
import json
import pathlib
import pickle
import random
import re
import subprocess
import sys

import ftfy
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from emocap_jax import tokenizers as tk
from emocap_jax.models.text import end_of_text_index
from tests import open_clip_tokenizer_reference
from emocap_jax.tokenizers import (
    ClipBpeTokenizer,
    SentencePieceTokenizer,
    get_tokenizer,
    tokenizer_from_config,
)

# --------------------------------------------------------------------------------------------
# caption generator for the sentencepiece tests (EmoCap style: global / local / summary)

EMOTIONS = ["happiness", "sadness", "surprise", "fear", "anger", "disgust", "contempt", "calm neutrality",
            "joyful excitement", "anxious worry", "bitter resentment", "quiet amusement", "shocked disbelief"]
INTENSITIES = ["slight", "moderate", "high", "very strong", "subtle", "pronounced", "mild", "intense"]
SUBJECTS = ["young woman", "elderly man", "teenage boy", "middle-aged woman", "small child", "bearded man",
            "girl with glasses", "soldier", "grandmother", "police officer", "waiter", "bride", "detective",
            "nurse", "farmer", "pilot", "violinist"]
SETTINGS = ["in a dim kitchen", "under bright sunlight", "at a crowded party", "beside a rainy window",
            "inside a moving car", "on a theatre stage", "during a tense meeting", "near the ocean",
            "at a funeral", "in a courtroom", "on a snowy mountain", "at midnight", "in a hospital corridor"]
REGIONS = [
    ("inner brows", "raised", "inner brow raiser"), ("outer brows", "lifted", "outer brow raiser"),
    ("brows", "lowered and drawn together", "brow lowerer"), ("upper eyelids", "raised", "upper lid raiser"),
    ("cheeks", "raised", "cheek raiser"), ("eyelids", "tightened", "lid tightener"),
    ("nose", "wrinkled", "nose wrinkler"), ("lip corners", "pulled up", "lip corner puller"),
    ("lip corners", "pulled down", "lip corner depressor"), ("lips", "pressed together", "lip pressor"),
    ("jaw", "dropped open", "jaw drop"), ("chin", "pushed upward", "chin raiser"),
    ("upper lip", "curled", "upper lip raiser"), ("lips", "stretched sideways", "lip stretcher"),
]


def caption_record(rng, idx):
    emo = rng.choice(EMOTIONS)
    return {
        "id": f"movie{idx // 10}_f{idx:04d}",
        "image": f"images/{idx}.jpg",
        "global": f"This image portrays a {rng.choice(SUBJECTS)} {rng.choice(SETTINGS)} with a "
                  f"{rng.choice(INTENSITIES)} expression of {emo}.",
        "local": [f"The {region} are {action}, showing a {rng.choice(INTENSITIES)} intensity of {au} "
                  f"(AU{rng.randint(1, 28)})." for region, action, au in rng.sample(REGIONS, rng.randint(2, 4))],
        "summary": f"Overall, the {rng.choice(SUBJECTS)} most likely feels {emo}, mainly shown by the "
                   f"{rng.choice(REGIONS)[0]} and {rng.choice(REGIONS)[0]}.",
    }


def caption_sentences(n, seed=0):
    rng, out, idx = random.Random(seed), [], 0
    while len(out) < n:
        r = caption_record(rng, idx)
        out += [r["global"], *r["local"], r["summary"]]
        idx += 1
    return out[:n]


SP_VOCAB = 180  # the generated corpus supports about 210 unigram pieces


# --------------------------------------------------------------------------------------------
# CLIP BPE


@pytest.fixture(scope="module")
def clip():
    return ClipBpeTokenizer()


@pytest.fixture(scope="module")
def clip_fixture(fixtures_dir):
    with open(fixtures_dir / "clip_tokenizer" / "clip_tokenizer.json") as f:
        return json.load(f)


def test_clip_matches_open_clip_ids(clip, clip_fixture):
    expected = np.asarray(clip_fixture["ids"])
    got = clip(clip_fixture["sentences"], context_length=clip_fixture["context_length"])
    assert got.dtype == np.int32 and got.shape == expected.shape
    for sentence, row, want in zip(clip_fixture["sentences"], got, expected):
        np.testing.assert_array_equal(row, want, err_msg=repr(sentence))


@pytest.fixture(scope="module")
def open_clip_reference(clip_fixture):
    ref = open_clip_tokenizer_reference.SimpleTokenizer()
    np.testing.assert_array_equal(ref(clip_fixture["sentences"], clip_fixture["context_length"]),
                                  clip_fixture["ids"])  # the transliteration is open_clip's
    return ref


# Text the fixture's nine sentences leave out: contractions (straight and curly), numbers and
# other scripts' digits, accents (composed and not), ligatures, emoji with modifiers and joiners,
# CJK, Cyrillic, Arabic, Turkish dotted I, HTML entities (double-escaped too), control characters,
# every kind of whitespace, literal special tokens, long words, and lengths around the context.
HARD_TEXTS = [
    "don't", "DON'T", "I'M happy, she'S sad", "it's they'll we've you're I'd", "rock'n'roll",
    "don\u2019t", "\u2018quoted\u2019 \u201cdouble\u201d", "1234567 3.14 1e10 \u0663\u0664 \u00bd \u00b2",
    "caf\u00e9 na\u00efve \u00dcber \u00c5NGSTR\u00d6M", "cafe\u0301", "\ufb01ne \ufb02ow", "\u2167 \u216b",
    "\U0001f600\U0001f602 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\u4e2d\u6587\u5b57\u7b26 \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \ud55c\uad6d\uc5b4",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440", "\u0645\u0631\u062d\u0628\u0627",
    "\u0130stanbul \u00df \u1e9e", "\u03a3\u0391\u03a3 \u038c\u03a3\u039f\u03a3",
    "&amp;amp; &lt;b&gt; &#39;s &quot;x&quot; &nbsp;a", "Tom &amp; Jerry\u2019s", "a&b", "&", "&amp",
    "<b>bold</b> &amp; text", "&amp;amp;amp;lt; &amp;#39;", "<i>&amp;amp;</i>",
    "a\tb\nc\r\nd\x0be\x0cf\x85g\u2028h", "  lots    of   space  ",
    "\u00a0\u2003\u3000nbsp", "\x00\x1b[31mred\x1b[0m", "caf\u00c3\u00a9", "\ufeffbom \u200bzero",
    "<start_of_text>", "<START_OF_TEXT> hi <end_of_text>", "<end_of_text><end_of_text>",
    "x" * 300, "supercalifragilisticexpialidocious" * 4, "A\u0300" * 40, "'s's's", "''", "'",
    "https://example.com/a?b=c&d=e #tag @user ....!!!???", "\u2013\u2014\u2015 \u2026",
    "", " ", "word " * 74, "word " * 75, "word " * 76,
]


@pytest.mark.parametrize("context_length", [77, 8])
def test_clip_matches_open_clip_on_hard_text(clip, open_clip_reference, context_length):
    texts = list(HARD_TEXTS)
    rng = random.Random(0)  # and random mixtures of the characters that take the slow paths
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + list("\t\n\r\x00\x85\xa0\u00e9\u00df\u0130\ufb01"
                                                          "\u2019\u201c\U0001f600\u4e2d\u03a3\u0301\u200d")
    alphabet += ["&amp;", "&lt;", "&#39;", "'s", "'T"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    got = clip(texts, context_length=context_length)
    want = open_clip_reference(texts, context_length)
    for text, row, expected in zip(texts, got, want):
        np.testing.assert_array_equal(row, expected, err_msg=repr(text))


def test_clip_matches_fixture_when_word_cache_keeps_overflowing(clip_fixture, monkeypatch):
    monkeypatch.setattr(ClipBpeTokenizer, "MAX_CACHED_WORDS", 4)
    tok = ClipBpeTokenizer()
    for _ in range(2):  # second pass runs on a partly warm, repeatedly cleared cache
        np.testing.assert_array_equal(tok(clip_fixture["sentences"]), np.asarray(clip_fixture["ids"]))
    assert len(tok._word_ids) <= 4 + 2  # cap plus the two pre-seeded special tokens


def test_clip_special_ids(clip):
    assert (clip.vocab_size, clip.sot_id, clip.eot_id, clip.pad_id, clip.context_length) == (49408, 49406, 49407, 0, 77)


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_clip_empty_sentence(clip, text):
    row = clip(text)[0]
    assert row.shape == (77,)
    assert row[:2].tolist() == [49406, 49407] and not row[2:].any()


@pytest.mark.parametrize("context_length", [77, 10, 2])
def test_clip_truncation_keeps_eot(clip, context_length):
    text = " ".join(f"the brows are lowered number {i}" for i in range(40))
    full = [clip.sot_id] + clip.encode(text) + [clip.eot_id]
    assert len(full) > 77
    row = clip(text, context_length=context_length)[0]
    assert row.shape == (context_length,)
    assert row[-1] == clip.eot_id
    assert row[:-1].tolist() == full[: context_length - 1]


def test_clip_exact_fit_is_not_truncated(clip):
    words = clip.encode("word " * 75)
    assert len(words) == 75
    row = clip("word " * 75)[0]
    assert row.tolist() == [clip.sot_id] + words + [clip.eot_id]


def test_clip_batch_equals_single(clip, clip_fixture):
    sentences = clip_fixture["sentences"] + ["The jaw drops open; AU26 at high intensity."]
    batch = clip(tuple(sentences), context_length=40)
    singles = np.concatenate([clip(s, context_length=40) for s in sentences])
    np.testing.assert_array_equal(batch, singles)
    assert clip([]).shape == (0, 77)


def test_clip_ascii_fast_path_equals_ftfy_cleaning():
    # The fast path skips ftfy + html.unescape on plain ASCII; open_clip always runs them.
    def reference_clean(text):
        return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()

    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + ["\t", "\n", "\r", "\x00", "\x1b", "é", "’", "&amp;", "&lt;"]
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    samples += ["a &amp;amp; b", "&#39;s", "x\r\ny", "\x1b[31mred\x1b[0m", "cafÃ©", "ﬁne"]
    for text in samples:
        assert tk._clip_clean(text) == reference_clean(text), repr(text)


def test_clip_decode(clip):
    row = clip("The Eyes are WIDE open!", context_length=20)[0]
    assert clip.decode(row) == "the eyes are wide open !"
    assert clip.decode(clip.encode("über café")) == "über café"


def test_clip_rejects_bad_input(clip):
    with pytest.raises(TypeError, match="bytes"):
        clip(b"a face")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        clip(["a face", None])
    with pytest.raises(ValueError, match="context_length"):
        clip("a face", context_length=1)


def test_clip_pickles_to_equal_tokenizer(clip, clip_fixture):
    blob = pickle.dumps(clip)
    assert len(blob) < 10_000  # the recipe travels, not the vocabulary
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone(clip_fixture["sentences"]), clip(clip_fixture["sentences"]))


def test_clip_config_round_trip(clip_fixture):
    tok = ClipBpeTokenizer(context_length=32)
    cfg = json.loads(json.dumps(tok.to_config()))
    assert cfg == {"type": "clip_bpe", "context_length": 32}
    rebuilt = tokenizer_from_config(cfg)
    assert isinstance(rebuilt, ClipBpeTokenizer) and rebuilt.context_length == 32
    np.testing.assert_array_equal(rebuilt(clip_fixture["sentences"]), tok(clip_fixture["sentences"]))


def test_config_errors():
    with pytest.raises(ValueError, match="'type'"):
        tokenizer_from_config({"type": "wordpiece"})
    with pytest.raises(ValueError, match="unknown keys"):
        tokenizer_from_config({"type": "clip_bpe", "context_length": 77, "lowercase": True})
    with pytest.raises(FileNotFoundError, match="nowhere.model"):
        tokenizer_from_config({"type": "sentencepiece", "model_file": "/nowhere.model"})


def test_clip_rejects_wrong_vocab_file(tmp_path):
    import gzip

    bad = tmp_path / "vocab.txt.gz"
    with gzip.open(bad, "wt") as f:
        f.write("#version\na b\n")
    with pytest.raises(ValueError, match="vocab.txt.gz"):
        ClipBpeTokenizer(vocab_path=bad)


# --------------------------------------------------------------------------------------------
# sentencepiece


@pytest.fixture(scope="module")
def sp_corpus():
    return caption_sentences(600)


@pytest.fixture(scope="module")
def sp(tmp_path_factory, sp_corpus):
    prefix = tmp_path_factory.mktemp("sp") / "captions"
    return SentencePieceTokenizer.train(iter(sp_corpus), prefix, SP_VOCAB, context_length=24, minloglevel=2)


def test_sp_trained_special_ids(sp):
    assert (sp.vocab_size, sp.sot_id, sp.eot_id, sp.pad_id) == (SP_VOCAB, SP_VOCAB - 2, SP_VOCAB - 1, 0)
    assert sp.id_to_piece(sp.sot_id) == "<s>" and sp.id_to_piece(sp.eot_id) == "</s>"


def test_sp_encode_decode_round_trip(sp, sp_corpus):
    for sentence in sp_corpus:
        ids = sp.encode(sentence)
        assert ids and 1 not in ids  # unk id 1: character_coverage=1.0 keeps every training character
        assert sp.decode(ids) == sentence
    rows = sp(sp_corpus, context_length=77)
    assert [sp.decode(r) for r in rows] == sp_corpus


def test_sp_rows_and_truncation(sp, sp_corpus):
    rows = sp(sp_corpus)
    assert rows.dtype == np.int32 and rows.shape == (len(sp_corpus), 24)
    truncated = 0
    for sentence, row in zip(sp_corpus, rows):
        full = [sp.sot_id] + sp.encode(sentence) + [sp.eot_id]
        if len(full) <= 24:
            assert row.tolist() == full + [sp.pad_id] * (24 - len(full))
        else:
            truncated += 1
            assert row[:-1].tolist() == full[:23] and row[-1] == sp.eot_id
        # EOT is the largest id, so argmax pooling (as for CLIP BPE) finds it.
        assert row.argmax() == row.tolist().index(sp.eot_id)
    assert truncated > 0, "corpus should contain sentences longer than the context"
    np.testing.assert_array_equal(sp(""), [[sp.sot_id, sp.eot_id] + [0] * 22])
    np.testing.assert_array_equal(sp(sp_corpus[:5]), np.concatenate([sp(s) for s in sp_corpus[:5]]))


def test_sp_config_round_trip_and_hash_check(sp, sp_corpus, tmp_path):
    cfg = json.loads(json.dumps(sp.to_config()))
    assert cfg["type"] == "sentencepiece" and cfg["context_length"] == 24
    rebuilt = tokenizer_from_config(cfg)
    np.testing.assert_array_equal(rebuilt(sp_corpus[:20]), sp(sp_corpus[:20]))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(sp))(sp_corpus[:20]), sp(sp_corpus[:20]))

    other = SentencePieceTokenizer.train(caption_sentences(600, seed=1), tmp_path / "other", SP_VOCAB, minloglevel=2)
    with pytest.raises(ValueError, match="sha256"):
        tokenizer_from_config({**cfg, "model_file": other.model_file})


def test_sp_model_defaults_and_missing_specials(tmp_path, sp_corpus):
    # sentencepiece's own defaults: unk 0, bos 1, eos 2, no pad -> pad falls back to 0.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sp_corpus), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=100, minloglevel=2)
    plain = SentencePieceTokenizer(tmp_path / "plain.model")
    assert (plain.sot_id, plain.eot_id, plain.pad_id) == (1, 2, 0)

    spm.SentencePieceTrainer.train(sentence_iterator=iter(sp_corpus), model_prefix=str(tmp_path / "nospecial"),
                                   vocab_size=100, bos_id=-1, eos_id=-1, minloglevel=2)
    with pytest.raises(ValueError, match=r"nospecial\.model.*bos"):
        SentencePieceTokenizer(tmp_path / "nospecial.model")


@pytest.fixture(scope="module")
def sp_default_ids(tmp_path_factory, sp_corpus):
    """A model with sentencepiece's own special ids (unk 0, bos 1, eos 2, no pad), as a model
    trained outside ``SentencePieceTokenizer.train`` has them: EOT is not the largest id."""
    prefix = tmp_path_factory.mktemp("sp_default") / "plain"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sp_corpus), model_prefix=str(prefix),
                                   vocab_size=100, minloglevel=2)
    return SentencePieceTokenizer(f"{prefix}.model", context_length=24)


def test_pooling_problem_says_whether_the_text_tower_finds_eot(clip, sp, sp_default_ids, sp_corpus,
                                                               tmp_path):
    """``pooling_problem(eot_token_id)`` is None exactly when the text tower's pooling rule
    (models.text.end_of_text_index) lands on each row's EOT."""
    # Padding with the largest id: argmax pooling lands on the first pad, after EOT.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sp_corpus), model_prefix=str(tmp_path / "pad_top"),
                                   vocab_size=100, unk_id=0, bos_id=97, eos_id=98, pad_id=99, minloglevel=2)
    pad_top = SentencePieceTokenizer(tmp_path / "pad_top.model", context_length=24)
    assert (pad_top.eot_id, pad_top.pad_id) == (98, 99)
    sentences = sp_corpus[:40] + ["", "joy!"]
    for tok in (clip, sp, sp_default_ids, pad_top):
        rows = tok(sentences)
        eot_at = np.array([row.tolist().index(tok.eot_id) for row in rows])
        for rule in (None, tok.eot_id, 2, 7):
            pooled = np.asarray(end_of_text_index(jnp.asarray(rows), rule))
            finds_eot = bool((pooled == eot_at).all())
            assert (tok.pooling_problem(rule) is None) == finds_eot, (tok, rule)
    # argmax pooling misses the EOT of sentencepiece's default ids; first-EOT pooling finds it.
    assert "end-of-text id 2 is not its largest" in sp_default_ids.pooling_problem(None)
    assert sp_default_ids.pooling_problem(2) is None
    assert "first token id 49407" in sp.pooling_problem(49407)


def test_sp_train_errors(tmp_path, sp_corpus):
    with pytest.raises(ValueError, match="eos_id"):
        SentencePieceTokenizer.train(sp_corpus, tmp_path / "m", SP_VOCAB, eos_id=5)
    with pytest.raises(ValueError, match="vocab_size=5000"):
        SentencePieceTokenizer.train(sp_corpus, tmp_path / "big", 5000, minloglevel=2)


def test_get_tokenizer(sp):
    assert isinstance(get_tokenizer("clip"), ClipBpeTokenizer)
    assert get_tokenizer("CLIP_BPE", context_length=16).context_length == 16
    tok = get_tokenizer(sp.model_file, context_length=33)
    assert isinstance(tok, SentencePieceTokenizer) and tok.context_length == 33
    with pytest.raises(ValueError, match=r"clip_bpe.*\.model"):
        get_tokenizer("bert-base-uncased")


# --------------------------------------------------------------------------------------------
# CLI


def write_manifest(path, n_records, seed=0):
    rng = random.Random(seed)
    records = [caption_record(rng, i) for i in range(n_records)]
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return records


def test_cli_trains_on_manifest_and_text(tmp_path):
    records = write_manifest(tmp_path / "manifest.jsonl", 150)
    extra = ["A stranger smiles warmly at the camera.", "", "Tears run down both cheeks."]
    (tmp_path / "extra.txt").write_text("\n".join(extra) + "\n")
    prefix = tmp_path / "out" / "captions"
    proc = subprocess.run(
        [sys.executable, "-m", "emocap_jax.tokenizers", "train-sentencepiece",
         "--input", str(tmp_path / "manifest.jsonl"), str(tmp_path / "extra.txt"),
         "--model-prefix", str(prefix), "--vocab-size", str(SP_VOCAB), "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    expected_sentences = [s for r in records for s in [r["global"], *r["local"], r["summary"]]] + [extra[0], extra[2]]
    assert report["sentences"] == len(expected_sentences)
    assert report["vocab_size"] == SP_VOCAB and report["eot_id"] == SP_VOCAB - 1
    tok = get_tokenizer(str(prefix) + ".model")
    for sentence in expected_sentences[:50] + expected_sentences[-2:]:
        assert tok.decode(tok(sentence)[0]) == sentence


def test_cli_reads_manifest_fields_in_order(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "global": "G.", "local": ["L1.", " ", "L2."], "summary": "S."}) + "\n\n")
    assert list(tk.iter_caption_sentences(path)) == ["G.", "L1.", "L2.", "S."]
    assert list(tk.iter_caption_sentences(path, fmt="text")) == [path.read_text().strip()]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "x7", "global": "G.", "summary": "S."}', r"bad\.jsonl:2 \(record id 'x7'\).*'local'"),
        ('{"id": "x8", "global": 3, "local": [], "summary": "S."}', r"bad\.jsonl:2.*'global'"),
        ("{not json", r"bad\.jsonl:2: invalid JSON"),
    ],
)
def test_cli_names_bad_manifest_line(tmp_path, capsys, line, message):
    good = json.dumps({"id": "ok", "global": "G.", "local": ["L."], "summary": "S."})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
    rc = tk.main(["train-sentencepiece", "--input", str(tmp_path / "bad.jsonl"),
                  "--model-prefix", str(tmp_path / "m"), "--vocab-size", "50"])
    assert rc != 0
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "m.model").exists()


def _unread_sentences():
    raise AssertionError("the corpus was read before the options were checked")
    yield  # a generator: raises when first read


@pytest.mark.parametrize("coverage", [0.5, 0.9799, 1.01, float("nan")])
def test_sp_train_refuses_a_character_coverage_sentencepiece_refuses(tmp_path, coverage):
    """sentencepiece accepts character_coverage in [0.98, 1] only (its trainer's VerifySpec) and
    said so with an INTERNAL error after reading the whole corpus; the check now comes first."""
    with pytest.raises(ValueError, match=r"character_coverage must be in \[0\.98, 1\.0\]"):
        SentencePieceTokenizer.train(_unread_sentences(), tmp_path / "m", 50, character_coverage=coverage)
    assert not (tmp_path / "m.model").exists()


def test_sp_train_accepts_the_ends_of_sentencepieces_coverage_range(tmp_path, sp_corpus):
    for coverage in (0.98, 1.0):
        tok = SentencePieceTokenizer.train(iter(sp_corpus), tmp_path / f"m{coverage}", SP_VOCAB,
                                           character_coverage=coverage, minloglevel=2)
        assert tok.vocab_size == SP_VOCAB


def test_sp_train_too_small_for_the_alphabet_says_to_raise_the_vocabulary(tmp_path):
    """Too many distinct characters for the vocabulary: the advice was "lower the vocabulary size"
    (right for a corpus too small to fill it), the opposite of what helps here."""
    with pytest.raises(ValueError, match="raise the vocabulary size") as error:
        SentencePieceTokenizer.train(iter(["abcdefghijklmnopqrstuvwxyz"] * 5), tmp_path / "m", 12,
                                     minloglevel=2)
    assert "lower the vocabulary size" not in str(error.value)


@pytest.mark.parametrize("args, message", [
    (("--vocab-size", "50", "--character-coverage", "2"),
     "argument --character-coverage: must be in [0.98, 1], got '2'"),
    (("--vocab-size", "50", "--character-coverage", "0.97"),
     "argument --character-coverage: must be in [0.98, 1], got '0.97'"),
    (("--vocab-size", "7",), "argument --vocab-size: must be an integer >= 8, got '7'"),
    (("--vocab-size", "x",), "argument --vocab-size: must be an integer, got 'x'"),
])
def test_cli_refuses_bad_numbers_before_reading_the_input(tmp_path, capsys, args, message):
    """The numbers are checked at parse time, naming the option: the input (a missing file here)
    is never opened."""
    with pytest.raises(SystemExit) as exit_:
        tk.main(["train-sentencepiece", "--input", str(tmp_path / "nope.txt"),
                 "--model-prefix", str(tmp_path / "m"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {message}" and "nope.txt" not in err


def test_cli_missing_input_file(tmp_path, capsys):
    rc = tk.main(["train-sentencepiece", "--input", str(tmp_path / "nope.txt"),
                  "--model-prefix", str(tmp_path / "m"), "--vocab-size", "50"])
    assert rc != 0 and "nope.txt" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Rows from stored ids (token ids computed once at conversion) and the tokenizer's identity


def _long_sentences():
    words = caption_sentences(40, seed=3)
    # Well past any context used below: 77 tokens and more, so the EOT-at-truncation rule applies.
    return [" ".join(words[i:i + 12]) for i in range(0, 40, 4)] + ["", "   ", "joy!"]


@pytest.mark.parametrize("context_length", [2, 5, 16, 77])
def test_rows_from_stored_ids_equal_tokenizing_the_text(clip, sp, context_length):
    sentences = caption_sentences(300, seed=2) + _long_sentences()
    for tok in (clip, sp):
        stored = [list(ids) for ids in tok.encode_batch(sentences)]  # what a converter stores
        assert max(len(ids) for ids in stored) + 2 > 77  # some rows are cut even at 77
        np.testing.assert_array_equal(tok.rows_from_ids(stored, context_length),
                                      tok(sentences, context_length=context_length))
        truncated = tok.rows_from_ids([stored[-4]], context_length)[0]
        assert truncated[-1] == tok.eot_id
    with pytest.raises(ValueError, match="at least 2"):
        clip.rows_from_ids([[1, 2]], 1)


def test_identity_names_the_vocabulary_not_its_location(clip, sp, tmp_path):
    identity = clip.identity()
    assert identity["type"] == "clip_bpe" and len(identity["vocab_sha256"]) == 64
    assert json.loads(json.dumps(identity)) == identity
    assert ClipBpeTokenizer(context_length=5).identity() == identity  # context is not part of it
    copy = tmp_path / "vocab.txt.gz"
    copy.write_bytes(open(tk.CLIP_BPE_VOCAB_PATH, "rb").read())
    assert ClipBpeTokenizer(vocab_path=copy).identity() == identity
    assert sp.identity()["type"] == "sentencepiece" and sp.identity() != identity
    other = SentencePieceTokenizer.train(caption_sentences(600, seed=1), tmp_path / "other",
                                         SP_VOCAB, minloglevel=2)
    assert other.identity() != sp.identity()


def test_sp_identity_names_the_sentencepiece_version(sp, monkeypatch):
    # Normalisation lives in the model file (its hash covers it), but the segmentation is the
    # library's code: ids stored under another sentencepiece must not count as this tokenizer's.
    identity = sp.identity()
    assert identity["sentencepiece"] == spm.__version__ and len(identity["model_sha256"]) == 64
    monkeypatch.setattr(tk.spm, "__version__", "0.0-other")
    assert sp.identity() != identity and sp.identity()["sentencepiece"] == "0.0-other"


def test_sp_normalisation_comes_from_the_model_file(sp, tmp_path):
    """Why the identity needs no Unicode version for sentencepiece: its NFKC normalisation is the
    precompiled table inside the model file (full-width letters map to ASCII ones), and the library
    does not rebuild it from the rule's name: with the table blanked, the same text encodes
    differently."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(pathlib.Path(sp.model_file).read_bytes())
    assert proto.normalizer_spec.name == "nmt_nfkc" and proto.normalizer_spec.precompiled_charsmap
    full_width = "\uff53\uff4d\uff49\uff4c\uff45"  # "smile" in full-width letters
    assert sp.encode(full_width) == sp.encode("smile")
    proto.normalizer_spec.precompiled_charsmap = b""
    blank = tmp_path / "blank.model"
    blank.write_bytes(proto.SerializeToString())
    assert SentencePieceTokenizer(blank).encode(full_width) != sp.encode("smile")


def test_clip_identity_names_the_library_versions_its_ids_depend_on(clip, monkeypatch):
    # ftfy.fix_text rewrites non-ASCII captions, and its rules change between releases: ids stored
    # under another ftfy (or regex / Unicode tables) must not count as this tokenizer's.
    identity = clip.identity()
    assert identity["ftfy"] == ftfy.__version__ and identity["unicode"]
    monkeypatch.setattr(tk.ftfy, "__version__", "0.0-other")
    assert clip.identity() != identity and clip.identity()["ftfy"] == "0.0-other"
