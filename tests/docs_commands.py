"""The command lines the documentation tells a user to run, and a parse of each against the real
argument parser (tests/test_docs_commands.py).

Commands are taken from indented and fenced code blocks (a trailing backslash joins the next
line, a `#` comment is dropped) and from inline code spans (which Markdown lets run across
lines) of the Markdown files, the configs' docstrings and the notebook's Markdown cells. A command is
`python -m emocap_jax.X|data_prep.X ...`, `python bench/X.py ...` or an `emocap-*` console
script, optionally after `VAR=value` settings or a path to a python. One that shows a
placeholder for a part of its syntax (`...`, `a|b`, `{a,b}`) is a sketch, not a command, and is
left out, as is one in the prose with fewer than two arguments (`python -m data_prep.synthetic
--appearance-captions` names an option). An optional part (`[--suggest 0.99]`) is parsed.

Run as a script (`python tests/docs_commands.py REPO_ROOT TARGET JSON_ARGVS`), it parses each
argv with the target's own parser and prints one JSON line: [[argv, error or null], ...];
with TARGET `--options` and a JSON list of argparse commands, it prints their option strings. Each
target (a module or a bench script) runs under runpy with argparse's parse_known_args replaced
by the real one followed by an exception, so nothing after the parse runs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import re
import runpy
import shlex
import sys

# Files whose commands a user is told to run.
DOC_FILES = ("README.md", "PERFORMANCE.md", "ABLATIONS.md", "RESULTS.md")

_PREFIX = r"^(?:[A-Z_]+=\S+\s+)*(?:\S*/)?"
_COMMAND = re.compile(_PREFIX + r"(?:python3?\s+(?:-m\s+(?:emocap_jax|data_prep)\S*|bench/\S+\.py)"
                      r"|emocap-(?:train|eval|predict|convert|prep))(?=\s|$)")
# Parts of a sketch: elided arguments, optional or alternative parts.
_SKETCH = re.compile(r"\.\.\.|…|\[|\]|\||\{|\}")
PLACEHOLDERS = {"S": "0", "K": "8", "VARIANT": "full"}
CONSOLE_SCRIPTS = {"emocap-train": "emocap_jax.main", "emocap-eval": "emocap_jax.evaluate",
                   "emocap-predict": "emocap_jax.predict", "emocap-convert": "emocap_jax.convert"}


def doc_sources(root: pathlib.Path) -> list[pathlib.Path]:
    return ([root / name for name in DOC_FILES] + sorted((root / "configs").glob("*.py"))
            + sorted((root / "notebooks").glob("*.ipynb")))


def doc_text(path: pathlib.Path) -> str:
    """The text of a document; of a notebook, its Markdown cells'."""
    if path.suffix != ".ipynb":
        return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _code_and_prose(text: str) -> tuple[list[tuple[int, str]], str]:
    """(line number, joined line) of the code-block lines, and the prose with code blocks
    blanked (line numbers kept)."""
    lines = text.splitlines()
    code, prose, fenced, i = [], [], False, 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            fenced = not fenced
            prose.append("")
        elif fenced or (line.startswith("    ") and not line.lstrip().startswith(("* ", "- "))):
            start, joined = i, line.strip()
            while joined.endswith("\\") and i + 1 < len(lines):
                i += 1
                # One backslash, or two in a docstring's source (a non-raw string).
                joined = joined.rstrip("\\") + " " + lines[i].strip()
                prose.append("")
            code.append((start + 1, re.sub(r"\s+#.*$", "", joined)))
            prose.append("")
        else:
            prose.append(line)
        i += 1
    return code, "\n".join(prose)


def _argv(command: str, inline: bool) -> list[str] | None:
    """The arguments after the program, or None for a sketch. In the prose, a command with one
    argument names an option (`python -m data_prep.synthetic --appearance-captions`)."""
    command = re.sub(r"\s*(?:&|>\s*\S+)\s*$", "", command)
    # README's multi-process example runs in `for i in 0 1; do ...`; the other placeholders stand
    # for a value the text names (a seed, a cap, an ablation).
    command = command.replace("$i", "0")
    # An optional part (`[--suggest 0.99]`) is parsed with the rest.
    command = re.sub(r"\[(--[^][]*)\]", r"\1", command)
    for placeholder, value in PLACEHOLDERS.items():
        command = re.sub(rf"(?<![\w/.-]){placeholder}(?![\w/.-])", value, command)
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)
    if words and words[0].startswith("emocap-"):
        args = words[1:]
    elif len(words) > 1 and words[1] == "-m":
        args = words[3:]
    else:
        args = words[2:]
    if len(args) < (2 if inline else 0) or any(_SKETCH.search(w) for w in args
                                               if not w.startswith("--config.")):
        return None
    return words


def target(words: list[str]) -> tuple[str, list[str]]:
    """(module name or bench script path, the arguments it parses) of _argv's words."""
    if words[0] == "emocap-prep":
        return f"data_prep.{words[1].replace('-', '_')}", words[2:]
    if words[0] in CONSOLE_SCRIPTS:
        return CONSOLE_SCRIPTS[words[0]], words[1:]
    if words[1] == "-m":
        return words[2], words[3:]
    return words[1], words[2:]


