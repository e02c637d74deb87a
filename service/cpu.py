"""CPU threads of a service process.

A runner interleaves many jobs' optimizer steps (CMA-ES's eigendecompositions of a d x d covariance, d <= a few
thousand) on one event loop and a few threads. numpy's OpenBLAS would start a thread per core for each of them; on
a machine the workers and the API share, those threads spin against every other process (`bench/abuse.py` measured a
well-behaved tenant's jobs at 1.4-1.7x their idle time with one BLAS thread against 2.4-2.7x with two, on 2 cores).
Only numpy's OpenBLAS is limited: the models' torch (its own OpenMP and BLAS) keeps its threads.
"""

from __future__ import annotations

import logging

log = logging.getLogger("nograd")


def limit_blas_threads(threads: int) -> None:
    """Hold numpy's OpenBLAS (and any other OpenBLAS loaded) to `threads` threads for this process."""
    from threadpoolctl import ThreadpoolController

    pools = ThreadpoolController().select(internal_api="openblas")
    if pools.lib_controllers:
        pools.limit(limits=threads)
        log.debug("numpy's BLAS limited to %d thread(s)", threads)
