"""ROS-free student runtime: audio chunks in, detections on a fixed time grid out.

``student_node`` is a thin wrapper around :class:`StudentRuntime`; an offline replay of a bag
uses the same class, so online and offline outputs agree.

Output grid
-----------
Detections are produced for the grid stamps ``origin + k * period`` (``period = 1 / rate_hz``;
``origin`` defaults to 0, i.e. multiples of the period since the epoch or since the start of
simulated time, which is where the simulator's camera frames fall). A grid stamp is processed
as soon as the buffered audio covers its window (centred: up to ``stamp + window / 2``; causal:
up to ``stamp``), once, in increasing order. Each result is stamped with the time its window
actually refers to (centre for centred windows, end for causal ones): the streaming front end
snaps windows to its STFT hop grid, so this is within one hop (5.8 ms at 44.1 kHz) of the grid
stamp, which the result carries as ``grid_stamp_ns``.

Robustness
----------
* Gaps reset continuity (no window spans a gap); grid stamps whose windows fall in the gap are
  skipped and counted in ``stats['skipped']``.
* Overlapping and duplicated chunks are trimmed / dropped by the ring buffer; chunks stamped
  before the previous one are dropped (``OUT_OF_ORDER``). When stamps stay behind for more
  than ``resync_after_s`` of audio (a restarted source or a rewound bag), the runtime resets and
  follows the new timeline.
* Bursts: everything still in the buffer is processed in one batch; with
  ``max_windows_per_step`` only the newest pending grid stamps are computed and the older ones
  skipped (a live node should not fall further and further behind).
* Memory is bounded: the ring buffer holds ``capacity_s`` of audio and the STFT-frame cache
  only frames of windows that can still be requested.
* A changed stream description (:meth:`set_stream`) resets the runtime; one that does not fit
  the checkpoint blocks :meth:`push` (``InputError``) until a matching one arrives.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from mmdistill_common.errors import ConfigError, InputError

from .checkpoint import check_stream
from .frontend import PushResult, PushStatus, StreamingFrontend
from .model import StudentDetector

__all__ = ['StudentRuntime']

Result = Tuple[int, dict]


class StudentRuntime:
    """Streaming inference of one student checkpoint.

    ``model``/``meta``: as returned by :func:`~mmdistill_student.checkpoint.load_checkpoint`.
    ``rate_hz``: output grid rate. ``mode``: window mode; ``None`` uses the checkpoint's, a
    different one raises :class:`ConfigError` (the model was trained on the other kind).
    ``score_threshold``: ``None`` uses the checkpoint's.
    """

    def __init__(self, model: StudentDetector, meta: dict, rate_hz: float = 10.0, mode: Optional[str] = None,
                 score_threshold: Optional[float] = None, grid_origin_ns: int = 0, capacity_s: float = 3.0,
                 max_windows_per_step: Optional[int] = None, resync_after_s: float = 1.0):
        if not (isinstance(rate_hz, (int, float)) and math.isfinite(rate_hz) and 0 < rate_hz <= 1000):
            raise ConfigError(f'rate_hz must be in (0, 1000], got {rate_hz!r}')
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f'score_threshold must be in [0, 1], got {score_threshold!r}')
        if max_windows_per_step is not None and max_windows_per_step < 1:
            raise ConfigError(f'max_windows_per_step must be >= 1, got {max_windows_per_step!r}')
        fe = model.frontend_config
        check_stream(meta, fe.channels, fe.sample_rate, mode)      # mode differs -> ConfigError
        self.model = model.eval()
        self.meta = meta
        self.cfg = fe
        self.mode = fe.mode
        self.period_ns = int(round(1e9 / rate_hz))
        self.grid_origin_ns = int(grid_origin_ns)
        self.score_threshold = score_threshold
        self.max_windows_per_step = max_windows_per_step
        self.resync_after_s = float(resync_after_s)
        self.class_names = tuple(model.config.class_names)
        # the model's own Frontend: same normalisation statistics as in training
        self.frontend = StreamingFrontend(fe, capacity_s=capacity_s, frontend=model.frontend)
        model.frontend.warm_up()       # compiled passes: seconds on first use, spent before the audio
        self.stream: Optional[Tuple[int, int]] = (fe.channels, fe.sample_rate)
        self.stream_error: Optional[str] = None
        self.stats: Dict[str, int] = {'windows': 0, 'skipped': 0, 'resets': 0, 'resyncs': 0,
                                      'dropped_chunks': 0}
        self._next_grid: Optional[int] = None
        self._behind_samples = 0
        #: front-end features of the newest computed window (the acoustic-image heat map)
        self.last_features: Optional[np.ndarray] = None

    # ------------------------------------------------------------------------------ stream
    def set_stream(self, channels: int, sample_rate: int) -> bool:
        """Declare the stream's channels and rate (from ``AudioInfo``). Returns True when it
        changed (the runtime was reset). A stream the checkpoint does not fit raises
        :class:`ConfigError`, and :meth:`push` refuses audio until a matching one is set."""
        new = (int(channels), int(sample_rate))
        try:
            check_stream(self.meta, *new)
        except ConfigError as exc:
            self.stream, self.stream_error = new, str(exc)
            self.reset()
            raise
        changed = new != self.stream or self.stream_error is not None
        self.stream, self.stream_error = new, None
        if changed:
            self.reset()
        return changed

    def reset(self) -> None:
        """Forget buffered audio and the grid position (next output: first full window)."""
        self.frontend.reset()
        self._next_grid = None
        self._behind_samples = 0
        self.stats['resets'] += 1

    # ------------------------------------------------------------------------------- input
    def push(self, samples, stamp_ns: int) -> PushResult:
        """Add a chunk: ``(n, C)`` int16 or float in [-1, 1) (or S16LE bytes), first sample
        captured at ``stamp_ns``. Malformed chunks (wrong channel count, odd length, NaN) and
        audio of a mismatching stream raise :class:`InputError`; out-of-order and duplicated
        chunks come back as a :class:`PushResult` with nothing accepted."""
        if self.stream_error is not None:
            self.stats['dropped_chunks'] += 1
            raise InputError(f'audio dropped: {self.stream_error}')
        stamp_ns = int(stamp_ns)
        try:
            res = self.frontend.push(samples, stamp_ns)
        except InputError:
            self.stats['dropped_chunks'] += 1
            raise
        if res.status is PushStatus.OUT_OF_ORDER:
            self._behind_samples += res.dropped
            if self._behind_samples > self.resync_after_s * self.cfg.sample_rate:
                self.reset()
                self.stats['resyncs'] += 1
                res = self.frontend.push(samples, stamp_ns)
                return PushResult(res.status, res.accepted, res.dropped, res.offset_ns,
                                  f'stamps stayed behind for more than {self.resync_after_s:g} s: '
                                  'resynchronised on the new timeline')
            self.stats['dropped_chunks'] += 1
        else:
            self._behind_samples = 0
            if res.accepted == 0:
                self.stats['dropped_chunks'] += 1
        if self._next_grid is None and self.frontend.buffer.started:
            # the grid starts at the first window this stream can fill, so that stamps missed
            # in a burst larger than the buffer are counted as skipped
            buf, n = self.frontend.buffer, self.cfg.window_samples
            lead = n if self.mode == 'causal' else n // 2
            self._next_grid = self._grid_ceil(buf.index_to_stamp(lead + self.cfg.hop))
        return res

    # ------------------------------------------------------------------------------ output
    def _grid_ceil(self, stamp_ns: int) -> int:
        k = -(-(stamp_ns - self.grid_origin_ns) // self.period_ns)
        return self.grid_origin_ns + k * self.period_ns

    def _grid_floor(self, stamp_ns: int) -> int:
        k = (stamp_ns - self.grid_origin_ns) // self.period_ns
        return self.grid_origin_ns + k * self.period_ns

    def _coverable(self) -> Optional[Tuple[int, int]]:
        """First and last grid stamps whose windows lie inside the buffered segment."""
        buf, cfg = self.frontend.buffer, self.cfg
        if not buf.started:
            return None
        n = cfg.window_samples
        lead = n if self.mode == 'causal' else n // 2           # samples before the stamp
        # One hop of margin on each side for the front end's snapping of windows to its hop
        # grid: the window is then always the nearest one on that grid, never the one snapped
        # down for lack of samples, so results do not depend on how the audio was chunked.
        first = buf.index_to_stamp(buf.start_index + lead + cfg.hop)
        last = buf.index_to_stamp(buf.end_index - (n - lead) - cfg.hop)
        lo, hi = self._grid_ceil(first), self._grid_floor(last)
        return (lo, hi) if lo <= hi else None

    def pending(self) -> List[int]:
        """Grid stamps that the next :meth:`step` would compute."""
        span = self._coverable()
        if span is None:
            return []
        lo, hi = span
        if self._next_grid is not None:
            if self._next_grid > hi:
                return []
            if self._next_grid < lo:
                self.stats['skipped'] += (lo - self._next_grid) // self.period_ns
                self._next_grid = lo
            lo = self._next_grid
        stamps = list(range(lo, hi + 1, self.period_ns))
        if self.max_windows_per_step is not None and len(stamps) > self.max_windows_per_step:
            self.stats['skipped'] += len(stamps) - self.max_windows_per_step
            stamps = stamps[-self.max_windows_per_step:]
        return stamps

    @torch.no_grad()
    def step(self, now_ns: Optional[int] = None) -> List[Result]:
        """Compute every due grid stamp (at most ``now_ns`` when given) -> list of
        ``(window_stamp_ns, detections)`` in time order; ``detections`` holds ``boxes``
        float32 (N, 4) xyxy pixels, ``scores`` (N,), ``labels`` int64 (N,), ``class_ids``
        (class names), ``grid_stamp_ns``."""
        stamps = self.pending()
        if now_ns is not None:
            stamps = [s for s in stamps if s <= int(now_ns)]
        feats, done = [], []
        for g in stamps:
            out = self.frontend.compute(g, self.mode)
            self._next_grid = g + self.period_ns
            if out is None:
                self.stats['skipped'] += 1
                continue
            feats.append(out[0])
            done.append((g, out[1]))
        if not feats:
            return []
        self.last_features = feats[-1]
        x = self.model.select(torch.from_numpy(np.stack(feats)))
        dets = self.model.predict_features(x, score_threshold=self.score_threshold)
        self.stats['windows'] += len(dets)
        results = []
        for (grid, stamp), d in zip(done, dets):
            d['class_ids'] = [self.class_names[int(i)] for i in d['labels']]
            d['grid_stamp_ns'] = grid
            results.append((stamp, d))
        return results

    def process(self, samples, stamp_ns: int) -> Tuple[PushResult, List[Result]]:
        """``push`` then ``step``: what a node or an offline replay does for each chunk."""
        res = self.push(samples, stamp_ns)
        return res, self.step()
