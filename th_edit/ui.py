"""Console output shared by every command: quiet/verbose switches and progress bars."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False
_verbose = False


def configure(*, quiet: bool, verbose: bool) -> None:
    global _quiet, _verbose
    _quiet, _verbose = quiet, verbose
    # huggingface_hub's download bars are worth seeing (downloads take long) unless --quiet;
    # transformers' own bars ("Loading weights", a second or two) only clutter th-edit's, so they
    # show with --verbose only.
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars() if quiet else enable_progress_bars()
    hf_logging.enable_progress_bar() if verbose and not quiet else hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_info() if verbose else hf_logging.set_verbosity_error()


def is_quiet() -> bool:
    return _quiet


def is_verbose() -> bool:
    return _verbose and not _quiet


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm bar on stderr, silenced by --quiet."""
    return iter(tqdm(items, desc=desc, total=total, unit=unit, disable=_quiet, file=sys.stderr, leave=False))


@contextlib.contextmanager
def bar(total: int, desc: str, unit: str = "it", unit_scale: bool = False) -> Iterator[Callable[[int], object]]:
    """A tqdm bar (with its ETA) for work that is not one loop: yields `advance(n=1)`, to be called
    as each of the `total` steps is done. Silenced by --quiet."""
    with tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=_quiet, file=sys.stderr,
              leave=False) as shown:
        yield lambda n=1: shown.update(n)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No progress bars or status lines inside the block (what --quiet does for a whole command),
    for the Python API: `with th_edit.ui.silenced(): th_edit.bench.paired(...)`. Warnings still show."""
    global _quiet
    before, _quiet = _quiet, True
    try:
        yield
    finally:
        _quiet = before


def info(message: str) -> None:
    """Status line on stderr (stdout stays clean for tables and --json)."""
    if not _quiet:
        print(message, file=sys.stderr)


def debug(message: str) -> None:
    if _verbose and not _quiet:
        print(message, file=sys.stderr)


def warn(message: str) -> None:
    """Warnings are shown even with --quiet: they are about the result, not progress."""
    print(f"warning: {message}", file=sys.stderr)


def warn_new(messages: Iterable[str], shown: set[str]) -> None:
    """Warn each message not in `shown` yet (and remember it): for loops over many similar edits."""
    for message in messages:
        if message not in shown:
            shown.add(message)
            warn(message)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Aligned plain-text columns: the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:<{w}}" if j < left else f"{c:>{w}}" for j, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(headers), *(line(r) for r in rows)]
