"""The fallback synchronizer, fed directly like message_filters' own test_approxsync.py."""
import random

import pytest
from builtin_interfaces.msg import Time

from mmdistill_common.sync import FallbackApproximateTimeSynchronizer as ATS, SimpleFilter


class Header:
    def __init__(self, t: float) -> None:
        self.stamp = Time(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))


class Msg:
    def __init__(self, t: float, data=None) -> None:
        self.header = Header(t)
        self.data = data

    def __repr__(self) -> str:
        return f'Msg({self.header.stamp.sec}.{self.header.stamp.nanosec:09d})'


class Headerless:
    pass


def make(n_inputs, queue_size, slop, **kw):
    filters = [SimpleFilter() for _ in range(n_inputs)]
    out = []
    ts = ATS(filters, queue_size=queue_size, slop=slop, **kw)
    ts.registerCallback(lambda *msgs: out.append(msgs))
    return filters, out


def test_scrambled_sequences_recombine():
    # upstream case: N messages per input, stamps 0..N-1 s, delivered in random order
    random.seed(0)
    for n in range(1, 10):
        (m0, m1), out = make(2, n, 0.1)
        seq0 = [Msg(t, random.random()) for t in range(n)]
        seq1 = [Msg(t, random.random()) for t in range(n)]
        for msg in random.sample(seq0, n):
            m0.signalMessage(msg)
        assert out == []
        for msg in random.sample(seq1, n):
            m1.signalMessage(msg)
        assert set(out) == set(zip(seq0, seq1))


def test_pairs_signal_in_input_order():
    (m0, m1, m2), out = make(3, 5, 0.05)
    a, b, c = Msg(1.00), Msg(1.01), Msg(0.99)
    m2.signalMessage(c)
    m0.signalMessage(a)
    assert out == []
    m1.signalMessage(b)
    assert out == [(a, b, c)]


def test_slop_inclusive_for_candidates_but_strict_for_spread():
    # two inputs exactly slop apart: each is a candidate of the other, but the spread is not < slop
    (m0, m1), out = make(2, 5, 0.1)
    m0.signalMessage(Msg(0.0))
    m1.signalMessage(Msg(0.1))
    assert out == []
    # three inputs: candidates within slop of the new message on both sides, spread 2*0.06 > slop
    (m0, m1, m2), out = make(3, 5, 0.1)
    m0.signalMessage(Msg(0.94))
    m1.signalMessage(Msg(1.06))
    m2.signalMessage(Msg(1.0))
    assert out == []
    # a third-input message that makes a tight set matches
    m2.signalMessage(Msg(1.05))
    assert len(out) == 0  # 0.94 is 0.11 away from 1.05: not a candidate
    m0.signalMessage(Msg(1.04))
    assert [tuple(round(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, 2) for m in s) for s in out] == [(1.04, 1.06, 1.05)]


def test_nearest_candidate_first():
    (m0, m1), out = make(2, 10, 0.1)
    far, near = Msg(0.0), Msg(0.04)
    m0.signalMessage(far)
    m0.signalMessage(near)
    m1.signalMessage(Msg(0.05))
    assert out[0][0] is near
    m1.signalMessage(Msg(0.01))
    assert out[1][0] is far


def test_eviction_by_smallest_stamp():
    (m0, m1), out = make(2, 1, 0.1)
    m0.signalMessage(Msg(0.0))
    m0.signalMessage(Msg(1.0))   # queue size 1: evicts stamp 0
    m1.signalMessage(Msg(0.0))
    assert out == []
    m1.signalMessage(Msg(1.0))
    assert len(out) == 1


def test_only_sets_with_the_newest_message():
    (m0, m1), out = make(2, 10, 0.1)
    old = Msg(0.0)
    m0.signalMessage(old)
    m1.signalMessage(Msg(5.0))       # no candidate: waits
    m0.signalMessage(Msg(5.02))      # matches 5.0; stamp 0 stays queued
    assert len(out) == 1
    m1.signalMessage(Msg(0.03))      # the old one is still there to match
    assert out[1][0] is old


def test_matched_messages_are_removed():
    (m0, m1), out = make(2, 10, 0.1)
    m0.signalMessage(Msg(1.0))
    m1.signalMessage(Msg(1.0))
    m1.signalMessage(Msg(1.01))      # its partner was consumed
    assert len(out) == 1


def test_headerless():
    (m0, m1), out = make(2, 10, 0.1)
    m0.signalMessage(Headerless())
    m1.signalMessage(Headerless())
    assert out == []
    (m0, m1), out = make(2, 10, 0.5, allow_headerless=True)
    m0.signalMessage(Headerless())
    m1.signalMessage(Headerless())
    assert len(out) == 1


def test_constructor_validates():
    with pytest.raises(ValueError):
        ATS([SimpleFilter()], queue_size=0, slop=0.1)
    with pytest.raises(ValueError):
        ATS([SimpleFilter()], queue_size=1, slop=-1)


def test_register_callback_passes_extra_args():
    (m0, m1), _ = make(2, 5, 0.1)
    ts = ATS([m0, m1], queue_size=5, slop=0.1)
    got = []
    ts.registerCallback(lambda a, b, tag: got.append(tag), 'extra')
    m0.signalMessage(Msg(2.0))
    m1.signalMessage(Msg(2.0))
    assert got == ['extra']
