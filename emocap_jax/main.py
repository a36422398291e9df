"""Command line entry point: flags only; the library does the work.

    python -m emocap_jax.main --config=configs/vitb16.py --workdir=DIR [--mode=train|eval|data|info]
        [--config.field=value ...]
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Installed, the same command is `emocap-train`, and `--config=configs/NAME.py` names the config
shipped with the package when there is no such file below the current directory.
A user mistake (bad flag or config override, missing config, dataset or export) is answered with
one line and exit status 2 (emocap_jax.cli_errors).
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys

import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_dict, config_flags

from emocap_jax import host_memory
from emocap_jax.cli_errors import UsageError, entry_point, quiet_when_stdout_closes, report

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config(); fields overridable with "
    "--config.field=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "data", "info"],
                          "train: train (resuming from the workdir) then evaluate; eval: run the "
                          "config's evaluations (config.eval.benchmarks) on the workdir's export "
                          "and write WORKDIR/eval/report.md; data: check the datasets, or "
                          "generate and convert the synthetic corpus into the workdir, and stop; "
                          "info: print the model summary.")
# Multi-process runs on clusters JAX cannot detect (on TPU pod slices and SLURM nothing is needed).
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, which every process of a multi-process "
    "run connects to (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Processes in the multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index in the run, 0..num_processes-1.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", None, "A process whose heartbeats stop this long counts as dead "
    "and ends the run on every process (default 100).")


def print_info(config) -> None:
    # Here, not at the top: the library and JAX load after the huge-pages re-exec (see __main__).
    import jax

    from emocap_jax.config_utils import clip_config
    from emocap_jax.models.clip import param_shapes

    model = clip_config(config)
    shapes = param_shapes(model)
    count = lambda tree: sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(
        tree, is_leaf=lambda x: isinstance(x, tuple)))
    v, t = model.vision, model.text
    print(f"model: {config.model_name}")
    print(f"  image tower: ViT {v.image_size}px, patch {v.patch_size} ({v.num_patches} patches), "
          f"width {v.width}, {v.layers} layers, {v.heads} heads, mlp {v.mlp_dim}: "
          f"{count(shapes['visual']):,} parameters")
    print(f"  text tower: context {t.context_length}, vocab {t.vocab_size}, width {t.width}, "
          f"{t.layers} layers, {t.heads} heads, mlp {t.mlp_dim}: {count(shapes['text']):,} "
          f"parameters")
    print(f"  embed dim {model.embed_dim}, activation {model.activation}, compute dtype "
          f"{model.dtype}, remat {model.remat}")
    print(f"  total: {count(shapes):,} parameters")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform} "
          f"({jax.process_count()} process(es))")


@entry_point
def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}: every setting is a flag "
                         f"(--config=..., --workdir=..., --config.FIELD=VALUE)")
    try:
        config = _CONFIG.value
        config.keys()  # config_flags defers a config file's load failure to the first access
    except OSError as e:
        raise UsageError(_config_load_error(flags.FLAGS["config"].config_filename, e)) from None
    # Orbax and JAX log every checkpoint file operation at INFO through absl; our own progress
    # lines (logger "emocap_jax") stay visible. --verbosity=0 brings the library logs back.
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    # After the huge-pages re-exec, like every JAX import here (see print_info).
    from emocap_jax import distributed
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _HEARTBEAT.value)
    if _MODE.value == "info":
        print_info(config)
        return 0
    if not _WORKDIR.value:
        raise UsageError("--workdir is required for --mode=train, --mode=eval and --mode=data")
    from emocap_jax import train  # after the huge-pages re-exec, as in print_info
    with distributed.exit_when_a_peer_is_gone():
        if _MODE.value == "train":
            train.train_and_evaluate(config, _WORKDIR.value)
        elif _MODE.value == "data":
            train_dir, eval_dir = train.prepare_data(config, _WORKDIR.value)
            print(f"training data: {train_dir}\nheld-out data: {eval_dir or '(none)'}")
        else:
            train.evaluate_workdir(config, _WORKDIR.value)
    return 0


def _shipped_configs() -> list[str]:
    """The configs installed with the package, as `configs/NAME.py`."""
    spec = importlib.util.find_spec("configs")
    names = set()
    for folder in (spec.submodule_search_locations or []) if spec else []:
        names |= {n for n in os.listdir(folder) if n.endswith(".py") and n != "__init__.py"}
    return [f"configs/{n}" for n in sorted(names)]


def _config_load_error(given: str, error: OSError) -> str:
    """A missing config file named as such, with the configs there are (ml_collections words it
    "Configuration is not available because of an earlier failure to load: Failed loading config
    file config_config ..."); another OSError (one the config file's own code raised) as is."""
    path = given.split(":", 1)[0]  # --config=FILE:ARG passes ARG to get_config
    if not os.path.isfile(path):
        return (f"--config={given}: no such file {path}; the shipped configs, found from any "
                f"directory as --config=configs/NAME.py: {', '.join(_shipped_configs())}")
    return f"--config={given}: {error}"


def _with_installed_config(argv: list[str]) -> list[str]:
    """--config=configs/NAME.py[:ARG] names the config shipped with the package when no such file
    is below the current directory (an installed `emocap-train` run from anywhere). absl's
    other spelling, `--config configs/NAME.py`, is joined into the first one so that it is
    resolved alike."""
    out = []
    for arg in argv:
        if out and out[-1] == "--config" and not arg.startswith("-"):
            out[-1] = f"--config={arg}"
        else:
            out.append(arg)
    for i, arg in enumerate(out):
        match = re.fullmatch(r"--config=(configs/[^:]+\.py)(:.*)?", arg)
        if match and not os.path.isfile(match.group(1)):
            spec = importlib.util.find_spec("configs")
            for folder in (spec.submodule_search_locations or []) if spec else []:
                shipped = os.path.join(folder, match.group(1).removeprefix("configs/"))
                if os.path.isfile(shipped):
                    out[i] = f"--config={shipped}{match.group(2) or ''}"
                    break
    return out


def _unset_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """`--config.FIELD=None` for a field that may be unset (an ml_collections placeholder such as
    loss.mining.relative_threshold or model.text.eot_token_id): ml_collections parses the value
    with the field's type ("could not convert string to float: 'None'"), so a setting a config
    file made could not be switched off from the command line. Such overrides are taken out of
    argv (the last one of a field wins, as absl's order would have it) and applied after parsing
    (_apply_unset). Returns (the other arguments, [(field, the argument)])."""
    rest, unset = [], []
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--config\.([\w.]+)=None", arg)
        later = match and any(a.startswith(f"--config.{match.group(1)}=")
                              for a in argv[i + 1:])
        if match and not later:
            unset.append((match.group(1), arg))
        elif not (match and later):
            rest.append(arg)
    return rest, unset


def _apply_unset(unset: list[tuple[str, str]], config) -> None:
    for key, arg in unset:
        *parents, name = key.split(".")
        parent = config
        try:
            for part in parents:
                parent = parent[part]
            field = parent._fields[name]
        except (KeyError, TypeError, AttributeError):
            raise flags.Error(f"{arg}: the config has no field {key!r}") from None
        if not isinstance(field, config_dict.FieldReference):
            raise flags.Error(f"{arg}: config.{key} cannot be unset (None); give a value of "
                              f"its type ({type(field).__name__})")
        parent[name] = None


def _check_tuple_overrides(argv: list[str], config) -> None:
    """ml_collections reads `--config.init_exclude=(visual/proj,text/proj)` or `...=a,b` (elements
    unquoted, so no Python literal) as the one-element tuple ('(visual/proj,text/proj)',): a
    regex, class name or benchmark that silently means nothing. An override of a tuple field
    that came out as one string holding the comma-separated text it was given is refused, saying
    how to quote it."""
    for arg in argv:
        match = re.fullmatch(r"--config\.([\w.]+)=(.*)", arg, flags=re.DOTALL)
        if not match:
            continue
        key, raw = match.groups()
        value = config
        try:
            for part in key.split("."):
                value = value[part]
        except (KeyError, TypeError, AttributeError):
            continue
        if isinstance(value, tuple) and len(value) == 1 and value[0] == raw and "," in raw:
            inner = raw.strip()
            if inner[:1] in "([" and inner[-1:] in ")]":
                inner = inner[1:-1]
            elements = [e.strip() for e in inner.split(",") if e.strip()]
            quoted = "(" + ",".join(repr(e) for e in elements) + ("," if len(elements) == 1
                                                                    else "") + ")"
            raise flags.Error(
                f"--config.{key}={raw} is read as the single string {raw!r}, not as a tuple of "
                f"{len(elements)} elements: quote each element, --config.{key}=\"{quoted}\"")


# absl's help flags. absl ends them with exit status 1; asked-for help is no failure, and `-h`
# (argparse's spelling, which every other emocap command takes) is the same as --help.
_HELP_FLAGS = ("--help", "--helpshort", "--helpfull", "--helpxml", "-?")


def _override_problem(argv: list[str], config) -> str | None:
    """The first `--config.A.B=...` in argv whose path the config does not have, in words
    naming the override and the field (with the nearest field name when one is close); None
    when every override's path exists. Walked here rather than read off ml_collections'
    exception, whose text does not always name the field ("Attribute <class 'int'>.x does not
    exist") or is a TypeError or ValueError from indexing a tuple or an unset placeholder."""
    if not isinstance(config, config_dict.ConfigDict):  # no config loaded: nothing to walk
        return None
    for arg in argv:
        match = re.fullmatch(r"--config\.([^=]+)(=.*)?", arg, flags=re.DOTALL)
        if not match:
            continue
        node, walked = config, "config"
        for part in match.group(1).split("."):
            if not isinstance(node, config_dict.ConfigDict):
                return (f"--config.{match.group(1)}: {walked} is a single value ({node!r}), "
                        f"not a group of fields, so it has no field {part!r}")
            if part not in node:
                close = difflib.get_close_matches(part, list(node.keys()), n=1)
                where = "" if walked == "config" else f" in {walked}"
                return (f"--config.{match.group(1)}: the config has no field {part!r}{where}"
                        + (f" (did you mean {close[0]!r}?)" if close else ""))
            node, walked = node[part], f"{walked}.{part}"
    return None


def _config_named_in(argv: list[str]):
    """The config that argv's --config names, loaded afresh: an override's path error is raised
    while ml_collections parses --config itself, before the flag holds a value. None when there
    is none or it does not load (the caller then lets the original error through)."""
    paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    paths += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    if not paths:
        return None
    try:
        return flags.FLAGS["config"].parser.parse(paths[-1])
    except Exception:  # any failure to load: the error being reported stays the original one
        return None


def _config_file_error(message: str) -> str | None:
    """ml_collections reports a config file's get_config() raising ValueError or TypeError (an
    unknown `configs/ablations.py:NAME`, an argument to a config that takes none) as the whole
    traceback inside the flag error; the one line for it is the flag and the exception's own
    message (the traceback's last line). None for any other flag error."""
    flag, marker, trace = message.partition(": Error whilst parsing config file:")
    if not marker or not trace.strip():
        return None
    last = trace.strip().splitlines()[-1]
    return f"{flag.removeprefix('flag ')}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', last)}"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config override answered in one line (status 2)
    instead of absl's FATAL message or a traceback, and help (--help, -h, --helpfull) ending
    with status 0."""
    argv = ["--help" if a == "-h" else a for a in _with_installed_config(argv)]
    parsed, unset = _unset_overrides(argv)
    try:
        rest = flags.FLAGS(parsed)
        _check_tuple_overrides(parsed, flags.FLAGS["config"].value)
        _apply_unset(unset, flags.FLAGS["config"].value)
        return rest
    except SystemExit as e:
        if e.code == 1 and any(a in _HELP_FLAGS for a in parsed[1:]):
            sys.exit(0)
        raise
    except flags.Error as e:
        sys.exit(report(_config_file_error(str(e)) or f"{e} (--helpfull lists the flags; "
                        f"configs/default.py documents every config field)"))
    # --config.FIELD=... for a field the config lacks; what ml_collections raises depends on what
    # the path runs into (a missing key, an int, a tuple, an unset placeholder).
    except (AttributeError, KeyError, TypeError, ValueError):
        problem = _override_problem(parsed, _config_named_in(parsed))
        if problem is None:
            raise
        sys.exit(report(f"{problem}; configs/default.py documents every field"))


def run() -> None:
    """`python -m emocap_jax.main` and the `emocap-train` console script."""
    # Huge pages for XLA:CPU's per-step buffers (see host_memory); a no-op where unsupported.
    host_memory.reexec_with_huge_pages()
    flags.mark_flags_as_required(["config"])
    # absl prints --help and --helpfull while it parses the flags, before main's entry_point.
    quiet_when_stdout_closes(lambda: app.run(main, flags_parser=_parse_flags))


if __name__ == "__main__":
    run()
