"""Where the cells of an assessment run: in this process, in local worker processes, or on
a Dask cluster.

Every cell is independent (one attack, defense and seed), so the matrix parallelises by
cells. Each worker runs one thread: on these small models BLAS and OpenMP thread pools only
add contention (measured: 16 s instead of 0.6 s for a small MLP; measured here, lbfgs on a
64-64-10 MLP ran 30 times slower with two threads on a busy 2-core machine). Thread pools
are pinned *after* numpy, scipy and scikit-learn are loaded: threadpoolctl only reaches
libraries already in the process, and environment variables only those loaded later.
"""

from __future__ import annotations

import multiprocessing
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from ..errors import ConfigurationError

T = TypeVar("T")
R = TypeVar("R")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def one_thread() -> AbstractContextManager[Any]:
    """Limit BLAS/OpenMP pools to one thread while the context is open (restored after)."""
    import numpy  # noqa: F401  (load every pool threadpoolctl should reach)
    import scipy.optimize  # noqa: F401
    import sklearn.neural_network  # noqa: F401
    from threadpoolctl import threadpool_limits

    limits: AbstractContextManager[Any] = threadpool_limits(limits=1)
    return limits


def pin_worker(set_env: bool = True) -> None:
    """Worker set-up: one thread for good, and thieves' ConvergenceWarning silenced.

    Thieves silence the warning around each fit with `warnings.catch_warnings`, which is not
    thread-safe: on a Dask worker with several threads one fit's exit can restore the
    filters while another fit is running. A process-wide filter makes every interleaving
    safe. Stopping at max_iter is the budgeted training chosen for the thieves.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    if set_env:  # for the worker's own children; a Dask worker may share our process
        for name in _THREAD_VARS:
            os.environ[name] = "1"
    one_thread()  # not restored: the whole worker process is single-threaded
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


class Executor(ABC):
    """Runs `fn` over items and yields results as they finish (in any order)."""

    name: str = "executor"

    @abstractmethod
    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...


class InProcess(Executor):
    """Serial, in this process: for debugging and for tiny matrices."""

    name = "in-process"

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        with one_thread():
            for item in items:
                yield fn(item)


class LocalProcesses(Executor):
    """A pool of spawned worker processes, one thread each (the default)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.name = f"{self.workers} local process{'es' if self.workers > 1 else ''}"

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        todo = list(items)
        # spawn, not fork: the parent may hold threads (progress display, Dask, BLAS)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(self.workers, max(1, len(todo))), mp_context=ctx,
                                 initializer=pin_worker) as pool:
            pending: set[Future[R]] = {pool.submit(fn, item) for item in todo}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()


class DaskCluster(Executor):
    """Cells as Dask tasks on an existing cluster (``tcp://scheduler:8786``) or client.

    The workers need modelfence installed (the same version) and, for comparable timings,
    one thread each (``dask worker --nthreads 1``); their thread pools are pinned before
    the first cell.
    """

    def __init__(self, address: str | None = None, *, client: Any = None,
                 connect_timeout_s: float = 10.0) -> None:
        try:
            import distributed
        except ImportError:
            raise ConfigurationError("running on Dask needs the [dask] extra: "
                                     "pip install 'modelfence[dask]'") from None
        self._distributed = distributed
        self._address, self._client = address, client
        self._timeout = f"{connect_timeout_s}s"
        if client is None and not address:
            raise ConfigurationError("give the Dask scheduler address, e.g. tcp://host:8786")
        self.name = f"Dask at {address}" if address else "Dask"

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        client = self._client
        own = client is None
        if own:
            try:
                client = self._distributed.Client(  # type: ignore[no-untyped-call]
                    self._address, set_as_default=False, timeout=self._timeout)
            except OSError as exc:
                raise ConfigurationError(f"cannot reach the Dask scheduler at "
                                         f"{self._address}: {exc}") from None
        try:
            client.run(pin_worker, False)
            futures = client.map(fn, list(items), pure=False)
            done = self._distributed.as_completed(  # type: ignore[no-untyped-call]
                futures, loop=client.loop)
            for future in done:
                yield future.result()
        finally:
            if own:
                client.close()


def executor_for(dask: str | None, workers: int | None) -> Executor:
    """`--dask ADDRESS` wins; otherwise local processes (in-process for one worker)."""
    if dask:
        return DaskCluster(dask)
    if workers == 1:
        return InProcess()
    return LocalProcesses(workers)
