import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mmdistill_tracking.tracker import (
    IoUTracker, IoUTrackerParams, KalmanTracker, KalmanTrackerParams, Track, make_tracker)

from mmdistill_common.boxes import iou_matrix


def box(cx, cy, w=60.0, h=40.0):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def ids(tracks):
    return [t.id for t in tracks]


def trackers():
    return [IoUTracker(), KalmanTracker()]


# ----------------------------------------------------------------------------- both trackers

@pytest.mark.parametrize('tracker', trackers(), ids=['iou', 'kalman'])
def test_constant_velocity_target_keeps_one_id(tracker):
    seen = set()
    for k in range(40):
        out = tracker.update([box(100 + 6 * k, 200 + 2 * k)], [0.9], stamp_s=0.1 * k)
        if out:
            assert len(out) == 1
            assert isinstance(out[0], Track)
            seen.add(out[0].id)
            np.testing.assert_allclose(out[0].box, box(100 + 6 * k, 200 + 2 * k), atol=3.0)
    assert seen == {1}
    assert out[0].hits == 40 and out[0].age == 39 and out[0].score == pytest.approx(0.9)


@pytest.mark.parametrize('make', [IoUTracker, KalmanTracker], ids=['iou', 'kalman'])
def test_bad_input_raises_clear_errors(make):
    t = make()
    with pytest.raises(ValueError, match='NaN'):
        t.update([[0, 0, np.nan, 10]], [0.9])
    with pytest.raises(ValueError, match='NaN'):
        t.update([[0, 0, 10, 10]], [np.nan])
    with pytest.raises(ValueError, match='mismatch'):
        t.update([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9])
    with pytest.raises(ValueError, match=r'\(N, 4\)'):
        t.update([[0, 0, 10]], [0.9])
    with pytest.raises(ValueError, match='x2 >= x1'):
        t.update([[10, 0, 0, 10]], [0.9])
    with pytest.raises(ValueError, match='numeric'):
        t.update([['a', 'b', 'c', 'd']], [0.9])
    t.update([[0, 0, 10, 10]], [0.9], stamp_s=5.0)
    with pytest.raises(ValueError, match='backwards'):
        t.update([[0, 0, 10, 10]], [0.9], stamp_s=4.0)
    # state is untouched by rejected input; empty input is fine
    assert t.update(np.zeros((0, 4)), [], stamp_s=5.1) == []


def test_params_are_validated():
    with pytest.raises(ValueError, match='iou_threshold'):
        IoUTrackerParams(iou_threshold=0.0)
    with pytest.raises(ValueError, match='start_score'):
        IoUTrackerParams(start_score=1.5)
    with pytest.raises(ValueError, match='n_init'):
        KalmanTrackerParams(n_init=0)
    with pytest.raises(ValueError, match='max_age'):
        KalmanTrackerParams(max_age=-1)
    with pytest.raises(ValueError, match='frame_period_s'):
        KalmanTrackerParams(frame_period_s=0.0)
    with pytest.raises(ValueError, match='score_smoothing'):
        KalmanTrackerParams(score_smoothing=0.0)
    with pytest.raises(ValueError, match='min_output_score'):
        KalmanTrackerParams(min_output_score=1.5)
    with pytest.raises(ValueError, match='suppress_iou'):
        KalmanTrackerParams(suppress_iou=0.0)
    with pytest.raises(ValueError, match='any track'):
        KalmanTrackerParams(min_iou=0.0, max_centre_distance=0.0)
    with pytest.raises(ValueError, match="'iou' or 'kalman'"):
        make_tracker('sort')
    assert isinstance(make_tracker('iou', start_score=0.7), IoUTracker)
    assert make_tracker('kalman', max_age=5).params.max_age == 5


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(['iou', 'kalman']))
def test_ids_unique_and_increasing(seed, kind):
    rng = np.random.default_rng(seed)
    tracker = make_tracker(kind)
    ended, live_prev, max_seen = set(), set(), 0
    n_targets = 4
    pos = rng.uniform(50, 500, (n_targets, 2))
    vel = rng.normal(0, 8, (n_targets, 2))
    for k in range(25):
        pos += vel
        keep = rng.uniform(size=n_targets) > 0.25                  # random misses
        dets = [box(*p) for p in pos[keep]] + [box(*rng.uniform(0, 600, 2)) for _ in range(rng.integers(0, 2))]
        scores = rng.uniform(0.3, 1.0, len(dets))
        out = tracker.update(np.array(dets).reshape(-1, 4) + rng.normal(0, 2, (len(dets), 4)), scores)
        now = ids(out)
        assert len(now) == len(set(now)), f'duplicate ids in one frame: {now}'
        assert all(isinstance(i, int) and i >= 1 for i in now)
        new = [i for i in now if i > max_seen]
        assert all(i not in ended for i in now), 'an ended id came back'
        assert sorted(new) == list(range(max_seen + 1, max_seen + 1 + len(new))), 'ids not consecutive/increasing'
        max_seen = max([max_seen] + now)
        if kind == 'iou':
            ended |= live_prev - set(now)      # IoU tracks end as soon as they are not output
        live_prev = set(now)


