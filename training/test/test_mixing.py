"""Mixed drives (``dataset build --mix``): summed audio, its features, joined labels, partners, splits, errors."""
import dataclasses
import json

import numpy as np
import pytest

from mmdistill_common.errors import ConfigError
from mmdistill_training.cli import main
from mmdistill_training.dataset import DistillDataset
from mmdistill_training.dataset_build import BuildConfig, build_dataset, read_drive
from mmdistill_training.labelled_bag import short_scenario, write_oracle_bag
from mmdistill_training.mixing import ID_OFFSET, mix_drives, mix_partners

SR = 16000


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('mixbags')
    out = {'day': root / 'day', 'night': root / 'night', 'day2': root / 'day2'}
    write_oracle_bag(short_scenario('day-static', 2.5, SR), out['day'], seed=1, dropout=0.3)
    write_oracle_bag(short_scenario('night-static', 2.5, SR, seed=5), out['night'], seed=2, dropout=0.3)
    write_oracle_bag(short_scenario('day-static', 2.5, SR, seed=9), out['day2'], seed=3)
    return out


@pytest.fixture(scope='module')
def built(bags, tmp_path_factory):
    """The same three drives without and with one mixed copy; day2 is the test drive."""
    root = tmp_path_factory.mktemp('mixds')
    split = root / 'split.json'
    split.write_text(json.dumps({'train': ['day', 'night'], 'test': ['day2']}))
    cfg = BuildConfig(features=('logmel',), split_file=split)
    ins = [bags['day'], bags['night'], bags['day2']]
    build_dataset(ins, root / 'plain', cfg, progress=False)
    build_dataset(ins, root / 'mixed', dataclasses.replace(cfg, mix=1), progress=False)
    return DistillDataset(root / 'plain'), DistillDataset(root / 'mixed')


def _rows(ds, name):
    return [r for r in range(len(ds)) if ds.drive_name(r) == name]


def _pairs(plain, mixed, a, b):
    """(mixed row, row of A, row of B) by window position (the bags share one timeline)."""
    ra = {int(plain._arrays['window_start'][r]): r for r in _rows(plain, a)}
    rb = {int(plain._arrays['window_start'][r]): r for r in _rows(plain, b)}
    out = []
    for r in _rows(mixed, f'{a}+{b}'):
        w = int(mixed._arrays['window_start'][r])
        out.append((r, ra[w], rb[w]))
    return out


