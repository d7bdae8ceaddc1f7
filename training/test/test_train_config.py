"""Training config validation: defaults, inheritance, one-line errors for every kind of mistake."""
import pytest

from mmdistill_common.errors import ConfigError
from mmdistill_training.train_config import DEFAULTS, config_dir, load_train_config, validate


def test_defaults_are_valid_and_complete():
    cfg = validate({})
    assert cfg.stage == 'distill' and cfg.loss['distill'] == 'mta'
    assert cfg.to_dict()['optim'] == DEFAULTS['optim']


@pytest.mark.parametrize('name', sorted(p.stem for p in config_dir().glob('*.yaml')))
def test_every_shipped_config_loads(name):
    cfg = load_train_config(name)
    assert cfg.name


def test_inheritance_and_overrides():
    cfg = load_train_config('single-thermal', {'optim': {'epochs': 3}})
    assert cfg.targets == 'thermal' and cfg.loss['teachers'] == ['thermal']
    assert cfg.optim['epochs'] == 3 and cfg.optim['lr'] == DEFAULTS['optim']['lr']
    assert cfg.features is None                              # every group of the dataset (defaults)
    assert load_train_config('spectrogram').features == ['logmel', 'ild', 'gcc']
    assert load_train_config('upper-bound').targets == 'ground_truth'


@pytest.mark.parametrize('raw, match', [
    ({'optim': {'lrr': 1}}, r'optim\.lrr: unknown key'),
    ({'loss': {'distill': 'kl'}}, r'loss\.distill'),
    ({'loss': {'quality': 'giou'}}, r'loss\.quality'),
    ({'features': ['ild']}, 'features'),
    ({'features': ['srp', 'logmel']}, 'features'),
    ({'loss': {'teachers': ['ground_truth']}}, r'loss\.teachers'),
    ({'mics': [0, 0]}, 'mics'),
    ({'optim': {'batch_size': 0}}, r'optim\.batch_size'),
    ({'optim': {'epochs': 2.5}}, r'optim\.epochs: expected an integer'),
    ({'targets': 'lidar'}, 'targets'),
    ({'loss': {'teachers': []}}, r'loss\.teachers'),
    ({'optim': 3}, 'optim: expected a mapping'),
    ({'stage': 'finetune'}, 'stage'),
    ({'optim': {'schedule': 'step'}}, r'optim\.schedule'),
    ({'optim': {'ema': 1.0}}, r'optim\.ema'),
    ({'optim': {'ema': True}}, r'optim\.ema'),
])
def test_errors_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        validate(raw)


def test_file_errors(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('optim: {lr: [\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_train_config(str(bad))
    with pytest.raises(ConfigError, match='not found'):
        load_train_config(str(tmp_path / 'missing.yaml'))
    typo = tmp_path / 'typo.yaml'
    typo.write_text('loss: {distil_weight: 0.1}\n')
    with pytest.raises(ConfigError, match=r'typo\.yaml: loss\.distil_weight: unknown key'):
        load_train_config(str(typo))


def test_quality_choices_are_the_heads():
    from mmdistill_teachers.head import QUALITY_TARGETS as head_choices
    from mmdistill_training.train_config import QUALITY_TARGETS
    assert QUALITY_TARGETS == head_choices
