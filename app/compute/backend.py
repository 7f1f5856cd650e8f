"""Array backend: numpy/scipy on the CPU, CuPy on an NVIDIA GPU, chosen from the input array.

Rules (design.md, "Compute functions"):

* The array module of a computation is taken from its input (:func:`xp_of`), never from a global.
* Where *new* arrays go (for functions that create data from nothing, e.g. the simulator) is decided by
  the environment variable ``TOMOGUIDE_DEVICE`` = ``cpu`` | ``gpu`` | ``auto`` (default ``auto``), read on
  every call of :func:`default_xp` so that tests can change it.
* A machine without CUDA, or with CuPy installed but no usable GPU, falls back to numpy without a
  traceback and says so once in the log (``logging`` logger ``tomoguide.backend``).
* FFTs go through :func:`fft` — ``scipy.fft`` with all cores on the CPU (``workers=-1``) and
  ``cupyx.scipy.fft`` on the GPU — and filters through :func:`ndimage`.
* **Thread budget**: :func:`cpu_threads` limits the CPU threads of the computations run inside it, in the
  calling thread (numba's threads, the FFT's workers through :func:`fft_workers`, BLAS): a step that runs its
  work in this process on a local cluster of N single-threaded workers uses N cores, not all of the machine's.
  Outside it every kernel uses every core, as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, Literal

import numpy as np
import scipy.fft
import scipy.ndimage

log = logging.getLogger("tomoguide.backend")

DeviceChoice = Literal["cpu", "gpu", "auto"]
ENV_VAR = "TOMOGUIDE_DEVICE"


@functools.lru_cache(maxsize=1)
def _cupy_or_none() -> ModuleType | None:
    """Import CuPy and check that a GPU is usable; ``None`` otherwise (cached, logged once)."""
    try:
        import cupy  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import time
        log.info("CuPy not available (%s); computing on the CPU with numpy.", type(exc).__name__)
        return None
    try:
        available = bool(cupy.is_available())
    except Exception:  # pragma: no cover - depends on the driver
        available = False
    if not available:
        log.info("CuPy is installed but no CUDA GPU is usable; computing on the CPU with numpy.")
        return None
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports and a CUDA device is usable."""
    return _cupy_or_none() is not None


def device_choice() -> DeviceChoice:
    """The value of ``TOMOGUIDE_DEVICE`` (``auto`` when unset); an unknown value raises ``ValueError``."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in ("cpu", "gpu", "auto"):
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of cpu, gpu, auto")
    return value  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _warn_gpu_requested_once(_: str) -> None:
    log.warning("%s=gpu but no usable CUDA GPU was found; falling back to numpy on the CPU.", ENV_VAR)


def default_xp() -> ModuleType:
    """Array module for newly created arrays, from ``TOMOGUIDE_DEVICE`` and what the machine has."""
    choice = device_choice()
    if choice == "cpu":
        return np
    cp = _cupy_or_none()
    if cp is None:
        if choice == "gpu":
            _warn_gpu_requested_once("gpu")
        return np
    return cp


def xp_of(*arrays: Any) -> ModuleType:
    """Array module (numpy or cupy) of the given arrays; numpy for scalars, lists and numpy arrays."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            cp = _cupy_or_none()
            if cp is not None:
                return cp
    return np


def is_gpu_array(a: Any) -> bool:
    """True for a CuPy array."""
    return type(a).__module__.startswith("cupy")


def to_numpy(a: Any) -> np.ndarray:
    """Copy a CuPy array to the host; numpy arrays are returned as they are."""
    if is_gpu_array(a):
        return a.get()
    return np.asarray(a)


def asarray(a: Any, xp: ModuleType | None = None, dtype: Any = None) -> Any:
    """``a`` as an array of module ``xp`` (default :func:`default_xp`)."""
    xp = xp or default_xp()
    if xp is np:
        return np.asarray(to_numpy(a), dtype=dtype)
    return xp.asarray(a, dtype=dtype)


class _FFT:
    """Thin wrapper that gives the CPU path all cores (``workers=-1``) and the GPU path cupyx.scipy.fft."""

    def __init__(self, module: ModuleType, cpu: bool) -> None:
        self._m = module
        self._cpu = cpu

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._m, name)
        if self._cpu and name in _FFT_FUNCS:
            return functools.partial(_with_workers, fn)
        return fn


