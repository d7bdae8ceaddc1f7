"""Frame-to-frame vehicle trackers (ROS-free, numpy / scipy only).

Two trackers share one interface, ``update(boxes, scores, stamp_s=None) ->
list[Track]``, returning the tracks to output for that frame:

* :class:`IoUTracker` — the paper's tracker (MM-DistillNet §3.4, after Gan et
  al.): a detection continues a track when their IoU >= ``iou_threshold``
  (0.5), pairs taken greedily by descending IoU; an unmatched detection starts
  a track only if its score > ``start_score`` (0.8); a track that gets no
  detection in a frame ends (its id is never reused).
* :class:`KalmanTracker` — constant-velocity Kalman filter on (cx, cy, w, h)
  with Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on
  1 - IoU against the predicted boxes, gated by IoU or centre distance;
  tentative tracks are confirmed after ``n_init`` hits and coast on their
  prediction for up to ``max_age`` missed frames. Before association, a
  detection overlapping a higher-scored one of the same frame at an IoU
  above ``suppress_iou`` is dropped (greedy NMS): a detector's second box on
  one vehicle, at another size, would otherwise start a false track beside
  it. A track's score is a running mean of its detections' scores
  (``score_smoothing``), and a confirmed track is output only while that
  score reaches ``min_output_score``: one noisy frame neither drops a steady
  vehicle nor starts publishing a flicker.

Boxes are float (N, 4) pixel ``x1, y1, x2, y2``. Ids are positive ints, unique
and increasing within one tracker instance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from mmdistill_common.boxes import cxcywh_to_xyxy, iou_matrix, nms, xyxy_to_cxcywh

__all__ = ['Track', 'IoUTrackerParams', 'KalmanTrackerParams', 'IoUTracker', 'KalmanTracker',
           'make_tracker', 'validate_detections']


@dataclass(frozen=True)
class Track:
    """A snapshot of one track as output for one frame.

    ``box`` is the associated detection's box (IoU tracker), the filtered
    box (Kalman tracker, updated) or the predicted box (Kalman, coasting).
    ``age``: frames since the track started (0 on its first frame).
    ``hits``: frames with an associated detection. ``time_since_update``:
    frames since the last associated detection (0 = detected this frame).
    ``velocity``: (vx, vy) of the box centre in pixels per frame (IoU tracker:
    last displacement, 0 on the first frame; Kalman: the filter's estimate,
    per ``frame_period_s`` when stamps are given). ``stamp_s``: the stamp passed to ``update``.
    """
    id: int
    box: np.ndarray
    score: float
    age: int
    hits: int
    time_since_update: int = 0
    velocity: Tuple[float, float] = (0.0, 0.0)
    confirmed: bool = True
    stamp_s: Optional[float] = None


def validate_detections(boxes, scores) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(boxes (N, 4) float64, scores (N,) float64)`` or raise ValueError."""
    try:
        b = np.asarray(boxes, dtype=np.float64)
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'boxes and scores must be numeric arrays: {exc}') from None
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f'boxes must have shape (N, 4), got {b.shape}')
    s = s.reshape(-1) if s.ndim <= 1 else s
    if s.ndim != 1 or len(s) != len(b):
        raise ValueError(f'shape mismatch: {len(b)} boxes but scores of shape {np.shape(scores)}')
    if not np.all(np.isfinite(b)):
        raise ValueError('boxes contain NaN or inf')
    if not np.all(np.isfinite(s)):
        raise ValueError('scores contain NaN or inf')
    if np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]):
        raise ValueError('boxes must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1')
    return b, s


def _check_stamp(stamp_s, last: Optional[float]) -> Optional[float]:
    if stamp_s is None:
        return None
    t = float(stamp_s)
    if not math.isfinite(t):
        raise ValueError(f'stamp_s must be finite, got {stamp_s}')
    if last is not None and t < last:
        raise ValueError(f'stamp_s went backwards: {t} < previous {last}')
    return t


# ----------------------------------------------------------------------------- IoU tracker

@dataclass
class IoUTrackerParams:
    """Parameters of :class:`IoUTracker` (defaults: the paper's values)."""
    iou_threshold: float = 0.5   # a detection continues a track at IoU >= this
    start_score: float = 0.8     # an unmatched detection starts a track only if score > this

    def __post_init__(self):
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f'iou_threshold must be in (0, 1], got {self.iou_threshold}')
        if not 0.0 <= self.start_score <= 1.0:
            raise ValueError(f'start_score must be in [0, 1], got {self.start_score}')


