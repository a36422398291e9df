"""Text tokenizers behind one interface: OpenAI CLIP BPE and sentencepiece.

Every caption sentence is tokenized on its own to a fixed context length (as the losses read them), so
the interface is built around fixed-width rows: ``[SOT] + tokens + [EOT]`` padded with ``pad_id``.
Rows that are too long are cut and their last slot overwritten with EOT, exactly as open_clip does,
so the text tower always finds an end-of-text token to pool at.

``ClipBpeTokenizer`` reproduces open_clip's ``SimpleTokenizer`` id for id (the vocabulary is vendored
in ``emocap_jax/assets``; see NOTICE.md), so pretrained CLIP text towers imported from open_clip or
OpenAI see the ids they were trained on. ``SentencePieceTokenizer`` wraps a ``.model`` file for
caption corpora that want their own vocabulary; ``SentencePieceTokenizer.train`` and the CLI below
build one from caption text.

Both tokenizers describe themselves with ``to_config()`` so a checkpoint can record which tokenizer
produced its ids and ``tokenizer_from_config`` can rebuild it.

CLI::

    python -m emocap_jax.tokenizers train-sentencepiece \\
        --input manifest.jsonl extra_captions.txt --model-prefix out/captions --vocab-size 8000
"""
from __future__ import annotations

import abc
import argparse
import functools
import gzip
import hashlib
import html
import json
import os
import pathlib
import sys
import unicodedata
from typing import Any, Iterable, Iterator, Sequence

import ftfy
import numpy as np
import regex
import sentencepiece as spm
from tqdm import tqdm

from emocap_jax.cli_errors import ArgumentParser, entry_point, float_in, int_in

DEFAULT_CONTEXT_LENGTH = 77
CLIP_BPE_VOCAB_PATH = pathlib.Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"


