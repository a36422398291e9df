"""JSON parsing that notices a key repeated within one object.

JSON leaves repeated keys undefined and Python's `json` keeps the last value, so
`{"image": "a.jpg", "image": "b.jpg"}` would silently lose "a.jpg". The converters read their
input with `loads` and reject an entry for which `repeated_key` reports a repeat instead of
guessing which value was meant.
"""

from __future__ import annotations

import json
from typing import Any


class _RepeatedKeys(dict):
    """A parsed JSON object some of whose keys appeared more than once (`repeated`, in order of
    first repetition); it holds the last value of each, as a plain `json.loads` would."""
    repeated: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> dict:
    obj: dict[str, Any] = {}
    repeated: list[str] = []
    for key, value in pairs:
        if key in obj and key not in repeated:
            repeated.append(key)
        obj[key] = value
    if not repeated:
        return obj
    marked = _RepeatedKeys(obj)
    marked.repeated = tuple(repeated)
    return marked


def loads(text: str | bytes) -> Any:
    """`json.loads`, but every object with a repeated key remembers it (see `repeated_key`)."""
    return json.loads(text, object_pairs_hook=_object)


def repeated_keys(obj: Any) -> tuple[str, ...]:
    """The keys repeated in this object itself (not in the objects nested in it)."""
    return getattr(obj, "repeated", ())


def repeated_key(value: Any) -> str:
    """"" when no object in `value` (parsed by `loads`) repeats a key, else a message naming the
    first such key and where it is ("key 'image' appears more than once in QA.image_paths").
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:  # iterative: an input's nesting depth must not hit the recursion limit
        item, path = stack.pop()
        if isinstance(item, dict):
            keys = repeated_keys(item)
            if keys:
                where = f" in {path}" if path else ""
                return (f"key {keys[0]!r} appears more than once{where}; only the last of its "
                        "values would be read")
            children = [(v, f"{path}.{k}" if path else str(k)) for k, v in item.items()]
        elif isinstance(item, list):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(item)]
        else:
            continue
        stack.extend(reversed(children))  # depth-first in document order
    return ""
