"""What the result benches' command lines share (bench/real_faces.py, bench/ablations.py)."""
from __future__ import annotations

import argparse
import pathlib
import sys


def refuse_repeated_options(parser: argparse.ArgumentParser, argv) -> None:
    """parser.error for an option given more than once. argparse keeps only the last of them, so
    `--seeds 0 --seeds 1` would train seed 1 alone, and a repeated `--config.FIELD=` would be
    recorded with both values while the runs use the last."""
    words = list(sys.argv[1:] if argv is None else argv)
    if "--" in words:
        words = words[:words.index("--")]
    longs = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    seen: dict[str, list[str]] = {}
    for word in words:
        if not word.startswith("--"):
            continue
        name = word.split("=", 1)[0]
        if name.startswith("--config."):
            key = name
        else:
            # An abbreviation (`--variant`) is the option it stands for, as argparse reads it.
            matches = [s for s in longs if s == name] or [s for s in longs if s.startswith(name)]
            if len(matches) != 1:
                continue  # unknown or ambiguous: argparse reports it
            key = parser._option_string_actions[matches[0]].option_strings[-1]
        seen.setdefault(key, []).append(word)
    for key, given in seen.items():
        if len(given) > 1:
            nargs = next((a.nargs for a in parser._actions if key in a.option_strings), None)
            hint = (", with all its values after it" if nargs in ("+", "*") else "")
            parser.error(f"{key} given {len(given)} times ({', '.join(given)}): only the last "
                         f"would count; give it once{hint}")


def check_rendered(work: pathlib.Path, results: list, variants, seeds) -> None:
    """--render-only: refuses to replace a table with an empty one, and names the runs left out."""
    missing = [f"{v}_s{s}" for s in seeds for v in variants
               if not any(r["variant"] == v and r["seed"] == s for r in results)]
    if not results:
        raise SystemExit(f"--work {work}: no finished run of those asked for "
                         f"({', '.join(m + '/bench_result.json' for m in missing)}); "
                         "the table is left as it is")
    if missing:
        print(f"not finished in {work}, left out of the table: {', '.join(missing)}", flush=True)


def check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace, datasets=(), files=(),
                folders=()) -> None:
    """parser.error naming the option whose path is not there, in one line: `datasets` name
    converted dataset folders (metadata.json + shards), `files` plain files, `folders` run or
    export folders. Each is an attribute of args (None: not given; a list: each of its paths)."""
    import os

    def given(name):
        value = getattr(args, name)
        return [] if value is None else value if isinstance(value, list) else [value]

    flag = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
    for name in folders:
        for path in given(name):
            if "://" not in path and not os.path.exists(path):
                parser.error(f"{flag[name]} {path}: no such file or folder")
    for name in files:
        for path in given(name):
            if not os.path.isfile(path):
                parser.error(f"{flag[name]} {path}: "
                             + ("a folder, not a file" if os.path.isdir(path) else "no such file"))
    for name in datasets:
        for path in given(name):
            from emocap_jax.data.shard_writer import load_metadata

            try:
                load_metadata(path)
            except (FileNotFoundError, ValueError) as e:  # not there; damaged metadata
                parser.error(f"{flag[name]}: {e}")
