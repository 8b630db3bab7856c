"""What every ``r2p1d`` sub-command shares: --help showing defaults, numeric option types
with messages that name what was expected, and one-line errors for a user's mistakes."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable

from ._extras import MissingExtraError
from ._io import FolderBusyError


def plural(count: int, word: str, words: str = "") -> str:
    """"1 step", "2 steps" (`words`: the plural where it is not `word` + "s")."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


class Defaults(argparse.HelpFormatter):
    """--help shows each option's default where it has one worth showing (not for required
    options, on/off flags, or options whose help already says it). An on/off flag's help says
    what it turns on or off and the feature's state without it: "(default: True)" beside
    ``--no-progress`` would read as "off by default"."""

    def _get_help_string(self, action):
        text = action.help or ""
        # `is`, not `in`: 1.0 == True and 0 == False, and those defaults are worth showing.
        if (action.default is not None and action.default is not argparse.SUPPRESS
                and not isinstance(action.default, bool) and not action.required
                and "default" not in text and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def number(kind, minimum, name):
    """An argparse type: a finite `kind` (int or float) of at least `minimum`, with a message
    naming the option, what was expected and what was given."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a finite value >= {minimum}, got {text}")
        return value
    parse.__name__ = name  # argparse's "invalid <name> value" text
    return parse


def run_command(args, run: Callable[[], int],
                mistakes=(FileNotFoundError, NotADirectoryError, ValueError, MissingExtraError)) -> int:
    """run(), with a user's mistake (a path, a size, a file that does not fit, an optional
    package not installed) printed as one line saying what to fix, exit status 2 like
    argparse's own errors; --debug shows where. A folder another live run holds: one line,
    exit status 1."""
    try:
        return run()
    except FolderBusyError as err:
        if getattr(args, "debug", False):
            raise
        print(f"r2p1d {args.command}: {err}", file=sys.stderr)
        return 1
    except mistakes as err:
        if getattr(args, "debug", False):
            raise
        print(f"r2p1d {args.command}: error: {err} (--debug shows the traceback)", file=sys.stderr)
        return 2