def test_mixed_drives_are_the_summed_audio_and_its_features(built):
    from mmdistill_student.frontend import Frontend
    plain, mixed = built
    assert mixed.index['mix'] == 1 and plain.index['mix'] == 0
    pairs = _pairs(plain, mixed, 'day', 'night')
    assert len(pairs) == min(len(_rows(plain, 'day')), len(_rows(plain, 'night'))) > 0
    fe = Frontend(mixed.frontend)
    for r, ra, rb in pairs[::max(1, len(pairs) // 3)]:
        want = np.clip(plain.audio_window(ra).astype(np.int32) + plain.audio_window(rb), -32768, 32767)
        np.testing.assert_array_equal(mixed.audio_window(r), want)
        import torch
        ref = fe(torch.from_numpy(want.T[None].astype(np.float32) / 32768.0))[0].numpy()
        np.testing.assert_allclose(mixed.features(r)[0], ref, rtol=2e-3, atol=2e-2)
        # the mix is not either drive alone
        assert not np.allclose(mixed.features(r)[0], plain.features(ra)[0], atol=0.1)
    # recorded rows are untouched
    for r in _rows(plain, 'day')[:3]:
        np.testing.assert_array_equal(mixed.features(r), plain.features(r))


def test_mixed_labels_teachers_attention_and_truth_are_the_union(built):
    plain, mixed = built
    both = 0
    for r, ra, rb in _pairs(plain, mixed, 'night', 'day'):
        for get in (lambda d, i: d.labels(i)[0], lambda d, i: d.labels(i)[1], lambda d, i: d.label_support(i)):
            got, a, b = get(mixed, r), get(plain, ra), get(plain, rb)
            np.testing.assert_array_equal(got, np.concatenate([a, b]))
        assert mixed.counts([r])[0] == plain.counts([ra])[0] + plain.counts([rb])[0]
        pa, pb = plain.teacher_present([ra])[0], plain.teacher_present([rb])[0]
        assert mixed.teacher_present([r])[0].tolist() == (pa & pb).tolist()
        # a teacher's detections of the mix: both frames' when it delivered on both, else none (absent)
        got = mixed.teacher_boxes(r, 'thermal')[0]
        if pa[2] and pb[2]:
            want = np.concatenate([plain.teacher_boxes(ra, 'thermal')[0], plain.teacher_boxes(rb, 'thermal')[0]])
            np.testing.assert_array_equal(got, want)
        else:
            assert got.shape == (0, 4)
        for k, m in enumerate(('rgb', 'depth', 'thermal')):
            got = mixed.attention([r], m)[0][0]
            if pa[k] and pb[k]:
                both += 1
                want = plain.attention([ra], m)[0][0] + plain.attention([rb], m)[0][0]
                np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-3)
            else:
                assert not got.any()
        g, ga, gb = mixed.ground_truth(r), plain.ground_truth(ra), plain.ground_truth(rb)
        np.testing.assert_array_equal(g['boxes'], np.concatenate([ga['boxes'], gb['boxes']]))
        assert g['ids'].tolist() == ga['ids'].tolist() + [i + ID_OFFSET for i in gb['ids'].tolist()]
        assert g['audible'].tolist() == ga['audible'].tolist() + gb['audible'].tolist()
    assert both > 0


def test_only_training_drives_are_mixed_and_baselines_can_leave_them_out(built):
    plain, mixed = built
    s = mixed.index['splits']
    assert s['train'] == ['day', 'night', 'day+night', 'night+day'] and s['test'] == ['day2']
    entries = {d['name']: d for d in mixed.drives}
    assert entries['day+night']['mixed_with'] == 'night' and entries['day+night']['clipped_samples'] == 0
    assert 'mixed_with' not in entries['day']
    assert mixed.split_indices('train', mixed=False).tolist() == plain.split_indices('train').tolist()
    assert len(mixed.split_indices('train')) > len(plain.split_indices('train'))
    assert mixed.split_indices('test').tolist() == plain.split_indices('test').tolist()
    assert mixed.verify()


def test_partners_come_from_other_scenarios():
    drives = [(f'{s}-{k}', s) for s in ('a', 'b', 'c') for k in range(3)] + [('d-0', 'd')]
    pairs = mix_partners(drives, 2)
    assert len(pairs) == 2 * len(drives)
    scen = dict(drives)
    assert all(scen[a] != scen[b] for a, b in pairs)
    for name, _ in drives:      # each drive twice, with two different scenarios
        mine = [b for a, b in pairs if a == name]
        assert len(mine) == 2 and len({scen[b] for b in mine}) == 2
    assert ('a-1', 'b-1') in pairs and ('d-0', 'a-0') in pairs and ('c-2', 'd-0') in pairs
    assert mix_partners(drives, 0) == []
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigError, match='--mix'):
            mix_partners(drives, bad)
    with pytest.raises(ConfigError, match='at most 3 copies'):
        mix_partners(drives, 4)
    with pytest.raises(ConfigError, match='two scenarios'):
        mix_partners([('x', 's'), ('y', 's')], 1)


def test_sum_clips_and_frames_without_a_partner_are_counted(bags):
    cfg = BuildConfig(features=('logmel',))
    a, b = read_drive(bags['day'], 'day', cfg), read_drive(bags['night'], 'night', cfg)
    loud = dataclasses.replace(b, audio=dataclasses.replace(b.audio, samples=np.full_like(b.audio.samples, 32700)),
                               frames=b.frames[1:])
    m = mix_drives(a, loud)
    assert m.name == 'day+night' and m.mixed_with == 'night'
    shift = loud.frames[0].window_start - a.frames[0].window_start
    covered = a.audio.samples[:len(a.audio.samples) - shift].astype(np.int32)      # where B's audio lies
    assert shift > 0 and m.clipped_samples == int(np.count_nonzero(covered + 32700 > 32767)) > 0
    assert m.audio.samples.max() == 32767 and m.audio.samples.dtype == np.int16
    # B starts one frame later: the partner of A's frame k is B's frame k (shifted timeline), and A's last
    # frame has none
    assert len(m.frames) == len(a.frames) - 1 and m.skipped == {'mix_unmatched': 1}
    assert [f.stamp_ns for f in m.frames] == [f.stamp_ns for f in a.frames[:-1]]


def test_cli_refuses_bad_mix(bags, tmp_path, capsys):
    for extra, needle in ((['--mix', '-1'], '--mix'), (['--mix', '1'], 'two scenarios')):
        out = tmp_path / 'out'
        rc = main(['dataset', 'build', '--bags', str(bags['day']), '--out', str(out), '--features', 'logmel',
                   '--quiet', *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and needle in err and not out.exists()