_FFT_FUNCS = {
    "fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2", "rfftn", "irfftn",
}


def _with_workers(fn: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("workers", fft_workers())
    return fn(*args, **kwargs)


#: the CPU threads granted to computations in this thread (None: all cores); set by :func:`cpu_threads`
_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("tomoguide_cpu_threads", default=None)


def fft_workers() -> int:
    """``workers`` for ``scipy.fft`` calls: the budget of :func:`cpu_threads` in this thread, else -1 (all
    cores)."""
    n = _THREADS.get()
    return -1 if n is None else n


def thread_budget() -> int:
    """How many threads work in this thread may use: the budget of :func:`cpu_threads`, else the cores this
    process may run on (its CPU affinity)."""
    n = _THREADS.get()
    if n is not None:
        return max(1, int(n))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def map_threads(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on :func:`thread_budget` threads (in order; one thread: in this thread). For
    work that releases the GIL (file reads, numpy casts and gathers, ``scipy.fft``); each call runs inside
    ``cpu_threads(1)`` so that the threads do not each start their own parallel FFTs. ``fn`` must not call
    numba's parallel kernels (numba's ``workqueue`` threading layer, where no OpenMP or TBB is installed, aborts
    on concurrent launches)."""
    return list(imap_threads(fn, items))


def imap_threads(fn: Callable[[Any], Any], items: Sequence[Any], *, ahead: int | None = None) -> Iterator[Any]:
    """:func:`map_threads` as a generator: the results in the order of ``items``, each as soon as it and those
    before it are done, with at most ``ahead`` calls (default: twice the threads) started and not yet taken, so
    a long sequence of large results (a simulated movie per item) is not all held in memory."""
    n = min(thread_budget(), len(items))
    if n <= 1:
        for x in items:
            yield fn(x)
        return
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    def one(x: Any) -> Any:
        token = _THREADS.set(1)
        try:
            return fn(x)
        finally:
            _THREADS.reset(token)

    window = max(n, int(ahead) if ahead is not None else 2 * n)
    with ThreadPoolExecutor(n, thread_name_prefix="tomoguide-map") as pool:
        pending: deque[Future[Any]] = deque()
        try:
            for x in items:
                pending.append(pool.submit(one, x))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early or a call failed: start nothing more
            for f in pending:
                f.cancel()


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Computations inside run on at most ``n`` CPU threads (``None``: no limit, nothing changes): numba's
    parallel kernels called from this thread (``numba.set_num_threads``, per thread), ``scipy.fft`` calls that
    take :func:`fft_workers`, and BLAS (``threadpoolctl``; that limit is process-wide while it lasts, and BLAS
    with fewer threads sums its reductions in another order, so results may differ in the last digits). Restores
    the previous settings on exit."""
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"cpu_threads: n must be at least 1, got {n}")
    import numba

    n_numba = min(int(n), numba.config.NUMBA_NUM_THREADS)
    before = numba.get_num_threads()
    token = _THREADS.set(int(n))
    numba.set_num_threads(n_numba)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - a dependency
            yield
        else:
            with threadpool_limits(limits=int(n), user_api="blas"):
                yield
    finally:
        numba.set_num_threads(before)
        _THREADS.reset(token)


def fft(xp: ModuleType) -> Any:
    """FFT namespace for ``xp``: ``scipy.fft`` (all cores) for numpy, ``cupyx.scipy.fft`` for cupy.

    ``fftshift``, ``fftfreq`` and ``rfftfreq`` are available on both.
    """
    if xp is np:
        return _FFT(scipy.fft, cpu=True)
    import cupyx.scipy.fft as cufft  # type: ignore[import-not-found]

    return _FFT(cufft, cpu=False)


def ndimage(xp: ModuleType) -> ModuleType:
    """``scipy.ndimage`` for numpy, ``cupyx.scipy.ndimage`` for cupy."""
    if xp is np:
        return scipy.ndimage
    import cupyx.scipy.ndimage as cundi  # type: ignore[import-not-found]

    return cundi
