"""SIGKILL a recording ``recorder_node`` and a ``mmdistill sim`` at random moments; the recovered
bags hold a prefix of what was published, every message decodes, and the independent MCAP
reader reads them (the full campaign: ``benchmarks/bench_reliability.py --kills 20``)."""
import random

import pytest

from mmdistill_training.crash_trials import recorder_trial, sim_trial

pytestmark = pytest.mark.ros


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_recorder_killed_bag_is_recovered(executor, tmp_path, storage):
    run_s = random.Random().uniform(1.5, 3.0)
    r = recorder_trial(executor, tmp_path / 'rec', run_s, storage=storage, flush_period=0.5)
    assert r['prefix_intact'] and r['audio_info_kept'], r
    assert 0 < r['recovered'] <= r['published'], r
    assert r['independent_reader_count'] == r['recovered_total'] == r['recovered'] + 1, r


def test_sim_killed_bag_is_recovered(tmp_path):
    r = sim_trial(tmp_path / 'sim', kill_after_s=random.Random().uniform(1.0, 3.0), duration_s=30.0)
    assert r is not None, 'the simulation finished before the kill'
    assert r['prefix_intact'], r
    assert r['independent_reader_count'] == r['recovered'], r
    assert 0 <= r['lost'] == r['handed_to_writer'] - r['recovered'], r