@dataclass
class _IoUState:
    id: int
    box: np.ndarray
    score: float
    age: int = 0
    hits: int = 1
    velocity: Tuple[float, float] = (0.0, 0.0)


def _greedy_pairs(iou: np.ndarray, threshold: float) -> List[Tuple[int, int]]:
    """(row, col) pairs by descending IoU, each row/col at most once, IoU >= threshold.

    Ties are broken by row then column index (stable order).
    """
    if iou.size == 0:
        return []
    rows, cols = np.nonzero(iou >= threshold)
    order = np.lexsort((cols, rows, -iou[rows, cols]))
    used_r, used_c, pairs = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return pairs


class IoUTracker:
    """The paper's IoU tracker. Outputs every live track each frame (all were detected in it)."""

    def __init__(self, params: Optional[IoUTrackerParams] = None):
        self.params = params or IoUTrackerParams()
        self.reset()

    def reset(self) -> None:
        self._tracks: List[_IoUState] = []
        self._next_id = 1
        self._last_stamp: Optional[float] = None

    def update(self, boxes, scores, stamp_s: Optional[float] = None) -> List[Track]:
        b, s = validate_detections(boxes, scores)
        stamp = _check_stamp(stamp_s, self._last_stamp)
        if stamp is not None:
            self._last_stamp = stamp
        prev = self._tracks
        pairs = _greedy_pairs(iou_matrix(np.array([t.box for t in prev]).reshape(-1, 4), b),
                              self.params.iou_threshold)
        alive: List[_IoUState] = []
        used = set()
        for ti, di in pairs:
            t = prev[ti]
            c_old, c_new = xyxy_to_cxcywh(t.box[None])[0], xyxy_to_cxcywh(b[di][None])[0]
            t.velocity = (float(c_new[0] - c_old[0]), float(c_new[1] - c_old[1]))
            t.box, t.score = b[di].copy(), float(s[di])
            t.age += 1
            t.hits += 1
            alive.append(t)
            used.add(di)
        # unmatched tracks end here; unmatched confident detections start tracks
        for di in range(len(b)):
            if di not in used and s[di] > self.params.start_score:
                alive.append(_IoUState(id=self._next_id, box=b[di].copy(), score=float(s[di])))
                self._next_id += 1
        self._tracks = alive
        return [Track(id=t.id, box=t.box.copy(), score=t.score, age=t.age, hits=t.hits,
                      velocity=t.velocity, stamp_s=stamp) for t in sorted(alive, key=lambda t: t.id)]


# ----------------------------------------------------------------------------- Kalman tracker

@dataclass
class KalmanTrackerParams:
    """Parameters of :class:`KalmanTracker`.

    Association cost is 1 - IoU(predicted box, detection); a pair is allowed
    when IoU >= ``min_iou`` or the centre distance is at most
    ``max_centre_distance`` times the predicted box's diagonal (0 disables
    the centre gate). Noise standard deviations are relative to the box size
    (DeepSORT's parametrisation), per frame of ``frame_period_s``.
    """
    min_iou: float = 0.3
    max_centre_distance: float = 0.5
    n_init: int = 2                 # hits needed to confirm (1 = confirm at once)
    max_age: int = 3                # missed frames a confirmed track coasts before it ends
    min_start_score: float = 0.5    # an unmatched detection starts a track only if score >= this
    min_update_score: float = 0.0   # detections below this are ignored entirely
    suppress_iou: float = 1.0       # drop a detection at IoU > this with a higher-scored one (1 = off)
    output_coasting: bool = False   # also output confirmed tracks that coast this frame
    # a track's score is a running mean of its detections' scores: new = w * detection + (1 - w) * old
    # with w = score_smoothing (1 = the last detection's score)
    score_smoothing: float = 1.0
    min_output_score: float = 0.0   # a confirmed track is output only while its score is >= this
    frame_period_s: float = 0.1     # nominal frame period; dt = stamp difference / this when stamps are given
    std_position: float = 1.0 / 20.0
    std_velocity: float = 1.0 / 160.0
    init_velocity_std: float = 40.0  # initial velocity std in units of std_velocity * size (0.25 size/frame)

    def __post_init__(self):
        def check(ok: bool, msg: str):
            if not ok:
                raise ValueError(msg)
        check(0.0 <= self.min_iou <= 1.0, f'min_iou must be in [0, 1], got {self.min_iou}')
        check(self.max_centre_distance >= 0.0, f'max_centre_distance must be >= 0, got {self.max_centre_distance}')
        check(self.min_iou > 0.0 or self.max_centre_distance > 0.0,
              'min_iou = 0 with max_centre_distance = 0 would pair any track with any detection')
        check(isinstance(self.n_init, int) and self.n_init >= 1, f'n_init must be an int >= 1, got {self.n_init}')
        check(isinstance(self.max_age, int) and self.max_age >= 0, f'max_age must be an int >= 0, got {self.max_age}')
        check(0.0 <= self.min_start_score <= 1.0, f'min_start_score must be in [0, 1], got {self.min_start_score}')
        check(0.0 <= self.min_update_score <= 1.0, f'min_update_score must be in [0, 1], got {self.min_update_score}')
        check(0.0 < self.suppress_iou <= 1.0, f'suppress_iou must be in (0, 1], got {self.suppress_iou}')
        check(0.0 < self.score_smoothing <= 1.0, f'score_smoothing must be in (0, 1], got {self.score_smoothing}')
        check(0.0 <= self.min_output_score <= 1.0, f'min_output_score must be in [0, 1], got {self.min_output_score}')
        check(self.frame_period_s > 0.0, f'frame_period_s must be > 0, got {self.frame_period_s}')
        check(self.std_position > 0.0 and self.std_velocity > 0.0 and self.init_velocity_std > 0.0,
              'noise standard deviations must be > 0')


