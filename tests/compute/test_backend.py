"""The array backend: numpy on a machine without a GPU, chosen per call, FFTs with all cores."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.fft

from tomoguide.compute import backend


def test_cpu_choice_and_xp_of(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backend.ENV_VAR, "cpu")
    assert backend.default_xp() is np
    a = np.zeros(3)
    assert backend.xp_of(a) is np
    assert backend.xp_of(1.0, [1, 2]) is np
    assert backend.to_numpy(a) is a or np.shares_memory(backend.to_numpy(a), a)


def test_gpu_requested_without_gpu_falls_back_quietly(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    if backend.gpu_available():
        pytest.skip("this machine has a GPU; the fallback is what CPU-only machines do")
    monkeypatch.setenv(backend.ENV_VAR, "gpu")
    backend._warn_gpu_requested_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="tomoguide.backend"):
        assert backend.default_xp() is np
        assert backend.default_xp() is np
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to numpy" in warnings[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)  # no traceback


def test_invalid_choice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(backend.ENV_VAR, "tpu")
    with pytest.raises(ValueError, match="TOMOGUIDE_DEVICE"):
        backend.default_xp()


def test_fft_uses_all_cores_and_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real = scipy.fft.rfft2

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.fft, "rfft2", spy)
    x = np.random.default_rng(0).normal(size=(16, 16))
    F = backend.fft(np)
    out = F.rfft2(x)
    assert seen.get("workers") == -1
    np.testing.assert_allclose(out, np.fft.rfft2(x), atol=1e-10)
    np.testing.assert_allclose(F.fftfreq(4), np.fft.fftfreq(4))
    assert backend.ndimage(np).shift is not None


@pytest.mark.gpu
def test_cupy_path_matches_numpy() -> None:
    if not backend.gpu_available():
        pytest.skip("no CUDA GPU on this machine")
    import cupy as cp

    x = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    g = cp.asarray(x)
    assert backend.xp_of(g) is cp
    out = backend.to_numpy(backend.fft(cp).rfft2(g))
    np.testing.assert_allclose(out, np.fft.rfft2(x), rtol=1e-4, atol=1e-3)


def test_cpu_threads_limits_numba_fft_and_blas_in_this_thread_only() -> None:
    """The thread budget of work run in this process beside a small local cluster: inside ``cpu_threads(1)`` a
    numba parallel kernel runs on one thread, ``scipy.fft`` calls get one worker and BLAS one thread; outside (and
    in another thread meanwhile) nothing is limited; the previous settings come back on exit."""
    import threading

    import numba
    from threadpoolctl import threadpool_info

    from tomoguide.compute.backend import cpu_threads, fft_workers

    @numba.njit(parallel=True)
    def thread_ids(n: int) -> np.ndarray:
        out = np.zeros(n, np.int64)
        for i in numba.prange(n):
            out[i] = numba.get_thread_id()
        return out

    full = numba.get_num_threads()
    assert fft_workers() == -1
    seen_elsewhere: list[int] = []
    with cpu_threads(1):
        assert numba.get_num_threads() == 1 and fft_workers() == 1
        assert set(thread_ids(10_000).tolist()) == {0}
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(n == 1 for n in blas)
        t = threading.Thread(target=lambda: seen_elsewhere.extend([numba.get_num_threads(), fft_workers()]))
        t.start()
        t.join()
    assert seen_elsewhere == [full, -1]
    assert numba.get_num_threads() == full and fft_workers() == -1
    with cpu_threads(None):
        assert numba.get_num_threads() == full and fft_workers() == -1
    with pytest.raises(ValueError, match="at least 1"), cpu_threads(0):
        pass


def test_imap_threads_keeps_order_bounds_the_window_and_raises() -> None:
    import threading
    import time

    started: list[int] = []
    lock = threading.Lock()

    def slow(x: int) -> int:
        with lock:
            started.append(x)
        time.sleep(0.02 if x % 3 == 0 else 0.001)  # later items finish before earlier ones
        return x * x

    with backend.cpu_threads(2):
        gen = backend.imap_threads(slow, list(range(20)), ahead=3)
        first = next(gen)
        assert first == 0
        time.sleep(0.1)
        assert len(started) <= 4  # the window: 3 started and not yet taken, and the one taken
        assert [first, *gen] == [x * x for x in range(20)]
        assert backend.map_threads(slow, [3, 1, 2]) == [9, 1, 4]

    def fails(x: int) -> int:
        if x == 5:
            raise RuntimeError("item 5 failed")
        return x

    with backend.cpu_threads(2), pytest.raises(RuntimeError, match="item 5"):
        list(backend.imap_threads(fails, list(range(10))))
    with backend.cpu_threads(1):  # one thread: in this thread, in order
        assert list(backend.imap_threads(lambda x: threading.get_ident(), [1, 2])) == [threading.get_ident()] * 2