# ----------------------------------------------------------------------------- IoU tracker rules

def test_iou_tracker_start_rule_is_strictly_above_threshold():
    t = IoUTracker()
    assert t.update([box(100, 100)], [0.8]) == []            # 0.8 is not > 0.8
    out = t.update([box(100, 100)], [0.81])
    assert ids(out) == [1] and out[0].hits == 1 and out[0].age == 0
    out = t.update([box(102, 100)], [0.2])                     # low score still continues a track
    assert ids(out) == [1] and out[0].score == pytest.approx(0.2) and out[0].hits == 2
    out = t.update([box(104, 100), box(400, 300)], [0.3, 0.5])  # unmatched low-score detection: no track
    assert ids(out) == [1]


def test_iou_tracker_association_threshold_and_end_when_unmatched():
    t = IoUTracker()
    assert ids(t.update([[0, 0, 100, 100]], [0.9])) == [1]
    assert ids(t.update([[0, 0, 100, 50]], [0.5])) == [1]      # IoU exactly 0.5: continues
    out = t.update([[0, 0, 100, 22]], [0.5])                  # IoU 0.44: track 1 ends, score too low to start
    assert out == []
    assert ids(t.update([[0, 0, 100, 22]], [0.9])) == [2]      # a fresh track, never id 1 again
    assert t.update(np.zeros((0, 4)), []) == []              # one empty frame ends it
    assert ids(t.update([[0, 0, 100, 22]], [0.9])) == [3]


def test_iou_tracker_greedy_by_iou():
    t = IoUTracker()
    assert ids(t.update([box(100, 100), box(130, 100)], [0.9, 0.9])) == [1, 2]
    # one detection overlapping both tracks goes to the one with higher IoU (track 2); track 1 ends
    d = box(125, 100)
    out = t.update([d], [0.5])
    assert ids(out) == [2]
    np.testing.assert_allclose(out[0].box, d)
    # two detections, greedy pairs by descending IoU
    t = IoUTracker()
    t.update([box(100, 100), box(200, 100)], [0.9, 0.9])
    out = t.update([box(205, 100), box(98, 100)], [0.6, 0.6])
    assert {o.id: o.box[0] for o in out} == {1: box(98, 100)[0], 2: box(205, 100)[0]}


# ----------------------------------------------------------------------------- Kalman tracker

