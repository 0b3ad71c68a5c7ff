"""Where a step's time goes: ``with timed(seconds, "part"):`` adds the block's wall time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


@contextmanager
def timed(seconds: dict[str, float], part: str) -> Iterator[None]:
    """Adds the seconds the block took to ``seconds[part]`` (rounded to centiseconds)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[part] = round(seconds.get(part, 0.0) + time.perf_counter() - started, 2)


def timed_call(seconds: dict[str, float], part: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` timed as ``part`` (for work handed to another thread)."""
    with timed(seconds, part):
        return fn(*args)
