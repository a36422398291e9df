"""User mistakes on the command line: one line, exit status 2, no traceback.

A mistake the user can fix (a missing or empty dataset, an unreadable path, an unknown benchmark or
protocol, a bad config override, a checkpoint of the wrong kind) is raised as `UsageError` where it
is detected, with a message that names the thing and says what to do. Every command's entry point
goes through `entry_point`, which prints `error: <message>` on stderr and exits with status 2;
anything else (an internal error) propagates with its traceback. `ArgumentParser` gives argparse's
own mistakes (unknown option, invalid choice, missing argument) the same one line instead of the
usage block. A reader that closes stdout early (`emocap-eval --list | head`) ends the command
quietly with status 1, as Python's signal documentation recommends (Note on SIGPIPE): no
BrokenPipeError traceback, yet `set -o pipefail` still sees that the output was cut short.

`UsageError` is a `ValueError`, so library callers that already catch `ValueError` keep working.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import os
import select
import sys
from typing import Callable, NoReturn, Optional, Sequence, TypeVar

USAGE_EXIT_STATUS = 2

T = TypeVar("T")


class UsageError(ValueError):
    """A mistake in what the user asked for; the message names the thing and what to do."""


def report(message: str) -> int:
    """Prints the one-line answer to a user mistake and returns the exit status to use."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return USAGE_EXIT_STATUS


def entry_point(main: Callable[..., Optional[int]]) -> Callable[..., Optional[int]]:
    """Wraps a command's `main(argv=None)`: a UsageError becomes one line on stderr and status 2
    (raised as SystemExit, as argparse does, so a console script and `python -m` end alike), and
    a reader closing stdout early ends the command quietly (`quiet_when_stdout_closes`)."""

    @functools.wraps(main)
    def wrapper(argv: Optional[Sequence[str]] = None):
        def call():
            try:
                return main(argv)
            except UsageError as e:
                sys.exit(report(str(e)))

        return quiet_when_stdout_closes(call)

    return wrapper


def quiet_when_stdout_closes(call: Callable[[], T]) -> T:
    """Runs `call()`; a BrokenPipeError from a stdout whose reader is gone (`... | head`) ends the
    command without a traceback. What is still buffered is flushed here, on a return and on a
    SystemExit alike (argparse's --help, a usage error), where the error can be caught, and not
    at the interpreter's exit, which would print "Exception ignored ... BrokenPipeError"."""
    try:
        try:
            result = call()
        except SystemExit:
            _flush_stdout()
            raise
        _flush_stdout()
        return result
    except BrokenPipeError:
        if not stdout_is_closed():
            raise  # a pipe of our own (a worker process, a socket): an internal error
        # The reader has what it wanted. Later writes, and the flush at exit, go nowhere; the
        # status is 1, as Python's own on EPIPE, since the output did not all go out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _flush_stdout() -> None:
    if sys.stdout is not None:
        sys.stdout.flush()


def stdout_is_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is closed, so a BrokenPipeError came
    from the user's reader and not from one of the command's own pipes, which would be a failure."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # no stdout, or one that is no file (capture)
        return False
    if not hasattr(select, "poll"):  # Windows: no poll, and stdout is the likely culprit
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    # A writing end without a reader polls as an error (POLLERR; POLLHUP for a socket).
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <what>` and status 2, without the usage block
    (`--help` still prints it)."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        # argparse reports a missing required option before an unknown one, so a misspelt
        # required option (`--inptu`) read only as "required: --input": name the typo too.
        if message.startswith("the following arguments are required"):
            known = [o for action in self._actions for o in action.option_strings]

            def unrecognised(arg: str) -> bool:
                option = arg.split("=", 1)[0]
                if not option.startswith("-") or option == "--" or option in known:
                    return False
                try:
                    float(option)   # a negative number is a value
                    return False
                except ValueError:
                    pass
                # argparse takes an unambiguous prefix (`--inp` for `--input`)
                return not (self.allow_abbrev and option.startswith("--") and
                            sum(o.startswith(option) for o in known) == 1)

            unknown = [a.split("=", 1)[0] for a in getattr(self, "_given", []) if unrecognised(a)]
            if unknown:
                hints = []
                for option in unknown:
                    close = difflib.get_close_matches(option, known, n=1)
                    hints.append(option + (f", did you mean {close[0]}?" if close else ""))
                message += f" (unrecognised: {'; '.join(hints)})"
        sys.exit(report(message))


# ------------------------------------------------------------------------------------------------
# argparse types for numbers with a range: argparse reports a bad value as
# "argument --batch: must be a positive integer, got '0'", naming the option.


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (a batch, steps, shards, workers...)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type of a count where 0 means none or off (warm-up steps, a top-k of 0: no cap)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def mesh_axis_size(text: str) -> int:
    """argparse type of a mesh axis's device count: at least 1, or -1 for the devices the other
    axis leaves (whether the sizes fit the devices is known only once JAX has started)."""
    value = _integer(text)
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"must be a number of devices (at least 1) or -1 for "
                                         f"the rest, got {text!r}")
    return value


def int_in(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """argparse type of an integer in [low, high] (no upper end where `high` is None): an image
    side, a JPEG quality, a vocabulary size with room for its special pieces."""
    wanted = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted
    return parse


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False
             ) -> Callable[[str], float]:
    """argparse type of a real number in [low, high] (an end excluded where `*_open`; an infinite
    end for a one-sided range); NaN is refused too, as it compares false with everything."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        inside = ((low < value if low_open else low <= value)
                  and (value < high if high_open else value <= high))
        if not inside:
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text!r}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse
