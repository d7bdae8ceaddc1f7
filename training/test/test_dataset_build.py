"""mmdistill dataset build: windows at the right samples, features = Frontend, skipped frames, splits, errors."""
import json
import shutil

import numpy as np
import pytest

from mmdistill_common import topics
from mmdistill_common.bagio import BagReader
from mmdistill_common.conversions import stamp_to_ns
from mmdistill_training.cli import main
from mmdistill_training.dataset import DistillDataset
from mmdistill_training.dataset_build import BuildConfig, build_dataset, split_by_rule
from mmdistill_training.labelled_bag import short_scenario, write_oracle_bag

SR = 16000                       # a lower rate keeps the test fast; the rate is a parameter of the front end
GAP = (1_200_000_000, 1_300_000_000)   # chunks starting in this range are dropped from bag "gappy"


def raw_audio(bag):
    """[(stamp, int16 (n, 8))] of the bag's audio chunks."""
    with BagReader(bag) as r:
        return [(stamp_to_ns(m.msg.header.stamp), np.frombuffer(bytes(m.msg.audio.data), '<i2').reshape(-1, 8))
                for m in r.messages([topics.AUDIO])]


def label_stamps(bag):
    with BagReader(bag) as r:
        return sorted(stamp_to_ns(m.msg.header.stamp) for m in r.messages([topics.PSEUDO_LABELS]))


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('bags')
    out = {}
    out['plain'] = root / 'plain'
    write_oracle_bag(short_scenario('day-static', 2.5, SR), out['plain'], seed=1, dropout=0.3)
    out['gappy'] = root / 'gappy'
    write_oracle_bag(short_scenario('day-static', 2.5, SR, seed=7), out['gappy'], seed=2,
                     audio_hook=lambda m: None if GAP[0] <= stamp_to_ns(m.header.stamp) < GAP[1] else m)
    out['notruth'] = root / 'notruth'
    write_oracle_bag(short_scenario('night-static', 1.5, SR), out['notruth'], truth=False, teacher_topics=False)
    return out


@pytest.fixture(scope='module')
def centered(bags, tmp_path_factory):
    out = tmp_path_factory.mktemp('ds') / 'centered'
    build_dataset([bags['plain'], bags['gappy']], out, BuildConfig(window='centered'), progress=False)
    return DistillDataset(out)