@dataclass
class _KalmanState:
    key: int
    x: np.ndarray          # (8,) cx, cy, w, h, vcx, vcy, vw, vh (per frame)
    P: np.ndarray          # (8, 8)
    score: float
    id: int = 0            # 0 until confirmed
    age: int = 0
    hits: int = 1
    time_since_update: int = 0
    confirmed: bool = False

    def box(self) -> np.ndarray:
        c = self.x[:4].copy()
        c[2:] = np.maximum(c[2:], 1e-6)
        return cxcywh_to_xyxy(c[None])[0]


class KalmanTracker:
    """Constant-velocity Kalman tracker with Hungarian assignment and coasting."""

    _H = np.hstack([np.eye(4), np.zeros((4, 4))])

    def __init__(self, params: Optional[KalmanTrackerParams] = None):
        self.params = params or KalmanTrackerParams()
        self.reset()

    def reset(self) -> None:
        self._tracks: List[_KalmanState] = []
        self._next_id = 1
        self._next_key = 1
        self._last_stamp: Optional[float] = None

    # -- filter ------------------------------------------------------------------------
    def _scale(self, x: np.ndarray) -> float:
        return float(max(x[2], x[3], 1.0))

    def _predict(self, t: _KalmanState, dt: float) -> None:
        F = np.eye(8)
        F[:4, 4:] = dt * np.eye(4)
        s = self._scale(t.x)
        q = np.r_[np.full(4, (self.params.std_position * s * dt) ** 2),
                  np.full(4, (self.params.std_velocity * s * dt) ** 2)]
        t.x = F @ t.x
        t.x[2:4] = np.maximum(t.x[2:4], 1e-3)
        t.P = F @ t.P @ F.T + np.diag(q)

    def _correct(self, t: _KalmanState, z: np.ndarray) -> None:
        H = self._H
        r = (self.params.std_position * self._scale(t.x)) ** 2
        S = H @ t.P @ H.T + r * np.eye(4)
        K = np.linalg.solve(S, H @ t.P).T
        t.x = t.x + K @ (z - H @ t.x)
        t.P = (np.eye(8) - K @ H) @ t.P
        t.P = (t.P + t.P.T) / 2

    def _new(self, box: np.ndarray, score: float) -> _KalmanState:
        z = xyxy_to_cxcywh(box[None])[0]
        s = float(max(z[2], z[3], 1.0))
        p = self.params
        P = np.diag(np.r_[np.full(4, (2 * p.std_position * s) ** 2),
                          np.full(4, (p.init_velocity_std * p.std_velocity * s) ** 2)])
        t = _KalmanState(key=self._next_key, x=np.r_[z, np.zeros(4)], P=P, score=score)
        self._next_key += 1
        return t

    def _confirm(self, t: _KalmanState) -> None:
        if not t.confirmed and t.hits >= self.params.n_init:
            t.confirmed = True
            t.id = self._next_id
            self._next_id += 1

    # -- association -------------------------------------------------------------------
    def _associate(self, pred: np.ndarray, dets: np.ndarray) -> List[Tuple[int, int]]:
        if len(pred) == 0 or len(dets) == 0:
            return []
        iou = iou_matrix(pred, dets)
        allowed = iou >= self.params.min_iou if self.params.min_iou > 0 else np.zeros_like(iou, dtype=bool)
        if self.params.max_centre_distance > 0:
            cp, cd = xyxy_to_cxcywh(pred), xyxy_to_cxcywh(dets)
            dist = np.hypot(cp[:, None, 0] - cd[None, :, 0], cp[:, None, 1] - cd[None, :, 1])
            diag = np.maximum(np.hypot(cp[:, 2], cp[:, 3]), 1e-6)[:, None]
            allowed |= dist <= self.params.max_centre_distance * diag
            cost = 1.0 - iou + 1e-3 * dist / diag   # centre distance breaks IoU ties (e.g. all 0)
        else:
            cost = 1.0 - iou
        big = 1e6
        cost = np.where(allowed, cost, big)
        rows, cols = linear_sum_assignment(cost)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]

    # -- public ------------------------------------------------------------------------
    def update(self, boxes, scores, stamp_s: Optional[float] = None) -> List[Track]:
        b, s = validate_detections(boxes, scores)
        stamp = _check_stamp(stamp_s, self._last_stamp)
        dt = 1.0
        if stamp is not None:
            if self._last_stamp is not None:
                dt = (stamp - self._last_stamp) / self.params.frame_period_s
            self._last_stamp = stamp
        keep = s >= self.params.min_update_score
        b, s = b[keep], s[keep]
        if self.params.suppress_iou < 1.0 and len(b) > 1:
            keep = np.sort(nms(b, s, self.params.suppress_iou))   # detection order kept
            b, s = b[keep], s[keep]

        for t in self._tracks:
            self._predict(t, dt)
        # confirmed tracks first, so a tentative track cannot steal a confirmed one's detection
        order = sorted(range(len(self._tracks)), key=lambda i: (not self._tracks[i].confirmed, i))
        tracks = [self._tracks[i] for i in order]
        matched_t, matched_d = set(), set()
        for group in (True, False):
            idx = [i for i, t in enumerate(tracks) if t.confirmed == group]
            free = [d for d in range(len(b)) if d not in matched_d]
            pred = np.array([tracks[i].box() for i in idx]).reshape(-1, 4)
            for r, c in self._associate(pred, b[free]):
                ti, di = idx[r], free[c]
                t = tracks[ti]
                self._correct(t, xyxy_to_cxcywh(b[di][None])[0])
                w = self.params.score_smoothing
                t.score = w * float(s[di]) + (1.0 - w) * t.score
                t.hits += 1
                t.time_since_update = 0
                self._confirm(t)
                matched_t.add(ti)
                matched_d.add(di)

        survivors: List[_KalmanState] = []
        for ti, t in enumerate(tracks):
            t.age += 1
            if ti not in matched_t:
                t.time_since_update += 1
                if not t.confirmed or t.time_since_update > self.params.max_age:
                    continue  # tentative tracks die on their first miss; confirmed ones after max_age
            survivors.append(t)
        for di in range(len(b)):
            if di not in matched_d and s[di] >= self.params.min_start_score:
                t = self._new(b[di], float(s[di]))
                self._confirm(t)
                survivors.append(t)
        self._tracks = survivors

        out = []
        for t in survivors:
            if not t.confirmed:
                continue
            if t.time_since_update > 0 and not self.params.output_coasting:
                continue
            if t.score < self.params.min_output_score:
                continue
            out.append(Track(id=t.id, box=t.box(), score=t.score, age=t.age, hits=t.hits,
                             time_since_update=t.time_since_update,
                             velocity=(float(t.x[4]), float(t.x[5])), confirmed=True, stamp_s=stamp))
        out.sort(key=lambda tr: tr.id)
        return out


def make_tracker(kind: str, **params):
    """``make_tracker('iou' | 'kalman', **params)``: the tracker a node parameter selects."""
    if kind == 'iou':
        return IoUTracker(IoUTrackerParams(**params))
    if kind == 'kalman':
        return KalmanTracker(KalmanTrackerParams(**params))
    raise ValueError(f"tracker kind must be 'iou' or 'kalman', got {kind!r}")
