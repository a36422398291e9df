"""What the result benches share: a mean ± std cell and a table kept between markers of a
Markdown file whose prose stays (RESULTS.md, ABLATIONS.md)."""
from __future__ import annotations

import pathlib

import numpy as np

END = "<!-- end of table -->"


def begin_marker(script: str) -> str:
    return f"<!-- table: {script} -->"


def mean_std_cell(values) -> str:
    """Fractions as percent: one value alone, else mean ± population std; "—" for none."""
    values = [100 * v for v in values]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def write_table(path: pathlib.Path, table: str, begin: str):
    """Replaces the table between `begin` and the END after it in an existing file (its prose and
    other tables stay); a file without that table gets it appended; a new file holds it alone."""
    block = f"{begin}\n{table}{END}"
    text = path.read_text() if path.exists() else ""
    if begin in text and END in text.split(begin, 1)[1]:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text)
