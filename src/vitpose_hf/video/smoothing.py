"""Keypoint smoothing over time: the one-euro filter (online) and Savitzky-Golay (offline, centred).

One-euro (Casiez, Roussel and Vogel, CHI 2012) is a low-pass filter whose cut-off rises with speed: little lag on fast
moves, little jitter when still. Its parameters are in seconds (cut-offs in Hz) and it runs on the frames' times, so the
same values work at any frame rate:

- ``min_cutoff`` (Hz): the cut-off when still; lower means smoother and more lag;
- ``beta`` (s/px): how fast the cut-off rises with speed (px/s); higher means less lag on fast moves;
- ``d_cutoff`` (Hz): the cut-off of the speed estimate.

Savitzky-Golay fits a polynomial of ``order`` to a centred window of ``window`` frames and keeps its value at the
centre; it needs the whole track, so it is for recorded video. Samples it should not trust (missing, or scoring below
the threshold) are left out; gaps of at most ``max_gap`` frames are filled by linear interpolation first, longer gaps
split the track into pieces smoothed apart.

In both, a keypoint that scores below ``score_threshold`` does not move the smoothed track: one-euro holds its last
value and Savitzky-Golay interpolates over it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "SMOOTHERS",
    "OneEuroFilter",
    "OneEuroSmoother",
    "savgol_coefficients",
    "savgol_smooth",
    "smoothing_factor",
]

SMOOTHERS = ("one-euro", "savgol")


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")
    return float(value)


def smoothing_factor(elapsed: np.ndarray | float, cutoff: np.ndarray | float) -> np.ndarray:
    """Exponential smoothing weight of a low-pass filter with ``cutoff`` Hz after ``elapsed`` seconds:
    ``r / (r + 1)`` with ``r = 2 pi cutoff elapsed`` (the one-euro paper's ``1 / (1 + tau / T_e)``)."""
    r = 2.0 * math.pi * np.asarray(cutoff, dtype=np.float64) * np.asarray(elapsed, dtype=np.float64)
    return r / (r + 1.0)


class OneEuroFilter:
    """A one-euro filter over arrays of any fixed shape (each element filtered on its own).

    Call it with each new sample and its time in seconds; elements where ``mask`` is False are not updated (the
    output keeps their last filtered value, or the raw value before their first update).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = _positive("min_cutoff", min_cutoff)
        self.beta = _positive("beta", beta, allow_zero=True)
        self.d_cutoff = _positive("d_cutoff", d_cutoff)
        self.value: np.ndarray | None = None  # filtered values
        self.speed: np.ndarray | None = None  # filtered derivative
        self.time: np.ndarray | None = None  # time of each element's last update
        self.started: np.ndarray | None = None

    def __call__(self, x: Any, t: float, mask: Any = None) -> np.ndarray:
        """Filter one sample ``x`` taken at time ``t`` (seconds, increasing); returns the filtered array."""
        x = np.asarray(x, dtype=np.float64)
        if not math.isfinite(t):
            raise ValueError(f"the time must be finite, got {t!r}")
        update = np.ones(x.shape, dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
        update = update & np.isfinite(x)
        if self.value is None:
            self.value = np.where(update, x, np.nan)
            self.speed = np.zeros(x.shape)
            self.time = np.full(x.shape, float(t))
            self.started = update.copy()
            return x.copy()
        if x.shape != self.value.shape:
            raise ValueError(f"the filter runs on arrays of shape {self.value.shape}, got {x.shape}")
        first = update & ~self.started
        step = update & self.started
        elapsed = np.where(step, float(t) - self.time, 1.0)
        if np.any(elapsed[step] <= 0):
            raise ValueError(f"times must increase: got {t} after {float(self.time[step].max())}")
        raw_speed = np.where(step, (x - np.where(step, self.value, 0.0)) / elapsed, 0.0)
        speed = self.speed + smoothing_factor(elapsed, self.d_cutoff) * (raw_speed - self.speed)
        cutoff = self.min_cutoff + self.beta * np.abs(speed)
        value = self.value + smoothing_factor(elapsed, cutoff) * (x - np.where(step, self.value, 0.0))
        self.value = np.where(step, value, np.where(first, x, self.value))
        self.speed = np.where(step, speed, np.where(first, 0.0, self.speed))
        self.time = np.where(update, float(t), self.time)
        self.started = self.started | update
        return np.where(self.started, self.value, x)


class OneEuroSmoother:
    """One-euro filters for the keypoints of each track (online): ``smooth(track_id, xy, scores, t)``.

    Keypoints scoring below ``score_threshold`` do not update their filter (their output holds the last smoothed
    position). Call :meth:`forget` when a track ends.
    """

    def __init__(
        self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0, score_threshold: float = 0.3
    ) -> None:
        OneEuroFilter(min_cutoff, beta, d_cutoff)  # checks the parameters now
        self.options = {"min_cutoff": min_cutoff, "beta": beta, "d_cutoff": d_cutoff}
        self.score_threshold = float(score_threshold)
        self.filters: dict[int, OneEuroFilter] = {}

    def smooth(self, track_id: int, xy: Any, scores: Any, t: float) -> np.ndarray:
        """The smoothed ``(K, 2)`` keypoints of ``track_id`` at time ``t`` (seconds)."""
        xy = np.asarray(xy, dtype=np.float64)
        confident = np.asarray(scores, dtype=np.float64).reshape(-1) >= self.score_threshold
        filt = self.filters.get(track_id)
        if filt is None:
            filt = self.filters[track_id] = OneEuroFilter(**self.options)
        return filt(xy, t, mask=confident[:, None])

    def forget(self, track_id: int) -> None:
        """Drop the filter state of a finished track."""
        self.filters.pop(track_id, None)


def savgol_coefficients(window: int, order: int, position: int | None = None) -> np.ndarray:
    """Weights ``(window,)`` that give the least-squares polynomial of ``order``, fitted to ``window`` samples, at
    sample ``position`` (default: the centre). ``weights @ samples`` is the smoothed value."""
    if position is None:
        position = window // 2
    offsets = np.arange(window, dtype=np.float64) - position
    vandermonde = offsets[:, None] ** np.arange(order + 1)[None, :]
    # the fitted polynomial's value at offset 0 is its constant term: row 0 of the pseudo-inverse
    return np.linalg.pinv(vandermonde)[0]


def _fill_short_gaps(values: np.ndarray, valid: np.ndarray, max_gap: int) -> np.ndarray:
    """Linear interpolation over runs of invalid samples of length <= max_gap that have valid samples on both sides."""
    filled = valid.copy()
    idx = np.flatnonzero(valid)
    for a, b in zip(idx[:-1], idx[1:]):
        gap = b - a - 1
        if 0 < gap <= max_gap:
            w = np.arange(1, gap + 1) / (gap + 1)
            values[a + 1 : b] = values[a] + w * (values[b] - values[a])
            filled[a + 1 : b] = True
    return filled


def _smooth_run(run: np.ndarray, window: int, order: int) -> np.ndarray:
    n = len(run)
    w = min(window, n if n % 2 else n - 1)
    if w <= order:
        return run.copy()
    half = w // 2
    out = np.empty_like(run)
    centre = savgol_coefficients(w, order)
    out[half : n - half] = np.convolve(run, centre[::-1], mode="valid")
    for i in range(half):  # edges: the polynomial fitted to the first / last w samples, evaluated off-centre
        out[i] = savgol_coefficients(w, order, i) @ run[:w]
        out[n - 1 - i] = savgol_coefficients(w, order, w - 1 - i) @ run[n - w :]
    return out


def savgol_smooth(
    values: Any, valid: Any = None, window: int = 9, order: int = 2, max_gap: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Savitzky-Golay smoothing along axis 0 of ``values`` ``(T, ...)`` (frames first), each column on its own.

    Args:
        values: the samples, e.g. ``(T, K, 2)`` keypoints of one track.
        valid: boolean mask broadcastable to ``values``: which samples to trust (default: the finite ones).
        window: frames in the centred window (odd, > ``order``); shorter pieces use the longest odd window they hold.
        order: polynomial order.
        max_gap: longest run of untrusted samples filled by linear interpolation; longer runs split the track.

    Returns:
        ``(smoothed, covered)``: the smoothed values (untrusted samples outside filled gaps keep their input value)
        and the mask of samples that were smoothed or interpolated.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 3, got {window!r}")
    if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order < window:
        raise ValueError(f"order must be an integer in [0, window), got {order!r}")
    if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 0:
        raise ValueError(f"max_gap must be a non-negative integer, got {max_gap!r}")
    array = np.array(values, dtype=np.float64)
    if array.ndim == 0 or array.shape[0] == 0:
        return array, np.zeros(array.shape, dtype=bool)
    mask = np.isfinite(array)
    if valid is not None:
        mask &= np.broadcast_to(np.asarray(valid, dtype=bool), array.shape)
    shape = array.shape
    flat = array.reshape(shape[0], -1)
    flat_mask = mask.reshape(shape[0], -1)
    out = flat.copy()
    covered = np.zeros_like(flat_mask)
    for c in range(flat.shape[1]):
        column = flat[:, c].copy()
        usable = _fill_short_gaps(column, flat_mask[:, c], max_gap)
        covered[:, c] = usable
        edges = np.diff(np.concatenate([[0], usable.astype(np.int8), [0]]))
        for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            out[start:stop, c] = _smooth_run(column[start:stop], window, order)
    return out.reshape(shape), covered.reshape(shape)