class Tokenizer(abc.ABC):
    """Turns sentences into fixed-width int32 rows ``[SOT] + tokens + [EOT] + [pad...]``.

    Subclasses set ``vocab_size``, ``context_length``, ``sot_id``, ``eot_id``, ``pad_id`` and
    implement ``encode``, ``decode`` and ``to_config``.
    """

    vocab_size: int
    context_length: int
    sot_id: int
    eot_id: int
    pad_id: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of one sentence, without SOT/EOT and without truncation."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of a token sequence; a leading SOT is skipped and decoding stops at the first EOT,
        so a padded row from ``__call__`` decodes to its sentence."""

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description that ``tokenizer_from_config`` turns back into an equal
        tokenizer."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many sentences; subclasses override when the backend batches faster."""
        return [self.encode(text) for text in texts]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Tokenizes one sentence or a batch into an int32 array of shape [B, context_length]."""
        texts = _as_text_list(texts)
        return self.rows_from_ids(self.encode_batch(texts), context_length)

    def rows_from_ids(self, id_lists: Sequence[Sequence[int]], context_length: int | None = None) -> np.ndarray:
        """The fixed-width rows of sentences already encoded (``encode`` output, e.g. token ids stored
        in the records at conversion): ``tok(texts, L)`` is ``tok.rows_from_ids(tok.encode_batch(texts), L)``."""
        length = self.context_length if context_length is None else int(context_length)
        if length < 2:
            raise ValueError(f"context_length must be at least 2 (room for SOT and EOT), got {length}")
        out = np.full((len(id_lists), length), self.pad_id, dtype=np.int32)
        for i, ids in enumerate(id_lists):
            row = [self.sot_id, *ids, self.eot_id]
            if len(row) > length:
                # open_clip's rule: cut, then overwrite the last slot so EOT (the pooling position of
                # the text tower) is never lost.
                row = row[:length]
                row[-1] = self.eot_id
            out[i, : len(row)] = row
        return out

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """What makes this tokenizer's ``encode`` output unambiguous, independent of the context
        length and of file locations (kind, cleaning rule, sha256 of the vocabulary or model file,
        and the versions of the libraries the ids depend on: ftfy, regex and Unicode for CLIP BPE,
        sentencepiece for a sentencepiece model).
        Converters record it in a dataset's metadata.json next to the token ids they store; the
        input pipeline uses those ids only for a tokenizer with an equal identity."""

    def pooling_problem(self, eot_token_id: int | None) -> str | None:
        """Why a text tower pooling by ``eot_token_id`` (``TextConfig.eot_token_id``) would miss this
        tokenizer's end-of-text token in its rows, or None when it finds it in every row.

        None pools at each row's largest id (CLIP's argmax rule): that is EOT only when EOT is
        larger than every other id a row holds (vocabulary ids, SOT, padding), as for CLIP BPE and
        models from ``SentencePieceTokenizer.train``, but not for a sentencepiece model with
        sentencepiece's default ids (eos 2), where argmax lands on some word. An int pools at its
        first occurrence and must be this tokenizer's EOT."""
        if eot_token_id is not None:
            if int(eot_token_id) == self.eot_id:
                return None
            return (f"pools at the first token id {eot_token_id}, but this tokenizer's end-of-text "
                    f"id is {self.eot_id}")
        if self.eot_id >= self.vocab_size - 1 and self.eot_id > self.sot_id and self.eot_id >= self.pad_id:
            return None
        return (f"pools at each row's largest token id (eot_token_id unset), but this tokenizer's "
                f"end-of-text id {self.eot_id} is not its largest (vocabulary of {self.vocab_size} ids, "
                f"start id {self.sot_id}, pad id {self.pad_id})")

    def _strip_specials(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if ids and ids[0] == self.sot_id:
            ids = ids[1:]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        return ids


def _as_text_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("tokenizers take str, not bytes: decode the caption (UTF-8) first")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str: {text!r:.80}")
    return texts


# ----------------------------------------------------------------------------------------------
# CLIP BPE
# ----------------------------------------------------------------------------------------------


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-unicode map, so BPE never sees whitespace/control bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


_CLIP_SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
# Number of merges CLIP uses from the vocab file (the first line is a header).
_CLIP_NUM_MERGES = 49152 - 256 - 2


@functools.lru_cache(maxsize=4)
def _load_clip_vocab(vocab_path: str) -> tuple[dict[str, int], dict[int, str], dict[tuple[str, str], int]]:
    """Encoder, decoder and merge ranks from a CLIP ``bpe_simple_vocab_16e6.txt.gz``; cached so
    every tokenizer instance in a process shares one copy."""
    try:
        with gzip.open(vocab_path) as f:
            lines = f.read().decode("utf-8").split("\n")
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read CLIP BPE vocabulary {vocab_path}: {e}") from e
    merges = [tuple(line.split()) for line in lines[1 : _CLIP_NUM_MERGES + 1]]
    bad = [i + 2 for i, m in enumerate(merges) if len(m) != 2]
    if len(merges) != _CLIP_NUM_MERGES or bad:
        raise ValueError(
            f"{vocab_path} is not a CLIP BPE vocabulary: expected {_CLIP_NUM_MERGES} merge lines of two "
            f"symbols after the header, got {len(merges)} lines"
            + (f", malformed at line(s) {bad[:5]}" if bad else "")
        )
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab += ["".join(m) for m in merges]
    vocab += list(_CLIP_SPECIAL_TOKENS)
    encoder = {tok: i for i, tok in enumerate(vocab)}
    decoder = {i: tok for tok, i in encoder.items()}
    bpe_ranks = {m: i for i, m in enumerate(merges)}
    return encoder, decoder, bpe_ranks


def _clip_clean(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, html-unescape twice, collapse whitespace, lower-case."""
    if not _is_plain_ascii(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


_NEEDS_FIXING = regex.compile(r"[^\x20-\x25\x27-\x7e\t\n]")


def _is_plain_ascii(text: str) -> bool:
    # ftfy and html.unescape leave printable ASCII without '&' untouched (they only act on non-ASCII,
    # control characters, \r and entities), and skipping them is most of the tokenizer's speed on
    # English captions. tests/test_tokenizers.py checks this equivalence against the full path.
    return _NEEDS_FIXING.search(text) is None


class ClipBpeTokenizer(Tokenizer):
    """OpenAI CLIP's byte-level BPE, identical to open_clip's ``SimpleTokenizer`` (clean='lower').

    sot 49406 (<start_of_text>), eot 49407 (<end_of_text>), pad 0, vocab_size 49408. Pad 0 is also
    the id of "!", which is harmless because everything after the first EOT is padding.
    """

    # Enough for the word vocabulary of a large caption corpus; cleared (not evicted) when full so
    # a stream of unique garbage cannot grow a data worker's memory without bound.
    MAX_CACHED_WORDS = 500_000

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH, vocab_path: str | os.PathLike | None = None):
        self.context_length = int(context_length)
        self._custom_vocab = vocab_path is not None
        self.vocab_path = str(pathlib.Path(vocab_path) if vocab_path is not None else CLIP_BPE_VOCAB_PATH)
        if not os.path.isfile(self.vocab_path):
            raise FileNotFoundError(f"CLIP BPE vocabulary not found: {self.vocab_path}")
        self.encoder, self.decoder, self.bpe_ranks = _load_clip_vocab(self.vocab_path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.vocab_size = len(self.encoder)
        self.sot_id = self.encoder[_CLIP_SPECIAL_TOKENS[0]]
        self.eot_id = self.encoder[_CLIP_SPECIAL_TOKENS[1]]
        self.pad_id = 0
        special = "|".join(_CLIP_SPECIAL_TOKENS)
        self._pattern = regex.compile(
            special + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )
        self._reset_cache()

    def _reset_cache(self) -> None:
        # Maps a pre-tokenized word straight to its ids (skipping byte mapping and BPE). Special
        # tokens written literally in the text map to their ids, as in open_clip.
        self._word_ids: dict[str, tuple[int, ...]] = {
            tok: (self.encoder[tok],) for tok in _CLIP_SPECIAL_TOKENS
        }

    def _bpe(self, token: str) -> list[str]:
        """open_clip's greedy lowest-rank merge loop on one byte-mapped word."""
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return [token + "</w>"]
        ranks = self.bpe_ranks
        inf = float("inf")
        while True:
            bigram = min(pairs, key=lambda pair: ranks.get(pair, inf))
            if bigram not in ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        return list(word)

    def _ids_of_word(self, word: str) -> tuple[int, ...]:
        ids = self._word_ids.get(word)
        if ids is None:
            mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids = tuple(self.encoder[piece] for piece in self._bpe(mapped))
            if len(self._word_ids) >= self.MAX_CACHED_WORDS:
                self._reset_cache()
            self._word_ids[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._word_ids
        for word in self._pattern.findall(_clip_clean(text)):
            # Hot loop of the data pipeline: a plain dict lookup first, BPE only on a miss.
            ids.extend(cache.get(word) or self._ids_of_word(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = self._strip_specials(ids)
        try:
            text = "".join(self.decoder[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside the CLIP BPE vocabulary (size {self.vocab_size})") from None
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def identity(self) -> dict[str, Any]:
        # The ids depend on more than the vocabulary: ftfy.fix_text rewrites non-ASCII text (its
        # rules change between releases), the word pattern's \p{L} / \p{N} classes come from
        # regex's Unicode tables, and str.lower / str.split from Python's. Ids stored under
        # another version of any of them are not reused (the text is tokenized again).
        return {"type": "clip_bpe", "clean": "lower", "vocab_sha256": _sha256(self.vocab_path),
                "ftfy": ftfy.__version__, "regex": regex.__version__,
                "unicode": unicodedata.unidata_version}

    def to_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"type": "clip_bpe", "context_length": self.context_length}
        if self._custom_vocab:
            cfg["vocab_path"] = self.vocab_path
        return cfg

    # Data workers receive tokenizers by pickling: send the recipe, not ~10 MB of dictionaries.
    def __getstate__(self) -> dict[str, Any]:
        return {"context_length": self.context_length, "vocab_path": self.vocab_path if self._custom_vocab else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"ClipBpeTokenizer(context_length={self.context_length})"


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


# ----------------------------------------------------------------------------------------------
# sentencepiece
# ----------------------------------------------------------------------------------------------

# Options that ``SentencePieceTokenizer.train`` owns because the tokenizer interface depends on them.
_SP_RESERVED_OPTIONS = frozenset(
    {"input", "sentence_iterator", "model_writer", "model_prefix", "vocab_size", "bos_id", "eos_id", "pad_id", "unk_id",
     # A soft limit may give fewer pieces than vocab_size, and then bos/eos ids at the top do not exist.
     "hard_vocab_limit"}
)

# Smallest vocabulary ``train`` accepts: room for the four special pieces (pad, unk, bos, eos) and a
# few more; the CLI's --vocab-size refuses less at parse time with the same bound.
_SP_MIN_VOCAB_SIZE = 8
# The character_coverage sentencepiece accepts (its trainer's VerifySpec, src/trainer_interface.cc:
# CHECK_RANGE(character_coverage, 0.98, 1.0)); outside it training fails with an INTERNAL error only
# after the whole corpus was read, so train and the CLI check it first.
_SP_CHARACTER_COVERAGE = (0.98, 1.0)


def _sha256(path: str) -> str:
    stat = os.stat(path)
    return _sha256_cached(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key: a rewritten file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece ``.model`` behind the common interface.

    SOT/EOT are the model's bos/eos pieces (a model without them is rejected). The pad id is the
    model's pad id when it defines one, else 0; padding only ever follows EOT, so reusing id 0
    (usually <unk>) for it is unambiguous. Models made by ``train`` use pad 0, unk 1,
    bos vocab_size-2, eos vocab_size-1, so EOT is the largest id as with CLIP BPE and a text tower
    that pools at ``argmax(ids)`` works unchanged.
    """

    def __init__(self, model_file: str | os.PathLike, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.model_file = str(pathlib.Path(model_file).resolve())
        if not os.path.isfile(self.model_file):
            raise FileNotFoundError(f"sentencepiece model not found: {self.model_file}")
        self.context_length = int(context_length)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=self.model_file)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{self.model_file} is not a valid sentencepiece model: {e}") from e
        self.vocab_size = int(self._sp.get_piece_size())
        self.sot_id = int(self._sp.bos_id())
        self.eot_id = int(self._sp.eos_id())
        if self.sot_id < 0 or self.eot_id < 0:
            raise ValueError(
                f"sentencepiece model {self.model_file} has no "
                + " and no ".join(n for n, i in (("bos (start) piece", self.sot_id), ("eos (end) piece", self.eot_id)) if i < 0)
                + "; SOT/EOT come from them. Retrain with bos_id/eos_id >= 0 "
                "(SentencePieceTokenizer.train or `python -m emocap_jax.tokenizers train-sentencepiece` set them)."
            )
        pad = int(self._sp.pad_id())
        self.pad_id = pad if pad >= 0 else 0

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # sentencepiece encodes a list in one native call, far faster than a Python loop.
        return self._sp.encode(list(texts), out_type=int) if texts else []

    def decode(self, ids: Sequence[int]) -> str:
        ids = self._strip_specials(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside {self.model_file} (vocab size {self.vocab_size})")
        return self._sp.decode(ids)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def identity(self) -> dict[str, Any]:
        # The text reaches sentencepiece as it is (no Python-side cleaning), and its normalisation
        # (nmt_nfkc by default) is the precompiled_charsmap inside the model file, so neither
        # Python's nor the library's Unicode tables play a part: the model file's hash covers it.
        # The segmentation is the library's code, though, and its 1-best search is not the same
        # code as its lattice search and may break ties in scores differently (google/sentencepiece
        # issue 747); a release that changes it changes ids. Ids stored under another
        # sentencepiece version are not reused (the text is tokenized again, same cost as CLIP
        # BPE's ftfy rule).
        return {"type": "sentencepiece", "model_sha256": _sha256(self.model_file),
                "sentencepiece": spm.__version__}

    def to_config(self) -> dict[str, Any]:
        return {
            "type": "sentencepiece",
            "model_file": self.model_file,
            "context_length": self.context_length,
            "sha256": _sha256(self.model_file),
        }

    def __getstate__(self) -> dict[str, Any]:
        return {"model_file": self.model_file, "context_length": self.context_length}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.model_file!r}, context_length={self.context_length})"

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        model_prefix: str | os.PathLike,
        vocab_size: int,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        **options: Any,
    ) -> "SentencePieceTokenizer":
        """Trains ``<model_prefix>.model`` (and ``.vocab``) from sentences and loads it.

        Empty sentences are skipped. Special ids are fixed (pad 0, unk 1, bos vocab_size-2,
        eos vocab_size-1); other sentencepiece trainer options pass through ``options``
        (defaults here: model_type="unigram", character_coverage=1.0 so rare letters in names
        such as "café" are kept rather than mapped to <unk>).
        """
        vocab_size = int(vocab_size)
        if vocab_size < _SP_MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be at least {_SP_MIN_VOCAB_SIZE}, got {vocab_size}")
        reserved = sorted(_SP_RESERVED_OPTIONS.intersection(options))
        if reserved:
            raise ValueError(f"SentencePieceTokenizer.train sets {reserved} itself; do not pass them as options")
        trainer_options = {"model_type": "unigram", "character_coverage": 1.0, **options}
        low, high = _SP_CHARACTER_COVERAGE
        coverage = trainer_options["character_coverage"]
        if not (isinstance(coverage, (int, float)) and low <= coverage <= high):
            raise ValueError(f"character_coverage must be in [{low}, {high}] (sentencepiece's range), "
                             f"got {coverage!r}")
        prefix = pathlib.Path(model_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        sentences = (t.strip() for t in texts)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=(s for s in sentences if s),
                model_prefix=str(prefix),
                vocab_size=vocab_size,
                pad_id=0,
                unk_id=1,
                bos_id=vocab_size - 2,
                eos_id=vocab_size - 1,
                **trainer_options,
            )
        except RuntimeError as e:
            raise ValueError(
                f"sentencepiece training of {prefix}.model (vocab_size={vocab_size}) failed: {e}. "
                + _training_failure_hint(str(e))
            ) from e
        return cls(f"{prefix}.model", context_length=context_length)


def _training_failure_hint(message: str) -> str:
    """What to change after sentencepiece's trainer failed with ``message`` (its INTERNAL errors
    quote the failed condition and nothing more)."""
    if "smaller than required_chars" in message:
        # Every character kept by character_coverage needs a piece of its own.
        return ("The corpus holds more distinct characters than the vocabulary has room for: "
                "raise the vocabulary size (or lower character_coverage).")
    if "trainer_spec." in message:
        # VerifySpec's range checks, e.g. [trainer_spec.num_threads() >= 1 && ... <= 1024].
        return "A trainer option is outside the range sentencepiece accepts (the condition above names it)."
    return ("The usual cause is a corpus too small or too repetitive to fill vocab_size pieces: "
            "lower the vocabulary size or add text.")


# ----------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------

_CLIP_NAMES = ("clip", "clip_bpe")


def get_tokenizer(name: str, context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    """"clip" / "clip_bpe" -> ClipBpeTokenizer; a path ending in ".model" -> SentencePieceTokenizer."""
    if name.lower() in _CLIP_NAMES:
        return ClipBpeTokenizer(context_length=context_length)
    if name.endswith(".model"):
        return SentencePieceTokenizer(name, context_length=context_length)
    raise ValueError(
        f"unknown tokenizer {name!r}: use one of {list(_CLIP_NAMES)} or the path of a sentencepiece "
        "'.model' file"
    )


def tokenizer_from_config(cfg: dict[str, Any]) -> Tokenizer:
    """Rebuilds the tokenizer a ``to_config()`` dict describes (e.g. one stored in a checkpoint).

    For sentencepiece, a recorded sha256 must match the model file found at ``model_file``, so a
    checkpoint is never silently paired with a different vocabulary.
    """
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    context_length = cfg.pop("context_length", DEFAULT_CONTEXT_LENGTH)
    if kind == "clip_bpe":
        tok: Tokenizer = ClipBpeTokenizer(context_length=context_length, vocab_path=cfg.pop("vocab_path", None))
    elif kind == "sentencepiece":
        if "model_file" not in cfg:
            raise ValueError(f"sentencepiece tokenizer config has no 'model_file': {cfg}")
        model_file = cfg.pop("model_file")
        expected = cfg.pop("sha256", None)
        tok = SentencePieceTokenizer(model_file, context_length=context_length)
        if expected is not None:
            actual = _sha256(tok.model_file)
            if actual != expected:
                raise ValueError(
                    f"sentencepiece model {tok.model_file} has sha256 {actual}, but the config records "
                    f"{expected}: this is not the vocabulary the config was saved with"
                )
    else:
        raise ValueError(f"tokenizer config 'type' must be 'clip_bpe' or 'sentencepiece', got {kind!r}")
    if cfg:
        raise ValueError(f"unknown keys {sorted(cfg)} in {kind} tokenizer config")
    return tok


# ----------------------------------------------------------------------------------------------
# CLI: train a sentencepiece model on caption text
# ----------------------------------------------------------------------------------------------


class InputError(ValueError):
    """Bad caption input; the message names the file and line."""


def iter_caption_sentences(path: str | os.PathLike, fmt: str = "auto") -> Iterator[str]:
    """Sentences of one input file: plain text (one sentence per line, blank lines skipped) or an
    EmoCap manifest (JSON lines; the global, every local and the summary sentence of each record).
    ``fmt="auto"`` treats ``.jsonl`` files as manifests."""
    path = str(path)
    if fmt == "auto":
        fmt = "manifest" if path.endswith(".jsonl") else "text"
    if fmt not in ("text", "manifest"):
        raise ValueError(f"format must be 'auto', 'text' or 'manifest', got {fmt!r}")
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot open {path}: {e.strerror}") from e
    with f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if fmt == "text":
                    yield line.strip()
                else:
                    yield from _manifest_sentences(json_line=line, where=f"{path}:{lineno}")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text after line {lineno} (byte {e.start} of a read block)") from e


def _manifest_sentences(json_line: str, where: str) -> list[str]:
    try:
        record = json.loads(json_line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    name = f"{where} (record id {record.get('id', '?')!r})"
    sentences = []
    for key in ("global", "summary"):
        value = record.get(key)
        if not isinstance(value, str):
            raise InputError(f"{name}: field {key!r} must be a string, got {type(value).__name__}")
        sentences.append(value)
    local = record.get("local")
    if not isinstance(local, list) or not all(isinstance(s, str) for s in local):
        raise InputError(f"{name}: field 'local' must be a list of strings")
    sentences[1:1] = local
    return [s.strip() for s in sentences if s.strip()]


def _parse_trainer_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, value


def _build_parser() -> argparse.ArgumentParser:
    # cli_errors.ArgumentParser (its sub-command parser too): a bad argument is one `error: ...`
    # line and status 2, as on every other command, not argparse's usage block.
    parser = ArgumentParser(prog="python -m emocap_jax.tokenizers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train-sentencepiece",
        help="train a sentencepiece model on caption sentences",
        description="Train a sentencepiece model whose bos/eos/pad ids fit emocap_jax's tokenizer "
        "interface (pad 0, unk 1, bos V-2, eos V-1). Inputs are plain text (one sentence per line) "
        "or EmoCap manifests (.jsonl: every global, local and summary sentence is used).",
    )
    train.add_argument("--input", nargs="+", required=True, metavar="FILE", help="caption text or manifest.jsonl files")
    train.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    train.add_argument("--vocab-size", type=int_in(_SP_MIN_VOCAB_SIZE), required=True,
                       help=f"number of pieces, specials included (at least {_SP_MIN_VOCAB_SIZE})")
    train.add_argument(
        "--format", choices=("auto", "text", "manifest"), default="auto",
        help="input format; auto treats .jsonl files as manifests and anything else as text (default: auto)",
    )
    train.add_argument("--model-type", choices=("unigram", "bpe", "char", "word"), default="unigram",
                       help="sentencepiece's segmentation algorithm (default: unigram)")
    # Checked here, before the corpus is read: sentencepiece refuses it only after reading.
    train.add_argument("--character-coverage", type=float_in(*_SP_CHARACTER_COVERAGE), default=1.0,
                       help="share of characters kept, in [%s, %s] (default: 1.0)" % _SP_CHARACTER_COVERAGE)
    train.add_argument(
        "--option", action="append", type=_parse_trainer_option, default=[], metavar="KEY=VALUE",
        help="any other sentencepiece trainer option, e.g. --option input_sentence_size=2000000 (repeatable)",
    )
    train.add_argument("--quiet", action="store_true", help="hide sentencepiece's training log")
    return parser


def _train_sentencepiece_cli(args: argparse.Namespace) -> int:
    sentences: list[str] = []
    # Read (and validate) everything before training: sentencepiece holds the corpus in memory
    # anyway, and an input error should stop us before minutes of training, not inside it.
    with tqdm(desc="reading captions", unit=" sentences", file=sys.stderr) as progress:
        for path in args.input:
            for sentence in iter_caption_sentences(path, args.format):
                sentences.append(sentence)
                progress.update()
    if not sentences:
        raise InputError(f"no sentences found in {args.input}")
    options = dict(args.option)
    options.setdefault("model_type", args.model_type)
    options.setdefault("character_coverage", args.character_coverage)
    if args.quiet:
        options.setdefault("minloglevel", 2)
    print(f"training on {len(sentences)} sentences from {len(args.input)} file(s)", file=sys.stderr)
    tok = SentencePieceTokenizer.train(sentences, args.model_prefix, args.vocab_size, **options)
    example = sentences[0]
    print(
        json.dumps(
            {
                "model_file": tok.model_file,
                "vocab_size": tok.vocab_size,
                "sot_id": tok.sot_id,
                "eot_id": tok.eot_id,
                "pad_id": tok.pad_id,
                "sentences": len(sentences),
                "example": {"text": example, "pieces": [tok.id_to_piece(i) for i in tok.encode(example)]},
            },
            indent=2,
        )
    )
    return 0


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "train-sentencepiece":
            return _train_sentencepiece_cli(args)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
