"""What the documentation tells a user to run runs as written: every command line in README.md,
PERFORMANCE.md, ABLATIONS.md, RESULTS.md, the configs' docstrings and the notebook's text parses
with the real argument parser of its program (training commands also pass the settings checks a
run makes before it prepares data; a bench script's --config.* extras, those of the config they go
to), every option named on its own is a command's, every repository file named exists, and every
config field named is one of configs/default.py. A renamed flag, a config field moved or a file
deleted then fails here instead of on the user's machine. tests/docs_commands.py finds the
commands and parses them.
"""
import collections
import json
import os
import re
import subprocess
import sys

import pytest

from configs import default
from tests import docs_commands
from tests.conftest import REPO_ROOT
from tests.test_packaging import ARGPARSE_COMMANDS

COMMANDS = docs_commands.documented_commands(REPO_ROOT)
BY_TARGET = collections.defaultdict(list)
for _where, _words in COMMANDS:
    _target, _args = docs_commands.target(_words)
    BY_TARGET[_target].append((_where, _args))


def _parse(target: str, argvs: list[list[str]]) -> list:
    """[[argv, error or None]] from tests/docs_commands.py run on `target`."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "docs_commands.py"), str(REPO_ROOT), target,
         json.dumps(argvs)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "EMOCAP_NO_HUGE_PAGES": "1", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_the_commands_are_found():
    """The extraction sees the forms the docs use: a console script after `pip install ... &&`,
    a backslash-continued block, an inline span that runs across lines, a docstring's block."""
    found = {(where, " ".join(words)) for where, words in COMMANDS}
    texts = {text for _, text in found}
    assert "emocap-train --config=configs/demo.py --workdir=runs/demo" in texts
    assert any(t.startswith("python -m emocap_jax.main --config=configs/vitb16.py --workdir=DIR "
                            "--config.data.train_dir=") for t in texts)
    assert any(w.startswith("ABLATIONS.md") and "bench/ablations.py" in t and
               "--config.loss.mining.terms=('global',)" in t for w, t in found)
    assert any(w.startswith("configs/real_faces.py") and "--config.eval.zero_shot_dir" in t
               for w, t in found)
    # Sketches are left out: `python -m emocap_jax.main --config=... --workdir=W --mode=eval`.
    assert not any("--config=..." in t for t in texts)
    assert len(COMMANDS) > 100
    assert {"emocap_jax.main", "emocap_jax.evaluate", "emocap_jax.predict", "emocap_jax.convert",
            "emocap_jax.tokenizers", "data_prep.benchmarks", "data_prep.captions",
            "data_prep.synthetic", "data_prep.synthetic_benchmarks", "bench/ablations.py",
            "bench/real_faces.py", "bench/train_step.py"} <= set(BY_TARGET)


# The config a bench script's extra `--config.*` arguments go to (each run of the script takes
# them on top of its own): full is the ablation that switches every term on.
CONFIG_OF_BENCH = {"bench/ablations.py": "--config=configs/ablations.py:full",
                   "bench/real_faces.py": "--config=configs/real_faces.py"}


@pytest.mark.parametrize("target", sorted(BY_TARGET))
def test_every_documented_command_parses(target):
    items = BY_TARGET[target]
    results = _parse(target, [args for _, args in items])
    failures = [f"{where}: {target} {' '.join(args)}\n    {error}"
                for (where, args), (_, error) in zip(items, results) if error]
    assert failures == []
    overrides = [(where, [a for a in args if a.startswith("--config.")]) for where, args in items]
    overrides = [(where, extra) for where, extra in overrides if extra]
    if target in CONFIG_OF_BENCH and overrides:
        results = _parse("emocap_jax.main", [[CONFIG_OF_BENCH[target], *extra]
                                             for _, extra in overrides])
        assert [f"{where}: {error}" for (where, _), (_, error) in zip(overrides, results)
                if error] == []


def test_a_documented_command_that_no_longer_parses_is_caught():
    """The check is not vacuous: a flag the parser lacks, a bench script's extra argument that is
    no --config override, a config field the config lacks, and a setting the run refuses before
    preparing data are each reported."""
    wrong = _parse("emocap_jax.evaluate", [["--checkpoint", "x", "--protocl", "zero_shot"],
                                          ["--checkpoint", "x", "--protocol", "zero_shot"]])
    assert "--protocl" in wrong[0][1] and wrong[1][1] is None
    wrong = _parse("bench/ablations.py", [["--seeds", "0", "--config.train.seed=1"],
                                          ["--seeds", "0", "--finetune"]])
    assert wrong[0][1] is None and "--finetune" in wrong[1][1]
    wrong = _parse("emocap_jax.main", [
        ["--config=configs/demo.py", "--config.train.sed=1"],
        ["--config=configs/demo.py", "--config.train.num_steps=-1"],
        ["--config=configs/demo.py", "--config.train.seed=1"]])
    assert "'sed'" in wrong[0][1] and "config.train.num_steps=-1" in wrong[1][1]
    assert wrong[2][1] is None


