"""The one check of a zero-shot prompt template ("a photo of a face showing {}."), shared by
`EmoCapCLIP.zero_shot` and `python -m emocap_jax.predict --template` (no JAX here: the CLI checks
its arguments before importing it).

A template is filled with `template.format(class_name)`, so it is read as `str.format` reads it:
exactly one replacement field, the empty `{}`, and every literal brace doubled (`{{`, `}}`).
"""
from __future__ import annotations

import string
from typing import Optional


def template_problem(template: str) -> Optional[str]:
    """None for a usable template, else what is wrong with it and how to write it."""
    if not isinstance(template, str):
        return f"a template is a string, got {type(template).__name__}"
    fix = ("a template holds exactly one '{}' for the class name, and a literal brace is written "
           "double ('{{' or '}}')")
    try:
        fields = [field for _, field, spec, conversion in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as e:  # "Single '{' encountered in format string"
        return f"{e}; {fix}"
    if len(fields) != 1:
        return f"{len(fields)} fields; {fix}"
    if fields != [""]:
        return f"field {{{fields[0]}}} is not '{{}}'; {fix}"
    return None


def check_template(template: str) -> None:
    """ValueError naming `template` when `template_problem` finds one."""
    problem = template_problem(template)
    if problem is not None:
        raise ValueError(f"template {template!r}: {problem}")
