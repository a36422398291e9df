"""The check every entry to the text tower makes of its token ids (`EmoCapCLIP.encode_text`, the
evaluation `Encoder`): ids the tower would read silently wrong are refused with the rows named."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _rows(rows: np.ndarray) -> str:
    return f"{rows[:5].tolist()}" + (f" (and {rows.size - 5} more)" if rows.size > 5 else "")


def check_token_rows(token_ids: np.ndarray, vocab_size: int, eot_token_id: Optional[int],
                     texts: Optional[Sequence[str]] = None) -> None:
    """Refuses ids the text tower would read silently wrong: ids outside the vocabulary (the
    embedding lookup clamps them) and, for a tower pooling at the first `eot_token_id`, rows
    without it: those pool at position 0 (transformers and open_clip do the same), where the
    causal tower has seen the start token only, so every such row gets one and the same
    embedding. (argmax pooling, eot_token_id None, is CLIP's rule and finds a position in any
    row.) `texts`: the sentences the rows were tokenised from, to name the first bad one."""
    if token_ids.size == 0:
        return

    def first_text(rows: np.ndarray) -> str:
        return f" (text {texts[int(rows[0])]!r})" if texts is not None else ""

    outside = np.flatnonzero(((token_ids < 0) | (token_ids >= vocab_size)).any(axis=1))
    if outside.size:
        bad = token_ids[outside[0]][(token_ids[outside[0]] < 0)
                                    | (token_ids[outside[0]] >= vocab_size)][0]
        raise ValueError(f"token_ids rows {_rows(outside)} hold ids outside the text tower's "
                         f"vocabulary [0, {vocab_size}) (row {outside[0]}: {int(bad)})"
                         + first_text(outside))
    if eot_token_id is None:
        return
    missing = np.flatnonzero(~(token_ids == eot_token_id).any(axis=1))
    if missing.size:
        raise ValueError(
            f"token_ids rows {_rows(missing)}{first_text(missing)} hold no end-of-text token "
            f"{eot_token_id}: this model's text tower pools at the first id {eot_token_id} "
            f"(model.text.eot_token_id), so such a row would be read at its first position, the "
            f"same embedding for every row. End each sentence with {eot_token_id} (tokenize() "
            f"does; a tokenizer cutting long text must keep it, as open_clip's does)")
