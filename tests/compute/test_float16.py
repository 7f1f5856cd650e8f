"""tomoguide.compute.float16.to_float16 against numpy's own float32 → float16 conversion (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from tomoguide.compute.float16 import float16_stats, to_float16


def _boundary_values() -> np.ndarray:
    """Every finite float16 value as float32, the halfway points between neighbours (the ties), and one float32
    ulp either side of each: every rounding decision, subnormals and the overflow edge included."""
    f = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    f = np.unique(f[np.isfinite(f)])
    mid = ((f[:-1].astype(np.float64) + f[1:]) / 2).astype(np.float32)
    out = [f, mid]
    for arr in (f, mid):
        bits = arr.view(np.uint32)
        out += [(bits + 1).view(np.float32), (bits - 1).view(np.float32)]
    out.append(np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 65536.0, 1e10, -1e10, 2.0**-25,
                         2.0**-24, 3 * 2.0**-26, 1e-30, -1e-30, 3.4e38], np.float32))
    x = np.concatenate(out)
    return x[~np.isnan(x)]


def test_bit_for_bit_numpy_on_every_rounding_case() -> None:
    x = _boundary_values()
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = to_float16(x)
    assert got.dtype == np.float16 and got.shape == x.shape
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("shape", [(41, 32, 32), (7,), (3, 0, 5)])
def test_random_arrays_keep_their_shape_and_values(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    x = (rng.normal(size=shape) * np.exp(rng.uniform(-20, 10, shape))).astype(np.float32)
    np.testing.assert_array_equal(to_float16(x).view(np.uint16), x.astype(np.float16).view(np.uint16))
    # non-contiguous input and other dtypes
    y = rng.normal(size=(6, 8)).astype(np.float32)[:, ::2]
    np.testing.assert_array_equal(to_float16(y), y.astype(np.float16))
    z = rng.normal(size=5)
    np.testing.assert_array_equal(to_float16(z), z.astype(np.float16))


def test_nan_stays_nan() -> None:
    out = to_float16(np.array([np.nan, -np.nan, 1.0], np.float32))
    assert np.isnan(out[:2]).all() and out[2] == 1.0


def test_float16_stats_of_every_finite_value_and_of_random_data() -> None:
    """min, max exact, mean and population std as numpy's float64 reductions, over all 63488 finite float16
    values (subnormals, ±0, the largest) and over random data; NaN left out and counted, an infinity the min or
    max; float32 input refused."""
    every = np.arange(65536, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]
    for x in (finite, np.random.default_rng(5).normal(0.2, 3.0, (7, 33, 65)).astype(np.float16)):
        lo, hi, mean, std, n_nan = float16_stats(x)
        ref = x.astype(np.float64)
        assert lo == ref.min() and hi == ref.max() and n_nan == 0
        assert mean == pytest.approx(ref.mean(), rel=1e-12, abs=1e-12 * np.abs(ref).max())
        assert std == pytest.approx(ref.std(), rel=1e-10)
    x = np.arange(10, dtype=np.float16)
    x[[2, 7]] = np.nan
    lo, hi, mean, std, n_nan = float16_stats(x)
    ok = np.array([0, 1, 3, 4, 5, 6, 8, 9], np.float64)
    assert (lo, hi, n_nan) == (0.0, 9.0, 2) and mean == pytest.approx(ok.mean()) and std == pytest.approx(ok.std())
    assert float16_stats(np.full(4, np.nan, np.float16))[4] == 4
    x[7] = np.inf
    assert float16_stats(x)[1] == np.inf
    with pytest.raises(TypeError):
        float16_stats(np.zeros(3, np.float32))


def test_to_float32_decodes_every_float16_value() -> None:
    """Every float16 bit pattern (NaNs as NaN) decoded as numpy decodes it, into a given row of a larger array;
    float32 input copied; a wrong ``out`` refused."""
    from tomoguide.compute.float16 import to_float32

    every = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256)
    got = to_float32(every)
    want = every.astype(np.float32)
    assert got.dtype == np.float32 and got.shape == (256, 256)
    np.testing.assert_array_equal(got, want)  # NaN == NaN for assert_array_equal
    rows = np.zeros((3, 256, 256), np.float32)
    to_float32(every[::-1], rows[1])  # a non-contiguous source
    np.testing.assert_array_equal(rows[1], want[::-1])
    assert not rows[0].any() and not rows[2].any()
    x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(to_float32(x), x)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        to_float32(every, np.zeros((256, 256), np.float64))
