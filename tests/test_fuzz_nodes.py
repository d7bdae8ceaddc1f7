"""A small fuzz campaign over DDS for every node (the full one: ``benchmarks/bench_fuzz.py``,
10 000 messages per node): malformed and random messages interleaved with valid ones; the node
stays alive, exits 0 on SIGINT, its drop counters equal what was sent, its outputs are valid and
continue after the last malformed message."""
import pytest

from mmdistill_training.fuzzing import NODES, check_recorded_bag, fuzz_node, node_params

pytestmark = pytest.mark.ros
MESSAGES = {'student_node': 60, 'teacher_node': 60}


@pytest.mark.parametrize('node', sorted(NODES))
def test_node_survives_fuzzing(ros, tmp_path, node):
    r = fuzz_node(node, MESSAGES.get(node, 100), tmp_path, seed=1, params=node_params(node, tmp_path))
    log = (tmp_path / f'{node}.log').read_text()[-3000:]
    assert r['crashes'] == 0 and r['alive_at_end'] and r['exit_status'] == 0, log
    assert r['counter_mismatches'] == {}, (r['counter_mismatches'], log)
    assert r['lost_in_transport'] == 0, r
    for topic, out in r['outputs'].items():
        assert out['received'] > 0 and out['invalid'] == 0 and out['after_last_malformed'] > 0, (topic, out)
    if node == 'recorder_node':
        bag = check_recorded_bag(r, tmp_path)
        assert bag['all_decoded'] and bag['matches_recorder_counts'], bag
