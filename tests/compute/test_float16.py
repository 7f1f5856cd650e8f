"""tomoguide.compute.float16.to_float16 against numpy's own float32 → float16 conversion (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from tomoguide.compute.float16 import to_float16


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
