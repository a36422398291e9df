"""`emocap-prep` (and `python -m data_prep`): the dataset commands under one name.

    emocap-prep benchmarks ...            = python -m data_prep.benchmarks ...
    emocap-prep captions ...              = python -m data_prep.captions ...
    emocap-prep synthetic ...             = python -m data_prep.synthetic ...
    emocap-prep synthetic-benchmarks ...  = python -m data_prep.synthetic_benchmarks ...
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from data_prep import benchmarks, captions, synthetic, synthetic_benchmarks
from emocap_jax.cli_errors import UsageError, entry_point

COMMANDS = {
    "benchmarks": (benchmarks.main, "convert an evaluation benchmark from its owners' layout"),
    "captions": (captions.main, "convert a caption-corpus manifest (JSON lines + images)"),
    "synthetic": (synthetic.main, "generate the synthetic-faces caption corpus"),
    "synthetic-benchmarks": (synthetic_benchmarks.main, "write the synthetic benchmark splits"),
}


def usage() -> str:
    lines = ["usage: emocap-prep COMMAND [options]   (emocap-prep COMMAND --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<22} {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


@entry_point
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)} "
                         f"(emocap-prep --help)")
    return COMMANDS[command][0](rest)