def test_kalman_crossing_targets_keep_ids():
    rng = np.random.default_rng(0)
    t = KalmanTracker()
    a_ids, b_ids = [], []
    for k in range(45):
        a = box(40 + 12 * k, 100, 70, 50)
        b = box(580 - 12 * k, 106, 70, 50)
        dets = np.array([b, a]) + rng.normal(0, 1.0, (2, 4))
        out = t.update(dets, [0.9, 0.85], stamp_s=0.1 * k)
        if len(out) < 2:
            assert k < KalmanTrackerParams().n_init
            continue
        tb = np.array([o.box for o in out])
        ia = int(np.argmax(iou_matrix([a], tb)[0]))
        ib = int(np.argmax(iou_matrix([b], tb)[0]))
        assert ia != ib
        a_ids.append(out[ia].id)
        b_ids.append(out[ib].id)
    # they really crossed, with overlapping boxes mid-way
    assert iou_matrix([box(40 + 12 * 22, 100, 70, 50)], [box(580 - 12 * 22, 106, 70, 50)])[0, 0] > 0.5
    assert len(set(a_ids)) == 1 and len(set(b_ids)) == 1 and a_ids[0] != b_ids[0]
    # the velocity estimate has converged to the truth (pixels per frame)
    va = [o.velocity for o in out if o.id == a_ids[0]][0]
    assert va[0] == pytest.approx(12, abs=1.5)


def test_fast_target_kalman_holds_iou_tracker_fragments():
    # 25 px per frame on a 70 px wide box: consecutive IoU 45/95 < 0.5
    kal, iou = KalmanTracker(), IoUTracker()
    kal_ids, iou_ids = set(), set()
    for k in range(20):
        d, s = [box(50 + 25 * k, 200, 70, 50)], [0.9]
        kal_ids |= set(ids(kal.update(d, s)))
        iou_ids |= set(ids(iou.update(d, s)))
    assert kal_ids == {1}
    assert len(iou_ids) == 20     # the paper's tracker starts a new track every frame


@pytest.mark.parametrize('gap', [1, 2])
def test_missed_detections_kalman_coasts_iou_tracker_ends(gap):
    kal, iou = KalmanTracker(), IoUTracker()
    kal_ids, iou_ids = [], []
    for k in range(20):
        missing = 8 <= k < 8 + gap
        d = np.zeros((0, 4)) if missing else np.array([box(100 + 8 * k, 200)])
        s = [] if missing else [0.9]
        ko, io = kal.update(d, s), iou.update(d, s)
        if missing:
            assert ko == [] and io == []
        kal_ids += ids(ko)
        iou_ids += ids(io)
    assert set(kal_ids) == {1}
    assert set(iou_ids) == {1, 2}


def test_kalman_coasting_output_and_end_after_max_age():
    p = KalmanTrackerParams(max_age=2, output_coasting=True)
    t = KalmanTracker(p)
    for k in range(10):
        out = t.update([box(100 + 10 * k, 200)], [0.9])
    for k in range(10, 12):                                  # coast 2 frames on the prediction
        out = t.update(np.zeros((0, 4)), [])
        assert ids(out) == [1] and out[0].time_since_update == k - 9
        np.testing.assert_allclose(out[0].box, box(100 + 10 * k, 200), atol=3.0)
    assert t.update(np.zeros((0, 4)), []) == []             # third miss > max_age: ended
    out = t.update([box(230, 200)], [0.9])
    out = t.update([box(240, 200)], [0.9])
    assert ids(out) == [2]


def test_kalman_tentative_confirmation_and_start_score():
    t = KalmanTracker(KalmanTrackerParams(n_init=3, min_start_score=0.6))
    assert t.update([box(100, 100), box(400, 100)], [0.9, 0.5]) == []   # 0.5 < 0.6: never starts
    assert t.update([box(102, 100), box(400, 100)], [0.9, 0.5]) == []
    out = t.update([box(104, 100), box(400, 100)], [0.9, 0.5])
    assert ids(out) == [1] and out[0].hits == 3 and out[0].confirmed
    # a one-frame spurious detection never consumes an id
    t.update([box(106, 100), box(300, 300)], [0.9, 0.9])
    t.update([box(108, 100)], [0.9])
    t.update([box(110, 100)], [0.9])
    for k in range(3):
        out = t.update([box(112 + 2 * k, 100), box(500, 300)], [0.9, 0.9])
    assert ids(out) == [1, 2]
    t1 = KalmanTracker(KalmanTrackerParams(n_init=1))
    assert ids(t1.update([box(100, 100)], [0.9])) == [1]


