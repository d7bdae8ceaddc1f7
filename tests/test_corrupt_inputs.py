"""Corrupt files handed to the CLIs: each case gets one line ``mmdistill <cmd>: error: ...``, exit
status 2, and nothing is written or overwritten (the README's corrupt-file table lists these
cases; ``MMDISTILL_CORRUPT_REPORT=FILE`` writes each case's outcome as JSON)."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mmdistill_training.cli import main

RESULTS = {}


@pytest.fixture(scope='module', autouse=True)
def _report():
    yield
    path = os.environ.get('MMDISTILL_CORRUPT_REPORT')
    if path:
        Path(path).write_text(json.dumps(RESULTS, indent=2) + '\n')


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    """A labelled bag, a sqlite3 bag, a dataset built from it and a student checkpoint."""
    from mmdistill_student.checkpoint import save_checkpoint
    from mmdistill_student.model import StudentConfig, StudentDetector
    from mmdistill_training.dataset_build import BuildConfig, build_dataset
    from mmdistill_training.labelled_bag import short_scenario, write_oracle_bag
    root = tmp_path_factory.mktemp('good')
    write_oracle_bag(short_scenario('day-driving', 1.6, 16000), root / 'bag', dropout=0.0)
    build_dataset([root / 'bag'], root / 'ds', BuildConfig(features=('logmel',)), progress=False)
    torch.manual_seed(0)
    save_checkpoint(StudentDetector(StudentConfig(frontend={'sample_rate': 16000})), root / 'ckpt')
    from mmdistill_training.commands.sim import load, write_bag
    import argparse
    sc = load(argparse.Namespace(scenario='day-static', seed=0, duration=1.0))
    write_bag(sc, root / 'sqlbag', storage='sqlite3', images=False, progress=False)
    return root


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob('*')}


def _copy(good: Path, name: str, tmp: Path) -> Path:
    dst = tmp / name
    (shutil.copytree if (good / name).is_dir() else shutil.copy)(good / name, dst)
    return dst


def _truncate(path: Path, frac: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * frac)])


def _scribble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = os.urandom(min(4096, len(data) - mid))
    path.write_bytes(bytes(data))


# case id -> (what is wrong, how to make it from the good files, command line with {X} = the damaged input)
def _bag_truncated(g, t):
    b = _copy(g, 'bag', t)
    _truncate(next(b.glob('*.mcap')))
    return b


def _bag_scribbled(g, t):
    b = _copy(g, 'bag', t)
    _scribble(next(b.glob('*.mcap')))
    return b


def _bag_no_metadata(g, t):
    b = _copy(g, 'bag', t)
    (b / 'metadata.yaml').unlink()
    return b


def _bag_bad_metadata(g, t):
    b = _copy(g, 'bag', t)
    (b / 'metadata.yaml').write_text('rosbag2_bagfile_information: [1, 2\n')
    return b


def _sqlite_truncated(g, t):
    b = _copy(g, 'sqlbag', t)
    _truncate(next(b.glob('*.db3')), 0.3)
    return b


def _not_a_bag(g, t):
    (t / 'junk').mkdir()
    (t / 'junk' / 'junk.mcap').write_bytes(os.urandom(3000))
    return t / 'junk'


def _rewrite_weights(c: Path, tensors=None, header=None) -> None:
    """Replace the tensors or the metadata header of ``c/model.safetensors`` (what loading trusts;
    ``checkpoint.json`` is a copy for people)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(c / 'model.safetensors'), framework='pt') as f:
        meta = f.metadata()
        own = {k: f.get_tensor(k) for k in f.keys()}
    if header is not None:
        meta = {k: header(v) for k, v in meta.items()}
    save_file(own if tensors is None else tensors, str(c / 'model.safetensors'), metadata=meta)


def _ckpt_wrong_shapes(g, t):
    from mmdistill_student.model import StudentConfig, StudentDetector
    c = _copy(g, 'ckpt', t)
    other = StudentDetector(StudentConfig(frontend={'sample_rate': 16000}, head_width=16)).state_dict()
    _rewrite_weights(c, tensors={k: v.contiguous() for k, v in other.items()})
    return c


def _ckpt_bad_json(g, t):
    c = _copy(g, 'ckpt', t)
    _rewrite_weights(c, header=lambda v: v[:-40])
    return c


def _ckpt_wrong_types(g, t):
    c = _copy(g, 'ckpt', t)

    def edit(v):
        meta = json.loads(v)
        meta['config'].update(head_width='wide', strides='8,16')
        return json.dumps(meta)
    _rewrite_weights(c, header=edit)
    return c


def _ckpt_missing_weights(g, t):
    c = _copy(g, 'ckpt', t)
    (c / 'model.safetensors').unlink()
    return c


def _ckpt_truncated_weights(g, t):
    c = _copy(g, 'ckpt', t)
    _truncate(c / 'model.safetensors', 0.6)
    return c


def _ds_missing_shard(g, t):
    d = _copy(g, 'ds', t)
    (d / 'labels_boxes.npy').unlink()
    return d


def _ds_short_shard(g, t):
    d = _copy(g, 'ds', t)
    feats = sorted(d.glob('features*.npy')) or sorted(d.glob('*.npy'))
    _truncate(max(feats, key=lambda p: p.stat().st_size), 0.5)
    return d


def _ds_bad_index(g, t):
    d = _copy(g, 'ds', t)
    (d / 'index.json').write_text('{"n_frames": "many"')
    return d


