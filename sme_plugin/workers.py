"""Worker processes that stop with their parent: :func:`spawned_pool`."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


@contextmanager
def spawned_pool(jobs: int, **options) -> Iterator[ProcessPoolExecutor]:
    """A :class:`~concurrent.futures.ProcessPoolExecutor` of ``jobs`` spawned processes (``options``: its other
    keyword arguments). When the block raises (a failed task, Ctrl-C, SIGTERM turned into an exception) the
    workers are terminated at once, not awaited with the tasks they are running."""
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), **options)
    try:
        yield pool
    except BaseException:
        stop = getattr(pool, "terminate_workers", None)  # Python >= 3.14; before, the executor's own processes
        if stop is not None:
            stop()
        else:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