def test_kalman_running_score_gates_output_without_ending_the_track():
    """The track's score is a running mean of its detections' (weight 0.5 on the newest); a dip of
    one weak frame keeps it published, a run of weak frames hides it, and it comes back under its
    own id once its detections are strong again."""
    t = KalmanTracker(KalmanTrackerParams(n_init=1, score_smoothing=0.5, min_output_score=0.5))
    scores = [0.8, 0.8, 0.3, 0.8, 0.3, 0.3, 0.3, 0.9, 0.9]
    published = []
    for k, s in enumerate(scores):
        out = t.update([box(100 + 5 * k, 200)], [s])
        published.append([(o.id, round(o.score, 4)) for o in out])
    assert published[1] == [(1, 0.8)]
    assert published[2] == [(1, 0.55)]                      # 0.5 * 0.3 + 0.5 * 0.8: still published
    assert published[3] == [(1, 0.675)]
    assert published[4:7] == [[], [], []]                   # 0.4875, 0.3938, 0.3469: hidden
    assert published[7:] == [[(1, 0.6234)], [(1, 0.7617)]]  # back under the same id (never ended)
    # the defaults keep the last detection's score and publish every confirmed track
    d = KalmanTracker(KalmanTrackerParams(n_init=1))
    assert [o.score for o in d.update([box(100, 100)], [0.9])] == [0.9]
    assert [o.score for o in d.update([box(102, 100)], [0.05])] == [0.05]


def test_kalman_suppresses_a_second_box_on_one_vehicle():
    """A wider, weaker box around a tracked vehicle (IoU 0.5 with it) starts a false track unless
    suppress_iou drops it; a box beside it (IoU 0) is a vehicle of its own either way."""
    vehicle, wide, other = box(200, 100, 60, 40), box(200, 100, 120, 40), box(400, 100)
    assert iou_matrix([vehicle], [wide])[0, 0] == pytest.approx(0.5)
    for suppress, want in ((1.0, [1, 2, 3]), (0.6, [1, 2, 3]), (0.4, [1, 2])):
        t = KalmanTracker(KalmanTrackerParams(n_init=1, min_start_score=0.5, suppress_iou=suppress))
        # listed weakest first: suppression must go by score, not by position in the message
        out = t.update([wide, other, vehicle], [0.6, 0.7, 0.9])
        assert ids(out) == want, suppress
        kept = sorted(tuple(np.round(o.box, 6)) for o in out)
        assert (tuple(np.round(wide, 6)) in kept) == (suppress > 0.5)
    # the default keeps every detection (the node's parameter sets it)
    assert KalmanTrackerParams().suppress_iou == 1.0


def test_kalman_uses_stamps_for_irregular_frames():
    # 10 px per 0.1 s; frames arrive at irregular intervals incl. a 0.4 s hole
    stamps = [0.0, 0.1, 0.2, 0.3, 0.4, 0.8, 0.9, 1.05, 1.1, 1.2]
    t = KalmanTracker(KalmanTrackerParams(frame_period_s=0.1, min_iou=0.5, max_centre_distance=0.0))
    seen = set()
    for s in stamps:
        out = t.update([box(100 + 100 * s, 200, 40, 40)], [0.9], stamp_s=s)
        seen |= set(ids(out))
        if out:
            assert out[0].stamp_s == s
    assert seen == {1}
    assert out[0].velocity[0] == pytest.approx(10, abs=1.5)


def test_reset_restarts_ids():
    for t in trackers():
        t.update([box(100, 100)], [0.9])
        t.update([box(100, 100)], [0.9])
        t.reset()
        t.update([box(100, 100)], [0.9])
        assert ids(t.update([box(100, 100)], [0.9])) == [1]
