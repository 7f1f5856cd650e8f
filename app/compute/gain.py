"""Gain-reference orientation: the 8 flips/rotations, and the orientation detected from the data.

Conventions
-----------
* A **stored gain** is the 2D array as read from its file, ``(gy, gx)`` float, rows = y. The movies'
  frames are ``(ny, nx)``. The gain is multiplicative: ``corrected = raw × gain_oriented``.
* An **orientation** is three switches applied to the stored gain in this order (RELION's and Warp's,
  and :func:`tomoguide.compute.io.movies.read_gain`'s): **transpose first** (``g.T``: the pixel at
  ``(y, x)`` moves to ``(x, y)``), **then flip X** (mirror columns, ``x -> nx - 1 - x``), **then flip Y**
  (mirror rows, ``y -> ny - 1 - y``). The 8 combinations are the 8 symmetries of the square: the identity,
  the two mirrors, the 180° rotation, the transpose, the two 90° rotations and the anti-transpose
  (:data:`ORIENTATIONS`, each named by :func:`orientation_name`). On a non-square camera only the 4
  orientations with the right shape are possible (the transposed 4 when the gain is stored ``(nx, ny)``).
* **Super-resolution**: a gain at twice the frames' size (K2/K3 super-resolution reference with counted
  movies) is binned 2×2 to the frames' pixels for the detection; its binned value is the *harmonic* mean of
  the four sub-pixels (a counted pixel's sensitivity is the mean of its sub-pixels' sensitivities 1/g).
  Movies at twice the gain's size are summed 2×2 instead. Other size ratios are an error.
* **Bad gain pixels** (zero, negative or not finite: dead pixels, masked regions) take no part in the
  detection.

Detection (:func:`detect_orientation`)
-------------------------------------
Under the right orientation the raw counts are ``raw ≈ dose · I / gain_oriented``, so the *pixel-scale*
fixed pattern of the raw frame sum is the inverse of the gain's: after a local high-pass (relative
deviation from a 7×7 local mean, which removes the illumination, the gain's own smooth part and most of the
specimen, whose structure is blurred by summing many movies) the two patterns anti-correlate. The score of
an orientation is that anti-correlation, ``−corr(hp(raw_sum), hp(gain_oriented))`` over the valid pixels
(bad gain pixels, empty pixels and stationary outliers such as hot pixels masked); the gain's pixel-to-pixel
scatter, its dead/hot columns and its sensor pattern carry it. Wrong orientations pair unrelated pixels and
score about 0 (only a pattern the wrong orientation maps onto itself, such as column stripes under a Y flip,
is shared, so the best orientation wins by its pixel-scale part).

Some files hold the *inverse* of a gain (a sensitivity or flat-field map, raw ∝ file: Thermo Fisher's EER gain
references in MRC format, which RELION inverts): the 8 orientations are also scored under that hypothesis
(correlation instead of anti-correlation), so 16 hypotheses compete, and the result says ``inverted``.

The **confidence** is the best score's margin over the second best, in units of the margin's standard
error, estimated from the spread of the same margin over an 8 × 8 grid of image blocks (the blocks are
independent samples of the fixed pattern). Below :data:`MIN_CONFIDENCE` (5 standard errors) the result is
*undecided* (``decided = False``): e.g. a uniform gain, a gain of another camera, or too few counts. A
gain already applied to the movies (gain-corrected data with the reference given anyway) also ends
undecided or picks an orientation with a low score; compare ``score`` with the identity's.

Reference: the idea is that of RELION's and Warp's users' "check that the corrected sum is flat", made
quantitative; IMOD's ``clip`` / MotionCor2's ``-RotGain/-FlipGain`` apply the same 8 operations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.ndimage

__all__ = [
    "ORIENTATIONS",
    "MIN_CONFIDENCE",
    "GainOrientation",
    "apply_orientation",
    "orientation_name",
    "bin_gain_2x",
    "invert_gain",
    "INVERSE_SUFFIX",
    "detect_orientation",
]

#: The 8 orientations ``(transpose, flip_x, flip_y)``, identity first, the 4 untransposed ones first.
ORIENTATIONS: tuple[tuple[bool, bool, bool], ...] = (
    (False, False, False),
    (False, True, False),
    (False, False, True),
    (False, True, True),
    (True, False, False),
    (True, True, False),
    (True, False, True),
    (True, True, True),
)

#: Smallest confidence (best score's margin over the second best, in standard errors) that decides.
MIN_CONFIDENCE = 5.0
#: Appended to an orientation's name when the file holds the inverse of a gain.
INVERSE_SUFFIX = " (inverse gain)"

_HP_SIZE_PX = 7  # side of the local-mean box of the high-pass (px)
_OUTLIER_SIGMA = 8.0  # |robust z| above which a pixel of the high-passed raw sum is masked (hot pixels, hits)
_CONFIDENCE_CAP = 1000.0  # noiseless inputs would give an infinite confidence; JSON needs a number


def orientation_name(transpose: bool, flip_x: bool, flip_y: bool) -> str:
    """Short name of an orientation: ``"as stored"``, ``"flip X"``, ``"flip Y"``, ``"flip X + flip Y"``,
    ``"transpose"``, ``"transpose + flip X"``, ``"transpose + flip Y"``, ``"transpose + flip X + flip Y"``
    (the operations in the order they are applied)."""
    ops = [n for n, on in (("transpose", transpose), ("flip X", flip_x), ("flip Y", flip_y)) if on]
    return " + ".join(ops) if ops else "as stored"


def apply_orientation(gain: np.ndarray, transpose: bool = False, flip_x: bool = False,
                      flip_y: bool = False) -> np.ndarray:
    """The stored gain ``(gy, gx)`` in the movies' orientation: transpose first, then flip X (columns),
    then flip Y (rows). Returns a view (no copy; use ``np.ascontiguousarray`` for a contiguous array);
    ``(gx, gy)`` when transposed. Any leading axes are kept (the last two are the image)."""
    g = np.asarray(gain)
    if transpose:
        g = np.swapaxes(g, -1, -2)
    if flip_x:
        g = g[..., :, ::-1]
    if flip_y:
        g = g[..., ::-1, :]
    return g


def _bad_mask(g: np.ndarray) -> np.ndarray:
    return ~np.isfinite(g) | (g <= 0)


def invert_gain(stored: np.ndarray) -> np.ndarray:
    """A multiplicative gain from a file that holds its inverse (a sensitivity map): ``mean / stored`` over the
    valid pixels (float32, mean ≈ 1 like the file's); bad pixels (zero, negative, not finite: defects) stay 0."""
    s = np.asarray(stored, dtype=np.float64)
    bad = _bad_mask(s)
    mean = float(s[~bad].mean()) if (~bad).any() else 1.0
    return np.where(bad, 0.0, mean / np.where(bad, 1.0, s)).astype(np.float32)


def bin_gain_2x(gain: np.ndarray) -> np.ndarray:
    """A super-resolution gain ``(2m, 2n)`` binned to ``(m, n)`` float32: the harmonic mean of each 2×2 block
    (``4 / Σ 1/g``: a counted pixel's sensitivity is the mean of its sub-pixels' 1/g). A block with a bad
    sub-pixel (zero, negative, not finite) becomes NaN. Odd sizes are an error."""
    g = np.asarray(gain, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] % 2 or g.shape[1] % 2:
        raise ValueError(f"a 2x super-resolution gain must be 2D with even sides, got shape {g.shape}")
    bad = _bad_mask(g)
    inv = np.where(bad, np.nan, 1.0 / np.where(bad, 1.0, g))
    m, n = g.shape[0] // 2, g.shape[1] // 2
    s = inv.reshape(m, 2, n, 2).sum(axis=(1, 3))
    return (4.0 / s).astype(np.float32)


@dataclass
class GainOrientation:
    """Result of :func:`detect_orientation`.

    * ``transpose``, ``flip_x``, ``flip_y``: the best orientation (see the module docstring for the order).
      Meaningful only when ``decided``; when undecided they are still the best-scoring orientation.
    * ``score``: its anti-correlation of the high-passed patterns (−1..1; a few 0.01 to 0.5 on real data).
    * ``confidence``: the best score's margin over the second best, in standard errors (capped at 1000).
    * ``decided``: ``confidence >= min_confidence`` and the best score itself significant (> 0 by at least
      ``min_confidence`` standard errors).
    * ``scores``: score of every orientation tried, keyed by :func:`orientation_name` (only the orientations
      the shapes allow).
    * ``inverted``: the file holds the *inverse* of a gain (a sensitivity map: the raw counts follow it
      instead of its inverse), as Thermo Fisher's EER gain references in MRC format do (RELION inverts them,
      only its ``.gain`` TIFFs are multiplicative); use ``mean / file`` as the gain
      (:func:`invert_gain`). The name then ends in :data:`INVERSE_SUFFIX`.
    * ``second``: name of the runner-up; ``gain_binning``: 2 when a super-resolution gain was binned 2×2
      to the frames, else 1; ``frames_binning``: 2 when the raw sum was (movies at twice the gain's size);
      ``n_pixels``: pixels used.
    """

    transpose: bool
    flip_x: bool
    flip_y: bool
    score: float
    confidence: float
    decided: bool
    scores: dict[str, float] = field(default_factory=dict)
    second: str = ""
    inverted: bool = False
    gain_binning: int = 1
    frames_binning: int = 1
    n_pixels: int = 0

    @property
    def name(self) -> str:
        """:func:`orientation_name` of the best orientation, with :data:`INVERSE_SUFFIX` when the file holds the
        inverse of a gain."""
        return orientation_name(self.transpose, self.flip_x, self.flip_y) + (INVERSE_SUFFIX if self.inverted else "")

    @property
    def switches(self) -> tuple[bool, bool, bool]:
        """``(transpose, flip_x, flip_y)``."""
        return (self.transpose, self.flip_x, self.flip_y)

    def describe(self) -> str:
        """One line for logs and pages, e.g. ``"flip Y (confidence 41.3)"`` or ``"undecided (best: flip Y,
        confidence 1.2)"``."""
        extra = ", super-resolution gain binned 2×" if self.gain_binning == 2 else ""
        extra += ", movies binned 2× to the gain" if self.frames_binning == 2 else ""
        if self.decided:
            return f"{self.name} (confidence {self.confidence:.1f}{extra})"
        return f"undecided (best: {self.name}, confidence {self.confidence:.1f}{extra})"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (for records on disk and step metrics)."""
        d = asdict(self)
        d["name"] = self.name
        return d


def _local_relative(a: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """``a / local_mean(a) − 1`` (float32) with the local mean over a ``size × size`` box of the valid pixels
    only (normalised convolution, reflecting borders: commutes with flips and transposes); 0 where invalid."""
    a32 = np.where(valid, a, 0.0).astype(np.float32)
    m32 = valid.astype(np.float32)
    num = scipy.ndimage.uniform_filter(a32, size, mode="reflect")
    den = scipy.ndimage.uniform_filter(m32, size, mode="reflect")
    with np.errstate(divide="ignore", invalid="ignore"):
        local = num / den
        out = np.where(valid & (den > 0.2) & (local > 0), a32 / local - 1.0, 0.0)
    return out.astype(np.float32)


def _block_sums(x: np.ndarray, nb: tuple[int, int]) -> np.ndarray:
    """Sums of ``x (ny, nx)`` over an ``nb[0] × nb[1]`` grid of equal blocks (the last rows/columns that do not
    fill a block are left out): ``(nb[0], nb[1])`` float64."""
    by, bx = x.shape[0] // nb[0], x.shape[1] // nb[1]
    return x[: by * nb[0], : bx * nb[1]].reshape(nb[0], by, nb[1], bx).sum(axis=(1, 3), dtype=np.float64)


def detect_orientation(
    raw_sum: np.ndarray,
    gain: np.ndarray,
    *,
    min_confidence: float = MIN_CONFIDENCE,
    n_blocks: int = 8,
) -> GainOrientation:
    """Detect the orientation of a stored gain reference from the raw (uncorrected) frames.

    Parameters
    ----------
    raw_sum
        ``(ny, nx)`` sum of the raw, *not* gain-corrected frames of many movies (counts; more movies = more
        confidence: the whole tilt series is a good choice). Hot pixels and X-ray hits may be present (they
        are masked as outliers); a region without counts is ignored.
    gain
        ``(gy, gx)`` the gain reference **as stored** in its file (before any flip/transpose), multiplicative
        (``corrected = raw × gain_oriented``). Zero, negative or non-finite pixels (dead pixels) are masked.
        Its shape must be ``(ny, nx)`` or ``(nx, ny)`` (then only the transposed orientations are possible,
        unless square), or twice that (super-resolution gain: binned 2×2, harmonic mean), or half of it
        (movies at twice the gain's size: the raw sum is summed 2×2).
    min_confidence
        Confidence (margin of the best orientation over the second best, in standard errors) needed to
        decide; default :data:`MIN_CONFIDENCE`.
    n_blocks
        The image is cut into ``n_blocks × n_blocks`` blocks to estimate the standard errors (fewer for
        images under 32 px per block).

    Returns
    -------
    GainOrientation
        The best orientation (``transpose, flip_x, flip_y``: pass them to
        :func:`tomoguide.compute.io.movies.read_gain` or :func:`apply_orientation`), its score, confidence,
        ``decided`` flag and every orientation's score; see the module docstring for the method.

    Raises
    ------
    ValueError
        When no orientation of the gain fits the frames' shape (the message gives both shapes), or when the
        arrays are not 2D.
    """
    raw = np.asarray(raw_sum, dtype=np.float64)
    g = np.asarray(gain, dtype=np.float64)
    if raw.ndim != 2 or g.ndim != 2:
        raise ValueError(f"raw_sum and gain must be 2D images, got shapes {raw.shape} and {g.shape}")
    ny, nx = raw.shape
    gy, gx = g.shape

    # ---- which orientations the shapes allow, at which super-resolution factor ----------------------
    gain_bin = frames_bin = 1
    if (gy, gx) in ((2 * ny, 2 * nx), (2 * nx, 2 * ny)):
        g = bin_gain_2x(g).astype(np.float64)
        gy, gx = g.shape
        gain_bin = 2
    elif (2 * gy, 2 * gx) in ((ny, nx), (nx, ny)):
        if ny % 2 or nx % 2:
            raise ValueError(f"frames {ny} x {nx} are twice the gain {gy} x {gx} but have an odd side")
        raw = raw.reshape(ny // 2, 2, nx // 2, 2).sum(axis=(1, 3))
        ny, nx = raw.shape
        frames_bin = 2
    candidates = [o for o in ORIENTATIONS if ((gx, gy) if o[0] else (gy, gx)) == (ny, nx)]
    if not candidates:
        raise ValueError(f"gain is {np.asarray(gain).shape[0]} x {np.asarray(gain).shape[1]} (ny x nx) but the "
                         f"frames are {raw_sum.shape[0]} x {raw_sum.shape[1]}: no flip or transpose fits, "
                         "not even at 2x super-resolution")

    # ---- high-passed patterns -------------------------------------------------------------------------
    g_valid = ~_bad_mask(g)
    r_valid = np.isfinite(raw) & (raw > 0)
    h_g = _local_relative(g, g_valid, _HP_SIZE_PX)
    h_r = _local_relative(raw, r_valid, _HP_SIZE_PX)
    # stationary outliers of the raw sum (hot pixels, X-ray hits, specimen edges): robust z-score
    sample = h_r[r_valid]
    if sample.size:
        med = float(np.median(sample))
        mad = float(np.median(np.abs(sample - med))) * 1.4826
        if mad > 0:
            r_valid &= np.abs(h_r - med) <= _OUTLIER_SIGMA * mad
    h_r = np.where(r_valid, h_r, 0.0).astype(np.float32)

    nby = max(1, min(n_blocks, ny // 32))
    nbx = max(1, min(n_blocks, nx // 32))
    rr_b = _block_sums(h_r * h_r, (nby, nbx))
    corr_block: list[np.ndarray] = []
    corr: list[float] = []
    n_used = 0
    for o in candidates:
        hg = apply_orientation(h_g, *o)
        mg = apply_orientation(g_valid, *o) & r_valid
        hgm = np.where(mg, hg, 0.0).astype(np.float32)
        hrm = np.where(mg, h_r, 0.0).astype(np.float32)
        rg_b = _block_sums(hrm * hgm, (nby, nbx))
        gg_b = _block_sums(hgm * hgm, (nby, nbx))
        rr_o = _block_sums(hrm * hrm, (nby, nbx)) if not mg.all() else rr_b
        with np.errstate(divide="ignore", invalid="ignore"):
            blk = np.where((gg_b > 0) & (rr_o > 0), rg_b / np.sqrt(gg_b * rr_o), 0.0)
            den = float(np.sqrt(gg_b.sum() * rr_o.sum()))
        corr.append(float(rg_b.sum() / den) if den > 0 else 0.0)
        corr_block.append(blk.ravel())
        n_used = max(n_used, int(np.count_nonzero(mg)))
    # hypotheses: each orientation of a multiplicative gain (raw ∝ 1/gain: anti-correlated), then of an inverse
    # gain (a sensitivity map, raw ∝ file: correlated), so that ties prefer the multiplicative identity
    hyps = [(o, False) for o in candidates] + [(o, True) for o in candidates]
    scores = [-c for c in corr] + corr
    per_block = [-b for b in corr_block] + corr_block

    order = np.argsort(-np.asarray(scores), kind="stable")  # ties: the earlier hypothesis (identity first)
    best = int(order[0])
    k = per_block[best].size

    def _stderr(x: np.ndarray) -> float:
        return float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("inf")

    score = scores[best]
    second = int(order[1])  # 8 or 16 hypotheses: there is always a runner-up
    margin = score - scores[second]
    se = _stderr(per_block[best] - per_block[second])
    se_score = _stderr(per_block[best])

    def _ratio(a: float, s: float) -> float:
        if not np.isfinite(s):
            return 0.0
        if s <= 0:
            return _CONFIDENCE_CAP if a > 0 else 0.0
        return float(min(max(a / s, 0.0), _CONFIDENCE_CAP))

    confidence = _ratio(margin, se) if k > 1 else 0.0
    significance = _ratio(score, se_score) if k > 1 else 0.0
    decided = bool(confidence >= min_confidence and significance >= min_confidence and score > 0)
    (t, fx, fy), inverted = hyps[best]

    def _label(h: tuple[tuple[bool, bool, bool], bool]) -> str:
        return orientation_name(*h[0]) + (INVERSE_SUFFIX if h[1] else "")

    return GainOrientation(
        transpose=t, flip_x=fx, flip_y=fy, score=float(score), confidence=float(confidence), decided=decided,
        scores={_label(h): float(sc) for h, sc in zip(hyps, scores)},
        second=_label(hyps[second]), inverted=bool(inverted),
        gain_binning=gain_bin, frames_binning=frames_bin, n_pixels=n_used,
    )