# absl's flags of emocap_jax.main that the docs name (the others are argparse options).
_TRAIN_FLAGS = {"--config", "--workdir", "--mode", "--coordinator_address", "--num_processes",
                "--process_id", "--heartbeat_timeout_seconds", "--helpfull", "--verbosity"}


def test_every_option_the_prose_names_is_a_commands_option():
    """An option named on its own in the text (`--zero-shot-mode`, `--suggest P`,
    `--heartbeat_timeout_seconds`) is one of a command's: of an argparse command (the console
    scripts' modules, the converters, the tokenizer trainer, the bench scripts) or of
    emocap_jax.main (its flags are checked to be absl's below)."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "docs_commands.py"), str(REPO_ROOT),
         "--options", json.dumps(list(ARGPARSE_COMMANDS))], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    options = set(json.loads(result.stdout.splitlines()[-1])) | _TRAIN_FLAGS
    assert {"--zero-shot-mode", "--suggest", "--label-mode", "--val-fraction"} <= options
    train_help = subprocess.run([sys.executable, "-m", "emocap_jax.main", "--helpfull"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "EMOCAP_NO_HUGE_PAGES": "1"}).stdout
    assert [f for f in _TRAIN_FLAGS
            if not re.search(rf"--(\[no\])?{f[2:]}:", train_help)] == []
    unknown = []
    for path in docs_commands.doc_sources(REPO_ROOT):
        _, prose = docs_commands._code_and_prose(docs_commands.doc_text(path))
        for match in re.finditer(r"`(--[^`]+)`", prose):  # a span that starts with an option
            for word in match.group(1).split():
                option = re.sub(r"[=,.)].*$", "", word)
                if word.startswith("--") and not word.startswith("--config.") \
                        and option not in options:
                    line = prose[:match.start()].count("\n") + 1
                    unknown.append(f"{path.relative_to(REPO_ROOT)}:{line}: {word}")
    assert unknown == []


# A path in the repository: under one of its folders, or one of its top-level documents.
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:emocap_jax|data_prep|configs|bench|tests|notebooks|docs)"
                        r"/[\w./-]*[\w/]|(?:README|PERFORMANCE|ABLATIONS|RESULTS)\.md|"
                        r"requirements\.txt|pyproject\.toml)")


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for path in docs_commands.doc_sources(REPO_ROOT):
        text = docs_commands.doc_text(path)
        for match in _REPO_PATH.finditer(text):
            named = match.group(1).rstrip(".")
            if "NAME" in named:  # configs/NAME.py, a placeholder
                continue
            if not (REPO_ROOT / named).exists():
                line = text[:match.start()].count("\n") + 1
                missing.append(f"{path.relative_to(REPO_ROOT)}:{line}: {named}")
    assert missing == []


# `config.loss.mining.threshold`, `--config.loss.mining.threshold=0.99`, `loss.mining.mutual`
# (a group of the config first), each a whole word of an inline code span.
_FIELD = re.compile(r"(?:--)?(?:config\.)?((?:model|data|loss|optim|train|mesh|eval)"
                    r"(?:\.\w+)+)(?:=\S*)?")
_FILE_SUFFIXES = {"py", "md", "json", "jsonl", "safetensors", "txt", "png"}


def _has_field(config, path: str) -> bool:
    node = config
    for part in path.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


def test_every_config_field_the_docs_name_exists():
    config = default.get_config()
    named = [(where, w) for where, words in COMMANDS for w in words if w.startswith("--config.")]
    for path in docs_commands.doc_sources(REPO_ROOT):
        _, prose = docs_commands._code_and_prose(docs_commands.doc_text(path))
        # Each word of a span: `--config.train.global_batch_size=4096 --config.loss.mining.mode=both`
        named += [(f"{path.relative_to(REPO_ROOT)}:{prose[:m.start()].count(chr(10)) + 1}", word)
                  for m in re.finditer(r"`([^`]+)`", prose) for word in m.group(1).split()]
    checked, unknown = set(), []
    for where, span in named:
        match = _FIELD.fullmatch(span)
        # `model.config.text.eot_token_id` is the Python API's (an EmoCapCLIP's CLIPConfig).
        if (match and match.group(1).rsplit(".", 1)[-1] not in _FILE_SUFFIXES
                and not span.startswith("model.config.")):
            checked.add(match.group(1))
            if not _has_field(config, match.group(1)):
                unknown.append(f"{where}: {span}")
    assert unknown == []
    assert len(checked) > 30, sorted(checked)