def expected_rows(bag, mode, n=SR, dropped=None):
    """(kept stamps, skipped incomplete, skipped gap) by an independent rule on the sample clock."""
    chunks = raw_audio(bag)
    total = sum(len(a) for _, a in chunks)
    end = chunks[-1][0] + len(chunks[-1][1]) * 10**9 // SR
    kept, inc, gap = [], 0, 0
    for s in label_stamps(bag):
        t0 = s - (n if mode == 'causal' else n // 2) * 10**9 // SR
        t1 = t0 + n * 10**9 // SR
        if t0 < 0 or t1 > end:
            inc += 1
        elif dropped is not None and t0 < dropped[1] and t1 > dropped[0]:
            gap += 1
        else:
            kept.append(s)
    return kept, inc, gap, total


def test_centered_windows_are_the_raw_samples_and_features_match_frontend(bags, centered):
    from mmdistill_student.frontend import Frontend
    ds = centered
    assert ds.window_mode == 'centered' and ds.frontend.feature_shape() == (44, 80, 1 + SR // 256)
    raw = np.concatenate([a for _, a in raw_audio(bags['plain'])])
    rows = np.flatnonzero(np.asarray([ds.drive_name(r) == 'plain' for r in range(len(ds))]))
    kept, inc, _, _ = expected_rows(bags['plain'], 'centered')
    assert ds.stamps(rows).tolist() == kept and ds.index['drives'][0]['skipped']['incomplete_window'] == inc
    fe = Frontend(ds.frontend)
    for r in rows[[0, len(rows) // 2, -1]]:
        idx = int(ds.stamps(r)[0]) * SR // 10**9
        w = ds.audio_window(r)
        np.testing.assert_array_equal(w, raw[idx - SR // 2: idx + SR // 2])
        assert int(np.asarray(ds._arrays['window_start'])[r]) == idx - SR // 2
        ref = fe.compute(w.T.astype(np.float32) / 32768.0)
        got = ds.features(int(r))[0]
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-2)
        sub = ds.features([int(r)], channels=[1, 9, 20])[0]
        np.testing.assert_array_equal(sub, got[[1, 9, 20]])


def test_labels_teachers_attention_and_truth_come_from_the_bag(bags, centered):
    from mmdistill_teachers.labelling import parse_pseudo_label
    ds = centered
    with BagReader(bags['plain']) as r:
        msgs = r.read_all([topics.PSEUDO_LABELS, topics.teacher_detections_topic('rgb'), topics.SIM_TRUTH])
    labels = {stamp_to_ns(m.msg.header.stamp): parse_pseudo_label(m.msg) for m in msgs[topics.PSEUDO_LABELS]}
    rgb = {stamp_to_ns(m.msg.header.stamp): m.msg for m in msgs[topics.teacher_detections_topic('rgb')]}
    rows = [r for r in range(len(ds)) if ds.drive_name(r) == 'plain']
    absent = 0
    for r in rows:
        pl = labels[int(ds.stamps(r)[0])]
        boxes, scores = ds.labels(r)
        np.testing.assert_allclose(boxes, pl.boxes, atol=1e-3)
        np.testing.assert_allclose(scores, pl.scores, atol=1e-6)
        assert ds.counts([r])[0] == len(pl.boxes)
        present = ds.teacher_present([r])[0]
        assert present.tolist() == [m in pl.modalities for m in ('rgb', 'depth', 'thermal')]
        for m, ok in zip(('rgb', 'depth', 'thermal'), present):
            att = ds.attention([r], m)
            w, h = ds.index['image_size']
            assert [a.shape for a in att] == [(1, h // s, w // s) for s in (8, 16, 32)]
            if ok:
                np.testing.assert_allclose(att[0][0], pl.attention[m][0], rtol=1e-3)
            else:
                absent += 1
                assert all(not a.any() for a in att)
        tb, _ = ds.teacher_boxes(r, 'rgb')
        assert len(tb) == (len(rgb[int(ds.stamps(r)[0])].detections) if int(ds.stamps(r)[0]) in rgb else 0)
        gt = ds.ground_truth(r)
        assert gt is not None and gt['boxes'].shape == (len(gt['ids']), 4)
        assert ds.conditions(r)['occluded'] == bool(gt['occluded'].any())
    assert absent > 0, 'dropout should have removed some teachers'
    assert ds.conditions(rows[0])['scenario'] == 'day-static' and ds.has_ground_truth


def test_gap_in_audio_skips_only_the_affected_frames(bags, centered):
    ds = centered
    d = next(d for d in ds.drives if d['name'] == 'gappy')
    resume = min(st for st, _ in raw_audio(bags['gappy']) if st >= GAP[0])   # first chunk after the hole
    kept, inc, gap, total = expected_rows(bags['gappy'], 'centered', dropped=(GAP[0], resume))
    assert gap > 0 and d['skipped'].get('audio_gap') == gap and d['skipped'].get('incomplete_window') == inc
    rows = np.arange(d['first'], d['first'] + d['count'])
    assert ds.stamps(rows).tolist() == kept
    assert d['audio_gaps'] == 1 and len(d['segments']) == 2 and d['audio_samples'] == total
    assert ds.index['skipped']['audio_gap'] == gap
    # after the gap the window still holds the samples captured around the stamp
    chunks = raw_audio(bags['gappy'])
    after = [(s, a) for s, a in chunks if s >= GAP[1]]
    seg = np.concatenate([a for _, a in after])
    r = rows[-1]
    idx = (int(ds.stamps(r)[0]) - after[0][0]) * SR // 10**9
    np.testing.assert_array_equal(ds.audio_window(r), seg[idx - SR // 2: idx + SR // 2])


def test_causal_window_ends_at_the_stamp_window_length_and_frame_stride(bags, tmp_path, capsys):
    out = tmp_path / 'causal'
    assert main(['dataset', 'build', '--bags', str(bags['plain']), '--out', str(out), '--window', 'causal',
                 '--window-s', '0.5', '--features', 'logmel', '--frame-stride', '2', '--quiet']) == 0
    ds = DistillDataset(out)
    n = SR // 2
    assert ds.frontend.feature_shape()[0] == 8 and ds.feature_groups == {'logmel': (0, 8)}
    assert ds.frontend.window_s == 0.5 and ds.frontend.window_samples == n
    stamps = label_stamps(bags['plain'])[::2]
    kept = [s for s in stamps if s * SR // 10**9 >= n]
    assert ds.stamps(range(len(ds))).tolist() == kept
    raw = np.concatenate([a for _, a in raw_audio(bags['plain'])])
    for r in (0, len(ds) - 1):
        idx = int(ds.stamps(r)[0]) * SR // 10**9
        np.testing.assert_array_equal(ds.audio_window(r), raw[idx - n:idx])
    assert json.loads(capsys.readouterr().out)['n_frames'] == len(ds)


def test_same_inputs_same_hash_and_verify(bags, centered, tmp_path):
    again = build_dataset([bags['plain'], bags['gappy']], tmp_path / 'again', BuildConfig(), progress=False)
    assert again['content_hash'] == centered.content_hash
    assert DistillDataset(tmp_path / 'again').verify()
    other = build_dataset([bags['plain'], bags['gappy']], tmp_path / 'causal', BuildConfig(window='causal'),
                          progress=False)
    assert other['content_hash'] != centered.content_hash


def test_split_rule_never_shares_a_drive():
    drives = [(f'a{i:02d}', 'city') for i in range(10)] + [('b1', 'fog'), ('b0', 'fog'), ('c', 'night')]
    s = split_by_rule(drives)
    assert s['test'] == ['a08', 'a09', 'b1'] and s['val'] == ['a06', 'a07']
    assert sorted(s['train']) == sorted([f'a{i:02d}' for i in range(6)] + ['b0', 'c'])
    assert split_by_rule([('x2', 's'), ('x0', 's'), ('x1', 's')]) == {'train': ['x0'], 'val': ['x1'], 'test': ['x2']}
    names = [n for lst in s.values() for n in lst]
    assert sorted(names) == sorted(n for n, _ in drives)


def test_splits_by_drive_in_a_built_dataset_and_split_file(bags, centered, tmp_path, capsys):
    ds = centered
    # both bags are day-static: a group of two gives one train and one test drive
    assert ds.index['splits'] == {'train': ['gappy'], 'val': [], 'test': ['plain']}
    train, test = ds.split_indices('train'), ds.split_indices('test')
    assert len(ds.split_indices('val')) == 0 and not set(train) & set(test)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(ds)))
    assert {ds.drive_name(r) for r in train} == {'gappy'} and {ds.drive_name(r) for r in test} == {'plain'}
    split = tmp_path / 'split.json'
    split.write_text(json.dumps({'train': ['plain'], 'test': ['gappy']}))
    out = tmp_path / 'ds'
    assert main(['dataset', 'build', '--bags', str(bags['plain']), str(bags['gappy']), '--out', str(out),
                 '--split', str(split), '--features', 'logmel', '--quiet']) == 0
    assert DistillDataset(out).index['splits'] == {'train': ['plain'], 'val': [], 'test': ['gappy']}
    split.write_text(json.dumps({'train': ['plain', 'nosuch'], 'test': ['gappy']}))
    assert main(['dataset', 'build', '--bags', str(bags['plain']), str(bags['gappy']), '--out',
                 str(tmp_path / 'bad'), '--split', str(split)]) == 2
    assert 'nosuch' in capsys.readouterr().err and not (tmp_path / 'bad').exists()


def test_bag_without_truth_and_geometry(bags, centered, tmp_path):
    from mmdistill_sim.scenario import load_scenario
    geo = centered.drives[0]['geometry']
    np.testing.assert_allclose(geo['mic_positions_m'], load_scenario('day-static').mic_array.positions(), atol=1e-8)
    assert geo['camera']['width'] == load_scenario('day-static').camera.width and geo['camera']['fx'] > 0
    assert centered.index['geometry'] == geo          # both drives share the day-static geometry
    build_dataset([bags['notruth']], tmp_path / 'nt', BuildConfig(features=('logmel',)), progress=False)
    ds = DistillDataset(tmp_path / 'nt')
    d = ds.drives[0]
    assert not ds.has_ground_truth and ds.ground_truth(0) is None and d['geometry'] is None
    assert ds.index['geometry'] is None
    assert ds.conditions(0) == {'scenario': 'unknown', 'time_of_day': 'unknown', 'weather': 'unknown',
                                'ego_motion': 'unknown', 'occluded': False}
    assert d['teacher_topics'] == [] and all(len(ds.teacher_boxes(r, 'rgb')[0]) == 0 for r in range(len(ds)))
    assert ds.counts(range(len(ds))).sum() > 0


def test_default_rate_gives_80x173(tmp_path):
    bag = tmp_path / 'b44'
    write_oracle_bag(short_scenario('day-static', 1.3, None), bag)
    build_dataset([bag], tmp_path / 'ds', BuildConfig(), progress=False)
    ds = DistillDataset(tmp_path / 'ds')
    assert ds.features([0]).shape == (1, 44, 80, 173) and ds.audio_window(0).shape == (44100, 8)
    assert ds.index['skipped']['incomplete_window'] == 13 - len(ds)


def _cli_error(tmp_path, capsys, bags, *extra):
    out = tmp_path / 'out'
    rc = main(['dataset', 'build', '--bags', *map(str, bags), '--out', str(out), '--quiet', *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith('mmdistill dataset: error:')
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith('.out')] == []
    return err


def _truncate_one(m):
    if stamp_to_ns(m.header.stamp) == 400_000_000:
        m.audio.data = bytes(m.audio.data)[:-1]
    return m


def _info(**kw):
    def hook(m):
        for k, v in kw.items():
            setattr(m, k, v)
        return m
    return hook


@pytest.mark.parametrize('case, needle', [
    ('odd_bytes', 'not a whole number'),
    ('channels', 'channel count is wrong'),
    ('rate', 'sample rate or channel count'),
    ('format', 'sample_format'),
])
def test_audio_that_disagrees_with_audio_info_is_refused(tmp_path, capsys, case, needle):
    kw = {'odd_bytes': dict(audio_hook=_truncate_one), 'channels': dict(info_hook=_info(channels=4)),
          'rate': dict(info_hook=_info(sample_rate=22050)), 'format': dict(info_hook=_info(sample_format='F32LE'))}
    bag = tmp_path / 'bag'
    write_oracle_bag(short_scenario('day-static', 1.0, SR), bag, **kw[case])
    assert needle in _cli_error(tmp_path, capsys, [bag])


def test_missing_topics_corrupt_bags_and_bad_options(bags, tmp_path, capsys):
    from mmdistill_training.commands.sim import write_bag
    unlabelled = tmp_path / 'unlabelled'
    write_bag(short_scenario('day-static', 0.5, SR), unlabelled, images=False, progress=False)
    assert '/pseudo_labels' in _cli_error(tmp_path, capsys, [unlabelled])
    corrupt = tmp_path / 'halfbag'
    shutil.copytree(bags['notruth'], corrupt)
    mcap = next(corrupt.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    assert 'cannot open bag' in _cli_error(tmp_path, capsys, [corrupt])
    assert 'nosuchbag' in _cli_error(tmp_path, capsys, [tmp_path / 'nosuchbag'])
    assert 'logmel' in _cli_error(tmp_path, capsys, [bags['plain']], '--features', 'ild,gcc')
    assert 'srp,das,mvdr' in _cli_error(tmp_path, capsys, [bags['plain']], '--features', 'das,mvdr')
    assert 'srp,das,mvdr' in _cli_error(tmp_path, capsys, [bags['plain']], '--features', 'srp,das,mvdr,logmel')
    assert 'frame-stride' in _cli_error(tmp_path, capsys, [bags['plain']], '--frame-stride', '0')
    assert 'window-s' in _cli_error(tmp_path, capsys, [bags['plain']], '--window-s', '0')
    # a bag whose every window is incomplete: nothing to write
    short = tmp_path / 'short'
    write_oracle_bag(short_scenario('day-static', 0.6, SR), short)
    assert 'no labelled frame' in _cli_error(tmp_path, capsys, [short])
    (tmp_path / 'out').mkdir()
    assert main(['dataset', 'build', '--bags', str(bags['plain']), '--out', str(tmp_path / 'out')]) == 2
    assert 'already exists' in capsys.readouterr().err


def test_common_geometry_tolerates_per_scenario_speed_of_sound():
    from mmdistill_training.dataset_build import _common_geometry, scenario_geometry
    day, night = scenario_geometry('day-static', 8), scenario_geometry('night-static', 8)
    assert day['speed_of_sound_mps'] != night['speed_of_sound_mps']      # different air temperature
    common = _common_geometry([day, night])
    assert common['mic_positions_m'] == day['mic_positions_m']
    assert common['speed_of_sound_mps'] == pytest.approx((day['speed_of_sound_mps'] + night['speed_of_sound_mps']) / 2)
    moved = dict(day, camera=dict(day['camera'], cx=100.0))
    assert _common_geometry([day, moved]) is None
    assert _common_geometry([day, None]) is None
