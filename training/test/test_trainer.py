"""Student trainer: files, determinism, resume, pretext initialisation, errors, DDP under torchrun.

Data: three 3-s oracle-labelled drives of one scenario at 16 kHz (labelled_bag.write_oracle_bag:
teachers = simulator truth with jitter), so the split rule gives one train, one val and one
test drive. A small encoder keeps every run to a few seconds."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmdistill_common.errors import ConfigError
from mmdistill_student.checkpoint import load_checkpoint
from mmdistill_training.cli import main
from mmdistill_training.dataset_build import BuildConfig, build_dataset
from mmdistill_training.labelled_bag import short_scenario, write_oracle_bag
from mmdistill_training.train_config import validate
from mmdistill_training.trainer import _ema_step, train

SMALL = {'model': {'encoder': {'widths': [8, 16], 'embed_dim': 32, 'out_channels': 16}, 'head_width': 16},
         'optim': {'batch_size': 8, 'epochs': 2, 'max_val_frames': 12}}


def cfg(**over):
    raw = json.loads(json.dumps(SMALL))
    for k, v in over.items():
        if isinstance(v, dict):
            raw.setdefault(k, {}).update(v)
        else:
            raw[k] = v
    return validate(raw)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('trainer')
    bags = []
    for k in range(3):
        bag = root / f'day-static-{k}'
        write_oracle_bag(short_scenario('day-static', 3.0, 16000, seed=20 + k), bag, seed=k)
        bags.append(bag)
    out = root / 'ds'
    build_dataset(bags, out, BuildConfig(window='centered'), progress=False)
    return out


def test_distill_writes_checkpoint_logs_and_loss_goes_down(dataset, tmp_path):
    out = tmp_path / 'run'
    summary = train(cfg(optim={'epochs': 3}), dataset, out, progress=False)
    for name in ('model.safetensors', 'checkpoint.json', 'train_state.safetensors', 'log.csv',
                 'curves.png', 'summary.json'):
        assert (out / name).is_file(), name
    model, meta = load_checkpoint(out)
    assert meta['stage'] == 'distill' and meta['window_mode'] == 'centered'
    assert meta['dataset']['content_hash'] and meta['train_config']['loss']['distill'] == 'mta'
    assert 1 <= meta['metrics']['epoch'] <= 3
    losses = [h['train_loss'] for h in summary['history']]
    assert losses[-1] < losses[0]
    assert summary['mirror_augmentation'] is True
    lines = (out / 'log.csv').read_text().splitlines()
    assert len(lines) == 4 and 'val_mAP_avg' in lines[0]


def test_cosine_schedule_anneals_to_min_lr_and_resumes_exactly(dataset, tmp_path):
    c = cfg(optim={'epochs': 3, 'schedule': 'cosine', 'lr': 1e-3, 'min_lr': 1e-5, 'patience': 10})
    summary = train(c, dataset, tmp_path / 'a', progress=False)
    lrs = [h['lr'] for h in summary['history']]
    expected = [1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    assert lrs == pytest.approx(expected)
    train(c, dataset, tmp_path / 'b', progress=False, epochs=1)
    train(c, dataset, tmp_path / 'b', progress=False, resume=True)
    wa, wb = _last_weights(tmp_path / 'a'), _last_weights(tmp_path / 'b')
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _last_weights(out: Path):
    return {k: v for k, v in load_file(str(out / 'train_state.safetensors')).items() if k.startswith('model.')}


def test_same_seed_same_weights_and_resume_continues_exactly(dataset, tmp_path):
    train(cfg(), dataset, tmp_path / 'a', progress=False)
    train(cfg(), dataset, tmp_path / 'b', progress=False, epochs=1)
    train(cfg(), dataset, tmp_path / 'b', progress=False, resume=True)
    wa, wb = _last_weights(tmp_path / 'a'), _last_weights(tmp_path / 'b')
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    train(cfg(seed=1), dataset, tmp_path / 'c', progress=False)
    wc = _last_weights(tmp_path / 'c')
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_ema_checkpoint_holds_the_moving_average_and_resumes_exactly(dataset, tmp_path):
    c = cfg(optim={'epochs': 2, 'ema': 0.9, 'patience': 10})
    summary = train(c, dataset, tmp_path / 'a', progress=False)
    state = load_file(str(tmp_path / 'a' / 'train_state.safetensors'))
    raw = {k[len('model.student.'):]: v for k, v in state.items() if k.startswith('model.student.')}
    avg = {k[len('model.ema.module.'):]: v for k, v in state.items() if k.startswith('model.ema.module.')}
    assert raw.keys() == avg.keys() and any(not torch.equal(raw[k], avg[k]) for k in raw)
    model, meta = load_checkpoint(tmp_path / 'a')
    saved = model.state_dict()
    if summary['best_epoch'] == 2:          # the checkpoint is the last epoch's average, not its raw weights
        assert all(torch.equal(saved[k], avg[k]) for k in avg)
    train(c, dataset, tmp_path / 'b', progress=False, epochs=1)
    train(c, dataset, tmp_path / 'b', progress=False, resume=True)
    wb = load_file(str(tmp_path / 'b' / 'train_state.safetensors'))
    assert all(torch.equal(state[k], wb[k]) for k in state if k.startswith('model.'))


def test_ema_step_ramps_the_decay_up():
    step = _ema_step(0.99)
    a, c = torch.zeros(3), torch.ones(3)
    assert torch.allclose(step(a, c, 0), torch.full((3,), 0.9))         # n = 0: decay 1/10
    assert torch.allclose(step(a, c, 10_000), torch.full((3,), 0.01))   # ramp over: decay 0.99


def test_pretext_initialises_the_encoder(dataset, tmp_path):
    s = train(cfg(stage='pretext'), dataset, tmp_path / 'pre', progress=False)
    assert s['monitor'] == 'val_accuracy' and 0.0 <= s['best'] <= 1.0
    pre, meta = load_checkpoint(tmp_path / 'pre')
    assert meta['stage'] == 'pretext'
    # a vanishing learning rate keeps the encoder where the pretext left it
    train(cfg(optim={'epochs': 1, 'lr': 1e-8}), dataset, tmp_path / 'dist', progress=False,
          init=f'pretext:{tmp_path / "pre"}')
    w = _last_weights(tmp_path / 'dist')
    enc = pre.encoder.state_dict()
    k = 'stages.0.0.0.weight'
    assert torch.allclose(w[f'model.student.encoder.{k}'], enc[k], atol=1e-5)
    with pytest.raises(ConfigError, match='not a pretext checkpoint'):
        train(cfg(), dataset, tmp_path / 'x', progress=False, init=f'pretext:{tmp_path / "dist"}')


@pytest.mark.parametrize('quality', ['iou', 'iou_focal'])
def test_iou_quality_trains(dataset, tmp_path, quality):
    s = train(cfg(loss={'quality': quality}, optim={'epochs': 1}), dataset, tmp_path / quality, progress=False)
    assert np.isfinite(s['history'][0]['train_loss'])


@pytest.mark.parametrize('distill', ['mta_average', 'mta_reference', 'ranking', 'none'])
def test_every_distillation_variant_trains(dataset, tmp_path, distill):
    over = {'loss': {'distill': distill}, 'optim': {'epochs': 1}}
    if distill == 'ranking':
        over.update(features=['logmel'], mics=[0, 4], targets='rgb')
        over['loss']['teachers'] = ['rgb']
    s = train(cfg(**over), dataset, tmp_path / distill, progress=False)
    assert np.isfinite(s['history'][0]['train_loss'])


def test_cli_errors_are_one_line(dataset, tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('optim: {epoch: 3}\n')
    assert main(['train', '--config', str(bad), '--dataset', str(dataset), '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'optim.epoch: unknown key' in err[0]
    assert main(['train', '--config', 'student', '--dataset', str(dataset), '--out', str(tmp_path / 'o'),
                 '--resume']) == 2
    assert 'no train state' in capsys.readouterr().err
    assert main(['train', '--config', 'student', '--dataset', str(tmp_path / 'nope'),
                 '--out', str(tmp_path / 'o')]) == 2


def test_torchrun_ddp_two_processes(dataset, tmp_path):
    """The same trainer under torchrun (gloo on CPU): two ranks, rank 0 writes the checkpoint."""
    conf = tmp_path / 'small.yaml'
    import yaml
    conf.write_text(yaml.safe_dump({**SMALL, 'optim': {**SMALL['optim'], 'epochs': 1}}))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    code = ('import sys; from mmdistill_training.cli import main; sys.exit(main(sys.argv[1:]))')
    script = tmp_path / 'entry.py'
    script.write_text(code)
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                        '--master_port', str(29500 + os.getpid() % 1000), str(script), 'train', '--config', str(conf),
                        '--dataset', str(dataset), '--out', str(tmp_path / 'ddp'), '--quiet'],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    model, meta = load_checkpoint(tmp_path / 'ddp')
    assert meta['stage'] == 'distill'


def test_f1_threshold_keeps_the_boxes_that_reproduce_the_references():
    """Two frames, each with one reference: the right boxes score 0.6 and 0.5, a wrong one 0.55 and
    junk below 0.3. Highest F1 (1.0) keeps exactly the right ones only if the cut may leave the
    0.55 box in: F1 at 0.5 is 2*2/(2+3) = 0.8, at 0.575 (only the 0.6 box) 2/3; so the cut is
    between 0.5 and the junk. Count matching (2 references) cuts between 0.55 and 0.5: one right
    box and the wrong one. No reference: publish nothing; the floor holds."""
    from mmdistill_training.trainer import count_matching_threshold, f1_threshold
    ref = [{'boxes': np.array([[0, 0, 10, 10.]])}, {'boxes': np.array([[50, 50, 60, 60.]])}]
    preds = [{'boxes': np.array([[0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10.]]),
              'scores': np.array([0.6, 0.55, 0.2])},
             {'boxes': np.array([[50, 50, 60, 60], [300, 0, 310, 10.]]), 'scores': np.array([0.5, 0.25])}]
    thr = f1_threshold(preds, ref)
    assert 0.25 < thr < 0.5
    assert 0.5 < count_matching_threshold([p['scores'] for p in preds], 2) < 0.55
    assert f1_threshold(preds, [{'boxes': np.zeros((0, 4))}] * 2) == 1.0
    assert 0.58 <= f1_threshold(preds, ref, floor=0.58) < 0.6     # only the 0.6 box is a candidate
    with pytest.raises(ConfigError, match='operating_point'):
        cfg(eval={'operating_point': 'median'})


def test_count_matching_threshold_gives_the_reference_box_count():
    from mmdistill_training.trainer import count_matching_threshold
    scores = [np.array([0.9, 0.2, 0.1]), np.array([0.8, 0.7]), np.array([])]
    thr = count_matching_threshold(scores, 3)
    assert sum(int((s >= thr).sum()) for s in scores) == 3
    assert 0.2 < thr < 0.7
    assert count_matching_threshold(scores, 0) == 1.0               # no reference box: publish none
    assert count_matching_threshold(scores, 10, floor=0.05) == 0.05  # fewer candidates than wanted
    assert count_matching_threshold(scores, 1, floor=0.95) == 0.95   # never below the floor


def test_align_attention_to_coarser_student_strides():
    from mmdistill_training.trainer import align_attention
    maps = [torch.rand(2, 16, 48), torch.rand(2, 8, 24), torch.rand(2, 4, 12)]
    out = align_attention(maps, (8, 16, 32), (16, 32, 64))
    assert [tuple(m.shape) for m in out] == [(2, 8, 24), (2, 4, 12), (2, 2, 6)]
    assert out[0] is maps[1] and out[1] is maps[2]
    torch.testing.assert_close(out[2].sum(dim=(1, 2)), maps[2].sum(dim=(1, 2)))     # mass is kept
    assert align_attention(maps, (8, 16, 32), (8, 16, 32)) == maps


def test_fused_targets_keep_the_labels_scored_at_least_min_label_score(dataset):
    from mmdistill_training.dataset import DistillDataset
    from mmdistill_training.trainer import reference_frames
    ds = DistillDataset(dataset)
    rows = ds.split_indices('train')
    scores = np.concatenate([ds.labels(int(r))[1] for r in rows])
    tau = float(np.median(scores))
    assert scores.min() < tau <= scores.max()
    every = reference_frames(ds, rows, 'fused')
    kept = reference_frames(ds, rows, 'fused', tau)
    for r, a, b in zip(rows, every, kept):
        boxes, s = ds.labels(int(r))
        np.testing.assert_array_equal(b['boxes'], np.asarray(boxes, np.float64).reshape(-1, 4)[s >= tau])
        assert len(a['boxes']) == len(s)
    assert 0 < sum(len(f['boxes']) for f in kept) < sum(len(f['boxes']) for f in every)
    with pytest.raises(ConfigError, match='min_label_score'):
        cfg(min_label_score=1.5)


def test_fused_targets_keep_the_labels_the_named_teachers_support(dataset):
    from mmdistill_training.dataset import DistillDataset
    from mmdistill_training.trainer import reference_frames
    ds = DistillDataset(dataset)
    rows = ds.split_indices('train')
    every = reference_frames(ds, rows, 'fused')
    thermal = reference_frames(ds, rows, 'fused', 0.0, ['thermal'])
    both = reference_frames(ds, rows, 'fused', 0.0, ['rgb', 'thermal'])
    for r, a, t, b in zip(rows, every, thermal, both):
        sup = ds.label_support(int(r))
        np.testing.assert_array_equal(t['boxes'], a['boxes'][sup[:, 2]])
        np.testing.assert_array_equal(b['boxes'], a['boxes'][sup[:, 0] & sup[:, 2]])
    n = [sum(len(f['boxes']) for f in x) for x in (every, thermal, both)]
    assert n[0] > n[1] > n[2] > 0, n
    for bad in (['sonar'], 'thermal', ['thermal', 'thermal']):
        with pytest.raises(ConfigError, match='label_support'):
            cfg(label_support=bad)
