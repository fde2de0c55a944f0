"""Progress bars for qlearn's long loops (tqdm), switchable for reproducible notebook outputs.

A bar appears only when a loop runs longer than a couple of seconds. Set the environment
variable ``QLEARN_PROGRESS=0`` to switch every bar off: the Makefile does so when it executes the
stored notebooks, so that their outputs (which nbval compares) never hold timings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled(progress: bool | None = None) -> bool:
    """``progress`` if given, else True unless ``QLEARN_PROGRESS`` is "0", "false" or "no"."""
    if progress is not None:
        return bool(progress)
    return os.environ.get("QLEARN_PROGRESS", "1").strip().lower() not in {"0", "false", "no"}


def progress_bar(
    iterable: Iterable[T], *, desc: str, total: int | None = None, progress: bool | None = None
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar that shows itself after 2 seconds (if enabled)."""
    if not progress_enabled(progress):
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, delay=2.0, leave=False)
