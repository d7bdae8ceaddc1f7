"""Ablation table: per-seed rows aggregated into mean ± std."""
import math

from mmdistill_training.ablate import EXPERIMENTS, aggregate_seeds, format_table, row_dir


def _row(seed, ap, pl):
    return {'name': 'ours', 'group': 'ours', 'seed': seed,
            'ground_truth': {'AP50': ap, 'mAP_avg': ap / 2, 'CDx': 1.0, 'CDy': 2.0},
            'pseudo_labels': {'AP50': pl, 'mAP_avg': pl / 2, 'CDx': 1.0, 'CDy': 2.0},
            'ground_truth_shuffled': {'AP50': 0.01, 'mAP_avg': 0.0, 'CDx': float('nan'), 'CDy': float('nan')}}


def test_mean_and_sample_std_over_seeds():
    row = aggregate_seeds([_row(0, 0.5, 0.6), _row(1, 0.6, 0.7), _row(2, 0.7, 0.8)])
    assert row['seeds'] == [0, 1, 2]
    assert math.isclose(row['ground_truth']['AP50'], 0.6)
    assert math.isclose(row['ground_truth']['AP50_std'], 0.1)
    assert math.isclose(row['pseudo_labels']['AP50'], 0.7)
    assert math.isnan(row['ground_truth_shuffled']['CDx'])
    table = format_table([row])
    assert '| ours | ours | 3 | 0.600 ± 0.100 |' in table


def test_one_seed_has_no_spread_and_rows_cover_the_issue():
    row = aggregate_seeds([_row(0, 0.5, 0.6)])
    assert row['ground_truth']['AP50_std'] == 0.0
    assert '± ' not in format_table([row])
    names = {e.name for e in EXPERIMENTS}
    assert {'ours', 'no-mta', 'ours-no-pretext', 'single-rgb', 'single-depth', 'single-thermal',
            'averaged-teachers', 'mta-reference', 'stereosoundnet', 'spectrogram', 'classical-srp',
            'scene-prior', 'upper-bound'} <= names
    assert row_dir('x', 'ours', 2).as_posix() == 'x/seed-2/ours'


def test_min_label_score_out_of_range_is_one_error_line(tmp_path, capsys):
    from mmdistill_training.cli import main
    rc = main(['ablate', '--dataset', str(tmp_path), '--out', str(tmp_path / 'out'), '--min-label-score', '1.5'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and 'min-label-score' in err


def test_unknown_label_support_is_one_error_line(tmp_path, capsys):
    from mmdistill_training.cli import main
    rc = main(['ablate', '--dataset', str(tmp_path), '--out', str(tmp_path / 'out'), '--label-support', 'sonar'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and 'label-support' in err
    assert not (tmp_path / 'out').exists()
