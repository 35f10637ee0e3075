"""Per-module work on a small thread pool.

Modules are aggregated independently and torch releases the GIL inside its kernels, so ``w``
threads work on ``w`` modules at once. Each worker runs its torch ops on one intra-op thread:
LAPACK on the ``4096 x 160`` stacks of a LLaMA-7B round scales poorly across intra-op threads
(1.5x on 2 cores, and far worse while another process holds a core), whereas whole modules
scale with the cores. A module's numbers do not depend on which worker computed it or when.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch


def for_each_module(work: Callable[[str], object], modules: Iterable[str], workers: int) -> None:
    """Call ``work(module)`` for every module, ``workers`` at a time (in the calling thread when
    ``workers <= 1``). The first error raised by ``work`` is raised here once all calls are done.

    Each pool thread sets torch's intra-op threads to 1 (MKL's count and OpenMP's are
    per-thread); torch also remembers that count for threads it starts later, so the calling
    thread's setting is put back when the pool is done.
    """
    modules = list(modules)
    if workers <= 1 or len(modules) <= 1:
        for module in modules:
            work(module)
        return
    caller = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(min(workers, len(modules)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for _ in pool.map(work, modules):
                pass
    finally:
        torch.set_num_threads(caller)
