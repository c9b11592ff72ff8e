"""Independent tiles of work on several threads, each running torch single-threaded.

On this project's shared 2-core machines, torch's own 2-thread ops were several times slower than
1-thread ones whenever another process ran (OpenMP's spinning barriers wait for a descheduled
thread; see `linalg.single_threaded`). Tiles that need no barrier avoid that: each worker runs
its ops inline, and the pool only waits at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from th_edit.linalg import single_threaded


def default_workers() -> int:
    return max(1, torch.get_num_threads())


@contextlib.contextmanager
def worker_pool(workers: int | None = None) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose workers (and the calling thread, until exit) run torch on one thread each.

    torch ops release the GIL, so `workers` threads keep that many cores busy.
    """
    with single_threaded(), ThreadPoolExecutor(
        max(1, workers or default_workers()), initializer=torch.set_num_threads, initargs=(1,),  # per-thread in OpenMP
    ) as pool:
        yield pool