def documented_commands(root: pathlib.Path) -> list[tuple[str, list[str]]]:
    """[(where: "FILE:LINE", argv words)] of every full command in the documentation."""
    found = []
    for path in doc_sources(root):
        code, prose = _code_and_prose(doc_text(path))
        spans = [(prose[:m.start()].count("\n") + 1, " ".join(m.group(1).split()))
                 for m in re.finditer(r"`([^`]+)`", prose)]
        for line, text, inline in [(n, t, False) for n, t in code] + [(n, t, True) for n, t in spans]:
            # `pip install ... && emocap-train ...`
            for part in re.split(r"\s(?:&&|;)\s", text):
                match = _COMMAND.search(part.strip())
                words = match and _argv(part.strip()[match.start():], inline)
                if words:
                    found.append((f"{path.relative_to(root)}:{line}", words))
    return found


# ------------------------------------------------------------------------------------------------
# The parse, in a process of its own (runpy executes each command's module-level code).

def _parse_all(root: str, name: str, argvs: list[list[str]]) -> list:
    class Parsed(Exception):
        pass

    original = argparse.ArgumentParser.parse_known_args

    def parse_and_stop(self, args=None, namespace=None):
        namespace, extras = original(self, args, namespace)
        raise Parsed(extras)

    argparse.ArgumentParser.parse_known_args = parse_and_stop
    sys.path[:0] = [root, f"{root}/bench"]
    # A script that takes extra `--config.*` arguments asks for them with parse_known_args.
    passes_config = (name.endswith(".py")
                     and "parse_known_args" in pathlib.Path(root, name).read_text())
    results = []
    for argv in argvs:
        sys.argv = [name, *argv]
        stderr = io.StringIO()
        error = None
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                if name.endswith(".py"):
                    runpy.run_path(f"{root}/{name}", run_name="__main__")
                else:
                    runpy.run_module(name, run_name="__main__", alter_sys=True)
            error = "ran without parsing its arguments"
        except Parsed as e:
            extras = [a for a in e.args[0] if not (passes_config and a.startswith("--config."))]
            if extras:
                error = f"unrecognized arguments: {' '.join(extras)}"
        except SystemExit as e:
            if e.code not in (0, None):
                error = stderr.getvalue().strip() or f"exit status {e.code}"
        results.append([argv, error])
    return results


def _option_strings(root: str, names: list[str]) -> list[str]:
    """Every option string of the argparse commands `names` (and of their sub-commands)."""
    class Listed(Exception):
        pass

    found = set()

    def walk(parser):
        for action in parser._actions:
            found.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    def list_and_stop(self, args=None, namespace=None):
        walk(self)
        raise Listed

    argparse.ArgumentParser.parse_known_args = list_and_stop
    sys.path[:0] = [root, f"{root}/bench"]
    for name in names:
        sys.argv = [name]
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                if name.endswith(".py"):
                    runpy.run_path(f"{root}/{name}", run_name="__main__")
                else:
                    runpy.run_module(name, run_name="__main__", alter_sys=True)
        except (Listed, SystemExit):  # SystemExit: a command that takes no options
            pass
    return sorted(found)


def _parse_train(root: str, argvs: list[list[str]]) -> list:
    """emocap_jax.main's flags (absl) through its own parser, then the settings checks a run makes
    before it prepares any data (emocap_jax.train's check_* functions), on one device per
    batch shard; its `run()` is not called: it re-executes the process (huge pages)."""
    os.chdir(root)
    sys.path.insert(0, root)
    # Here, in the parsing process only: importing emocap_jax.main defines its absl flags, which
    # the test process that imports this module for documented_commands must not hold.
    from absl import flags

    from emocap_jax import main, train

    flags.mark_flags_as_required(["config"])  # as main.run() does
    results = []
    for argv in argvs:
        flags.FLAGS.unparse_flags()
        # The previous command's override flags, which parsing --config defined.
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)
        # ml_collections finds the `--config.FIELD` overrides in sys.argv.
        sys.argv = ["emocap_jax.main", *argv]
        stderr = io.StringIO()
        error = None
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                rest = main._parse_flags(sys.argv)
                if len(rest) > 1:
                    raise main.UsageError(f"unexpected arguments {rest[1:]}")
                config = flags.FLAGS["config"].value
                train.check_train_settings(config)
                train.check_number_settings(config)
                train.check_model_and_data_settings(config)
                train._check_loss_impl(config)
                train.mining_config(config.loss)
                train.mining_terms(config.loss)
                train.check_batch_settings(config, 1)
                train.check_local_loss_settings(config, 1)
        except SystemExit as e:
            if e.code not in (0, None):
                error = stderr.getvalue().strip() or f"exit status {e.code}"
        except Exception as e:  # any failure is the finding; its type and message say which
            error = f"{type(e).__name__}: {e}"
        results.append([argv, error])
    return results


if __name__ == "__main__":
    _root, _name, _argvs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if _name == "--options":
        print(json.dumps(_option_strings(_root, _argvs)))
    elif _name == "emocap_jax.main":
        print(json.dumps(_parse_train(_root, _argvs)))
    else:
        print(json.dumps(_parse_all(_root, _name, _argvs)))
