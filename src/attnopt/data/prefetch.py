"""Assemble the next meta-batches in a background thread while the current one trains."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def prefetch(
    make: Callable[[Item], Result], items: Iterable[Item], depth: int = 2
) -> Iterator[Result]:
    """``make(item)`` for each item, in order, computed up to ``depth`` items ahead.

    Sampling, the host-to-device copy and augmentation of the next episodes then overlap with
    the current meta-update (episode sampling is stateless, so the results do not depend on
    timing). An exception in ``make`` is raised here, at the item that caused it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        pending: deque[Future[Result]] = deque()
        source = iter(items)
        try:
            for item in source:
                pending.append(pool.submit(make, item))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
