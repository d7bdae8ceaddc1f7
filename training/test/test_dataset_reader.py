"""DistillDataset: validates the directory on open (one ConfigError line), reads memory-mapped rows."""
import json
import shutil

import numpy as np
import pytest

from mmdistill_common.errors import ConfigError
from mmdistill_training.dataset import DistillDataset
from mmdistill_training.dataset_build import BuildConfig, build_dataset
from mmdistill_training.labelled_bag import short_scenario, write_oracle_bag


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp('reader')
    write_oracle_bag(short_scenario('day-driving', 1.6, 16000), root / 'bag', dropout=0.0)
    build_dataset([root / 'bag'], root / 'ds', BuildConfig(features=('logmel', 'ild')), progress=False)
    return root / 'ds'


def test_reader_api_shapes_and_memory_map(built):
    ds = DistillDataset(built)
    n = len(ds)
    assert n == ds.index['n_frames'] > 0 and isinstance(ds._arrays['features'], np.memmap)
    assert ds.feature_groups == {'logmel': (0, 8), 'ild': (8, 16)}
    f = ds.features(np.arange(n))
    assert f.dtype == np.float32 and f.shape == (n, 16, 80, 63)
    # ILD channels are the log-mel maps minus their mean over microphones
    np.testing.assert_allclose(f[:, 8:], f[:, :8] - f[:, :8].mean(axis=1, keepdims=True), atol=0.05)
    att = ds.attention(np.arange(n), 'thermal')
    w, h = ds.index['image_size']
    assert [a.shape for a in att] == [(n, h // s, w // s) for s in (8, 16, 32)] and att[0].dtype == np.float32
    assert ds.teacher_present(np.arange(n)).all() and ds.counts(np.arange(n)).dtype == np.int64
    assert ds.audio_window(0).dtype == np.int16 and ds.audio_window(0).shape == (16000, 8)
    assert ds.conditions(0)['ego_motion'] == 'driving'
    assert sorted(ds.split_indices('train').tolist()) == list(range(n))
    with pytest.raises(IndexError):
        ds.labels(n)
    with pytest.raises(ConfigError):
        ds.split_indices('holdout')
    with pytest.raises(ConfigError):
        ds.attention([0], 'lidar')
    with pytest.raises(ConfigError):
        ds.features([0], channels=[99])


def _damaged(built, tmp_path, edit):
    d = tmp_path / 'copy'
    shutil.copytree(built, d)
    edit(d)
    with pytest.raises(ConfigError) as exc:
        DistillDataset(d)
    assert '\n' not in str(exc.value)
    return str(exc.value)


def _index(key, value):
    def edit(d):
        ix = json.loads((d / 'index.json').read_text())
        ix[key] = value
        (d / 'index.json').write_text(json.dumps(ix))
    return edit


def test_damaged_directories_are_refused(built, tmp_path):
    assert 'index.json' in _damaged(built, tmp_path / 'a', lambda d: (d / 'index.json').unlink())
    assert 'format_version' in _damaged(built, tmp_path / 'b', _index('format_version', 99))
    assert 'count.npy' in _damaged(built, tmp_path / 'c', lambda d: (d / 'count.npy').unlink())
    assert 'shape' in _damaged(built, tmp_path / 'd', lambda d: np.save(d / 'count.npy', np.zeros(3, np.int16)))
    assert 'dtype' in _damaged(built, tmp_path / 'e',
                               lambda d: np.save(d / 'stamp_ns.npy', np.load(d / 'stamp_ns.npy').astype(np.float64)))
    assert 'feature_groups' in _damaged(built, tmp_path / 'f', _index('feature_groups', {'logmel': [0, 8]}))
    assert 'features.npy: shape' in _damaged(built, tmp_path / 'g', _index('n_frames', 10_000))
    drive = json.loads((built / 'index.json').read_text())['drives'][0]['name']
    assert 'audio' in _damaged(built, tmp_path / 'h', lambda d: (d / 'audio' / f'{drive}.npy').unlink())
    assert DistillDataset(built).verify()      # the original is intact


def test_verify_detects_changed_arrays(built, tmp_path):
    d = tmp_path / 'copy'
    shutil.copytree(built, d)
    assert DistillDataset(d).verify()
    c = np.load(d / 'count.npy')
    c[0] += 1
    np.save(d / 'count.npy', c)
    assert not DistillDataset(d).verify()
