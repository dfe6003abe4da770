"""What the diagnostic examples share: a parser with the model argument, and posttrain's one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from posttrain.errors import UserError
from posttrain.models.load import shipped_base


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of prompts or lists)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first line of `doc`, with MODEL (default: the shipped base)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("model", nargs="?", default=str(shipped_base()))
    return p


def run(main: Callable[[], None]) -> None:
    """Run `main`; a bad model path becomes one line and exit 2, as the posttrain commands do."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
