"""replay-eval: a bag replayed through the car graph (DDS, student_node + tracking_node built by the
bringup runner) scores the same as the offline path (StudentRuntime + tracker, no ROS transport).

Why a tolerance at all: both paths compute the same windows with the same model (the node steps
its StudentRuntime on every audio chunk, the offline path does the same), so the detections
should be identical. What can differ: boxes travel as Detection2D centre/size in float64 and come
back as corners (rounding ~1e-5 px), and a node that falls more than ``rate`` windows behind
skips the oldest (``max_windows_per_step``), which costs a frame or two on a loaded machine. AP
is therefore compared to within 0.02 and the detection stamps may differ by at most two windows.
"""
import json
import math

import numpy as np
import pytest
import torch

from mmdistill_student.checkpoint import save_checkpoint
from mmdistill_student.model import StudentConfig, StudentDetector
from mmdistill_training import cli
from mmdistill_training.commands.sim import write_bag
from mmdistill_training.metrics import evaluate_detections
from mmdistill_training.replay import align, evaluate_offline, evaluate_replay

pytestmark = pytest.mark.ros

AP_TOL = 0.02


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from mmdistill_sim.scenario import load_scenario
    import dataclasses
    d = tmp_path_factory.mktemp('replay')
    scenario = dataclasses.replace(load_scenario('dense-traffic'), duration_s=2.0)
    write_bag(scenario, d / 'bag', images=False, progress=False)
    torch.manual_seed(0)
    # untrained and tiny, with score threshold 0: plumbing only (its AP against the truth is ~0)
    cfg = StudentConfig(encoder=dict(widths=(8, 16), embed_dim=32, out_channels=16, dropout=0.0),
                        head_width=16, head_convs=1, score_threshold=0.0, max_detections=5)
    save_checkpoint(StudentDetector(cfg), d / 'ckpt')
    return d


def frames(result):
    return [(p['stamp_ns'], {'boxes': np.array(p['boxes']).reshape(-1, 4), 'scores': np.array(p['scores'])})
            for p in result['predictions']]


def close(a, b, tol):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, abs_tol=tol)


def test_graph_replay_agrees_with_offline(ros, data):
    off = evaluate_offline(data / 'bag', data / 'ckpt', rate_hz=10.0, keep_predictions=True)
    rep = evaluate_replay(data / 'bag', data / 'ckpt', rate=4.0, keep_predictions=True)
    assert off['detections'] >= 8, off['detections']           # 2.0 s at 10 Hz, minus the first/last 0.5 s
    assert rep['player_counts']['/sensors/mic_array/audio'] > 40
    assert abs(rep['detections'] - off['detections']) <= 2
    assert rep['track_frames'] == rep['detections']               # tracker answers every detection message
    # the same detection metrics against the simulator's ground truth
    g_off, g_rep = off['references']['ground_truth'], rep['references']['ground_truth']
    for key in ('AP50', 'AP75', 'mAP_avg', 'coco_AP'):
        assert close(g_rep['detection'][key], g_off['detection'][key], AP_TOL), key
    assert g_rep['detection']['num_gt'] == pytest.approx(g_off['detection']['num_gt'], rel=0.15)
    assert 'tracking' in g_rep and g_rep['tracking']['num_gt_ids'] > 0   # ids from /sim/ground_truth
    # the stronger check: with the offline detections as the reference, the replayed ones match them
    fo, fr = frames(off), frames(rep)
    common = sorted({s for s, _ in fo} & {s for s, _ in fr})
    assert len(common) >= len(fo) - 2
    idx, preds, _ = align(fr, [s for s, _ in fo], tolerance_ns=1_000_000)
    ref = [{'boxes': fo[i][1]['boxes']} for i in idx]
    cross = evaluate_detections(preds, ref, (384, 128), per_class=False)
    assert cross['AP75'] >= 1 - AP_TOL and cross['num_pred'] == cross['num_gt']
    by_stamp = dict(fr)
    for s, f in fo:
        if s in by_stamp:
            np.testing.assert_allclose(by_stamp[s]['boxes'], f['boxes'], atol=1e-3)
            np.testing.assert_allclose(by_stamp[s]['scores'], f['scores'], atol=1e-6)


def test_cli_offline_writes_json_and_rejects_bad_input(data, tmp_path, capsys):
    out = tmp_path / 'm.json'
    rc = cli.main(['replay-eval', '--offline', '--bag', str(data / 'bag'), '--checkpoint', str(data / 'ckpt'),
                   '--out', str(out), '--tracker', 'iou'])
    assert rc == 0
    result = json.loads(out.read_text())            # strict JSON: NaN written as null
    assert result['mode'] == 'offline' and result['tracker'] == 'iou'
    block = result['references']['ground_truth']
    assert block['coverage']['scored_frames'] == block['coverage']['matched_frames'] > 0
    assert {'AP50', 'mAP_avg', 'CDx'} <= set(block['detection']) and 'MOTA' in block['tracking']
    assert not list(tmp_path.glob('*.tmp'))
    rc = cli.main(['replay-eval', '--bag', str(tmp_path / 'nope'), '--checkpoint', str(data / 'ckpt'),
                   '--out', str(tmp_path / 'x.json')])
    assert rc == 2 and 'does not exist' in capsys.readouterr().err
    rc = cli.main(['replay-eval', '--offline', '--bag', str(data / 'bag'), '--checkpoint', str(tmp_path),
                   '--out', str(tmp_path / 'x.json')])
    assert rc == 2 and 'checkpoint' in capsys.readouterr().err
    assert not (tmp_path / 'x.json').exists()


def test_align_scores_missing_frames_as_empty():
    preds = [(100, {'boxes': np.zeros((1, 4)), 'scores': np.ones(1)}),
             (300, {'boxes': np.zeros((2, 4)), 'scores': np.ones(2)})]
    idx, got, cover = align(preds, [0, 100, 200, 300, 400], tolerance_ns=10)
    assert idx == [1, 2, 3]                                     # before the first / after the last: not scored
    assert [len(f['scores']) for f in got] == [1, 0, 2]         # 200 has no prediction: a miss
    assert cover['matched_frames'] == 2 and cover['scored_frames'] == 3
