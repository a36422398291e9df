"""pyproject.toml: every console script resolves to the function its `python -m` command runs,
every package the code imports is shipped, and the vocabulary is package data. (A real
`pip install .` in a fresh virtualenv was checked by hand; this guards the declarations offline.)"""
import importlib
import pathlib
import tomllib

from tests.conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SCRIPTS = {"emocap-train": "emocap_jax.main", "emocap-eval": "emocap_jax.evaluate",
           "emocap-predict": "emocap_jax.predict", "emocap-convert": "emocap_jax.convert",
           "emocap-prep": "data_prep"}


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def test_console_scripts_are_the_python_m_entry_points():
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == set(SCRIPTS)
    for script, module in SCRIPTS.items():
        function = _resolve(scripts[script])
        assert callable(function), script
        # `python -m MODULE` runs the same function (its __main__ block, or __main__.py's import).
        main_file = REPO_ROOT / module.replace(".", "/")
        main_file = main_file / "__main__.py" if main_file.is_dir() else main_file.with_suffix(".py")
        source = main_file.read_text()
        assert f"{function.__name__}()" in source.split("__main__")[-1], (script, main_file)
        assert function.__module__ in (module, f"{module}.cli", module.rsplit(".", 1)[0] + ".cli")


def test_every_package_and_the_vocabulary_are_shipped():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for top in ("emocap_jax", "data_prep", "configs"):
        assert f"{top}*" in include
        for init in (REPO_ROOT / top).rglob("__init__.py"):
            assert ".".join(init.parent.relative_to(REPO_ROOT).parts).startswith(top)
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["emocap_jax"]
    shipped = {p.relative_to(REPO_ROOT / "emocap_jax") for pattern in data
               for p in (REPO_ROOT / "emocap_jax").glob(pattern)}
    assert pathlib.Path("assets/bpe_simple_vocab_16e6.txt.gz") in shipped
    assert pathlib.Path("assets/NOTICE.md") in shipped


def test_the_umbrella_prep_command_runs_each_converter():
    from data_prep import benchmarks, captions, cli, synthetic, synthetic_benchmarks

    mains = {name: fn for name, (fn, _) in cli.COMMANDS.items()}
    assert mains == {"benchmarks": benchmarks.main, "captions": captions.main,
                     "synthetic": synthetic.main,
                     "synthetic-benchmarks": synthetic_benchmarks.main}


def test_the_gpu_wheels_take_their_versions_from_requirements():
    """bench/gpu_wheels.sh fetches the packages a GPU machine lacks at requirements.txt's pins
    (it looks each one up there); a package dropped from requirements.txt would only fail on
    the GPU machine, whose minutes are few, so it is caught here."""
    import re

    script = (REPO_ROOT / "bench" / "gpu_wheels.sh").read_text()
    names = re.search(r"from_requirements=\(([^)]*)\)", script).group(1).split()
    assert {"grain", "ml_collections", "simplejpeg", "flax"} <= set(names)
    pinned = {line.split("==")[0].lower() for line in
              (REPO_ROOT / "requirements.txt").read_text().splitlines() if "==" in line}
    assert [name for name in names if name.lower() not in pinned] == []


# Every argparse command: the console scripts' modules (emocap_jax.main is absl's, whose flags
# all take a help string), the converters emocap-prep dispatches to, the tokenizer trainer and
# every bench script that parses arguments (not bench_args.py, a module the scripts import).
ARGPARSE_COMMANDS = (
    ["emocap_jax.evaluate", "emocap_jax.predict", "emocap_jax.convert", "emocap_jax.tokenizers",
     "data_prep.benchmarks", "data_prep.captions", "data_prep.synthetic",
     "data_prep.synthetic_benchmarks"]
    + sorted(f"bench/{p.name}" for p in (REPO_ROOT / "bench").glob("*.py")
             if "argparse" in p.read_text() and 'if __name__ == "__main__":' in p.read_text()))

# Runs each command with parse_args replaced by a listing of its options (and its sub-commands')
# that carry no help text, so that nothing else of the command runs.
_LIST_UNDOCUMENTED = """
import argparse, json, runpy, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
found = []
class Listed(Exception):
    pass
def listing(self, args=None, namespace=None):
    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")
            elif action.option_strings and not action.help:
                found.append(f"{name} {'/'.join(action.option_strings)}")
    walk(self, target)
    raise Listed
argparse.ArgumentParser.parse_args = listing
argparse.ArgumentParser.parse_known_args = listing
for target in sys.argv[2:]:
    sys.argv[1:] = []
    try:
        if target.endswith(".py"):
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        found.append(f"{target}: parsed no arguments")
    except Listed:
        pass
print(json.dumps(found))
"""


def test_every_option_of_every_command_has_help():
    """`--help` documents every option: an option without help text shows only its name."""
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _LIST_UNDOCUMENTED, str(REPO_ROOT),
                             *ARGPARSE_COMMANDS], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == []
