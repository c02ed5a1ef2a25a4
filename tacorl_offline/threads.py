"""How many intra-op threads torch should use: the cores that are free, not all of them.

Design decision: on cores shared with other processes, an intra-op thread count above the free
cores costs more than it gains: each of the many parallel regions of a forward/backward pass
waits for its slowest OpenMP thread, and a descheduled thread holds the region for a scheduler
tick (OpenMP waits were 43% of an SFT profile at load 5-11 on 2 cores, issue 19). So a phase
that runs many small kernels (``sft``) asks for ``usable cores - load of the others``, at least
one, where the others' load is the 1-minute load average less this process's own runnable
thread. The number is read once, when the phase starts; ``sft.threads`` overrides it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def free_cores(load: float | None = None, cores: int | None = None) -> int:
    """The cores not taken by other processes: ``cores - (load - 1)``, rounded, in
    ``[1, cores]`` (``load``: the 1-minute load average, which counts this process too)."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return cores
    others = max(0.0, load - 1.0)
    return max(1, min(cores, round(cores - others)))


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` intra-op threads (None: :func:`free_cores`), then restore."""
    before = torch.get_num_threads()
    want = free_cores() if n is None else max(1, n)
    torch.set_num_threads(want)
    try:
        yield want
    finally:
        torch.set_num_threads(before)