def _scenario_wrong_types(g, t):
    p = t / 'scenario.yaml'
    p.write_text('name: broken\nduration_s: long\nseed: 1.5\ntraffic: {vehicles_per_minute: [3]}\n')
    return p


def _scenario_bad_yaml(g, t):
    p = t / 'scenario.yaml'
    p.write_text('name: broken\nroad: {lanes: [\n')
    return p


def _config_wrong_types(g, t):
    p = t / 'config.yaml'
    p.write_text('name: broken\nstage: distill\noptim: {epochs: many, lr: [1]}\n')
    return p


def _config_not_mapping(g, t):
    p = t / 'config.yaml'
    p.write_text('- just\n- a list\n')
    return p


CASES = {
    'bag truncated (MCAP cut in half) -> dataset build': (_bag_truncated, ['dataset', 'build', '--quiet', '--bags', '{X}', '--out', '{OUT}']),
    'bag truncated -> label': (_bag_truncated, ['label', '--no-progress', '--bag', '{X}', '--teachers', '{G}/teachers', '--out', '{OUT}']),
    'bag truncated -> replay-eval': (_bag_truncated, ['replay-eval', '--bag', '{X}', '--checkpoint', '{G}/ckpt',
                                                      '--out', '{OUT}.json', '--offline']),
    'bag with 4 KiB of random bytes in a chunk -> dataset build': (_bag_scribbled, ['dataset', 'build', '--quiet', '--bags', '{X}', '--out', '{OUT}']),
    'bag without metadata.yaml (killed writer) -> dataset build': (_bag_no_metadata, ['dataset', 'build', '--quiet', '--bags', '{X}', '--out', '{OUT}']),
    'bag with unparsable metadata.yaml -> dataset build': (_bag_bad_metadata, ['dataset', 'build', '--quiet', '--bags', '{X}', '--out', '{OUT}']),
    'sqlite3 bag truncated -> dataset build': (_sqlite_truncated, ['dataset', 'build', '--quiet', '--bags', '{X}', '--out', '{OUT}']),
    'random bytes as a bag -> bag recover': (_not_a_bag, ['bag', 'recover', '{X}']),
    'checkpoint with wrong tensor shapes -> export': (_ckpt_wrong_shapes, ['export', '--checkpoint', '{X}', '--out', '{OUT}.onnx']),
    'checkpoint with wrong tensor shapes -> evaluate': (_ckpt_wrong_shapes, ['evaluate', '--checkpoint', '{X}', '--dataset', '{G}/ds', '--out', '{OUT}.json']),
    'checkpoint metadata JSON cut short (tampered) -> export': (_ckpt_bad_json, ['export', '--checkpoint', '{X}', '--out', '{OUT}.onnx']),
    'checkpoint metadata with wrong types -> export': (_ckpt_wrong_types, ['export', '--checkpoint', '{X}', '--out', '{OUT}.onnx']),
    'checkpoint without model.safetensors -> evaluate': (_ckpt_missing_weights, ['evaluate', '--checkpoint', '{X}', '--dataset', '{G}/ds', '--out', '{OUT}.json']),
    'checkpoint with truncated model.safetensors -> replay-eval': (_ckpt_truncated_weights, ['replay-eval', '--bag', '{G}/bag', '--checkpoint', '{X}', '--out', '{OUT}.json', '--offline']),
    'dataset with a missing shard -> train': (_ds_missing_shard, ['train', '--config', 'student', '--dataset', '{X}', '--out', '{OUT}']),
    'dataset with a short shard -> train': (_ds_short_shard, ['train', '--config', 'student', '--dataset', '{X}', '--out', '{OUT}']),
    'dataset with a short shard -> evaluate': (_ds_short_shard, ['evaluate', '--checkpoint', '{G}/ckpt', '--dataset', '{X}', '--out', '{OUT}.json']),
    'dataset with a broken index.json -> train': (_ds_bad_index, ['train', '--config', 'student', '--dataset', '{X}', '--out', '{OUT}']),
    'scenario with wrong types -> sim': (_scenario_wrong_types, ['sim', '--scenario', '{X}', '--out', '{OUT}']),
    'scenario with a YAML syntax error -> sim': (_scenario_bad_yaml, ['sim', '--scenario', '{X}', '--out', '{OUT}']),
    'training config with wrong types -> train': (_config_wrong_types, ['train', '--config', '{X}', '--dataset', '{G}/ds', '--out', '{OUT}']),
    'training config that is not a mapping -> train': (_config_not_mapping, ['train', '--config', '{X}', '--dataset', '{G}/ds', '--out', '{OUT}']),
}


@pytest.mark.parametrize('case', list(CASES))
def test_corrupt_input_one_line_exit_2_nothing_written(case, good, tmp_path, capsys):
    make, argv = CASES[case]
    if '{G}/teachers' in ' '.join(argv) and not (good / 'teachers').exists():
        from mmdistill_teachers.testing import save_sharp_teachers
        save_sharp_teachers(good / 'teachers')
    bad = make(good, tmp_path)
    out = tmp_path / 'out'
    argv = [a.replace('{X}', str(bad)).replace('{G}', str(good)).replace('{OUT}', str(out)) for a in argv]
    before, good_before = _snapshot(tmp_path), _snapshot(good)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:            # argparse
        rc = exc.code
    err = capsys.readouterr().err.strip()
    RESULTS[case] = {'exit_status': rc, 'message': err}
    cmd = argv[0]
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f'mmdistill {cmd}: error: '), err
    assert _snapshot(tmp_path) == before, 'something was written next to the input'
    assert _snapshot(good) == good_before
