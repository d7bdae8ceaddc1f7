"""bag_recovery: an MCAP bag cut at any byte, or a sqlite3 bag left uncommitted, is recovered to
the messages of its complete chunks / commits; complete bags are left alone; junk is refused."""
import os
import shutil

import numpy as np
import pytest

from mmdistill_common.bag_recovery import recover_bag
from mmdistill_common.bagio import BagReader, BagWriter
from mmdistill_common.conversions import audio_info, audio_to_msg, msg_to_audio
from mmdistill_common.errors import InputError


def _write_killed(path, storage, n=60, flush_every=10):
    """A bag whose writer flushed every ``flush_every`` messages and then 'died' (never closed)."""
    w = BagWriter(path, storage=storage, flush_period_s=1e9)
    w.write('/sensors/mic_array/audio_info', audio_info(8, 44100), 0)
    for k in range(n):
        w.write('/sensors/mic_array/audio', audio_to_msg(np.full((441, 8), k, np.int16), 10**9 + k * 10**7),
                10**9 + k * 10**7)
        if (k + 1) % flush_every == 0:
            w.flush()
    if storage == 'sqlite3':
        w._writer.storage.conn.close()      # a dead process: the open transaction is never committed
    return w


def _audio_indices(bag):
    with BagReader(bag) as r:
        return [int(msg_to_audio(m.msg, 8)[0, 0]) for m in r.messages(['/sensors/mic_array/audio'])]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_killed_writer_recovers_flushed_messages(tmp_path, storage):
    _write_killed(tmp_path / 'bag', storage, n=65)
    with pytest.raises(InputError, match='incomplete bag .* run mmdistill bag recover'):
        BagReader(tmp_path / 'bag')
    report = recover_bag(tmp_path / 'bag')
    assert report.status == 'recovered' and report.messages['/sensors/mic_array/audio'] == 60
    assert _audio_indices(tmp_path / 'bag') == list(range(60))
    assert recover_bag(tmp_path / 'bag').status == 'complete'      # idempotent


def test_mcap_cut_at_any_byte_recovers_a_prefix(tmp_path):
    _write_killed(tmp_path / 'src', 'mcap', n=40)
    data = (tmp_path / 'src' / 'src.mcap').read_bytes()
    best = 0
    for cut in sorted({len(data)} | set(np.linspace(200, len(data), 25).astype(int).tolist())):
        bag = tmp_path / f'cut{cut}'
        bag.mkdir()
        (bag / 'src.mcap').write_bytes(data[:cut])
        try:
            recover_bag(bag)
        except InputError as exc:               # before the first complete chunk
            assert 'no complete chunk' in str(exc)
            continue
        got = _audio_indices(bag)
        assert got == list(range(len(got))) and len(got) >= best
        best = len(got)
        shutil.rmtree(bag)
    assert best == 40


def test_recover_refuses_non_bags(tmp_path):
    with pytest.raises(InputError):
        recover_bag(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(InputError, match='one .mcap or .db3'):
        recover_bag(tmp_path / 'empty')
    (tmp_path / 'junk').mkdir()
    (tmp_path / 'junk' / 'junk.mcap').write_bytes(os.urandom(5000))
    with pytest.raises(InputError, match='no complete chunk'):
        recover_bag(tmp_path / 'junk')
    assert sorted(p.name for p in (tmp_path / 'junk').iterdir()) == ['junk.mcap']


def test_closed_bag_truncated_later_is_rebuilt(tmp_path):
    w = _write_killed(tmp_path / 'bag', 'mcap', n=40)
    w.close()
    f = tmp_path / 'bag' / 'bag.mcap'
    f.write_bytes(f.read_bytes()[:f.stat().st_size * 2 // 3])       # a copy cut short, metadata intact
    with pytest.raises(InputError):
        BagReader(tmp_path / 'bag')
    report = recover_bag(tmp_path / 'bag')
    assert report.status == 'recovered' and (tmp_path / 'bag' / 'metadata.yaml.damaged').exists()
    got = _audio_indices(tmp_path / 'bag')
    assert 0 < len(got) < 40 and got == list(range(len(got)))


def test_sqlite3_commits_every_mib(tmp_path):
    """sqlite3 commits at least every MiB, as MCAP closes its 1-MiB chunks: a writer killed without any
    timed flush loses less than a MiB (the kill campaign lost up to 411 sim messages, one second of
    writing, when only the timer committed)."""
    w = _write_killed(tmp_path / 'bag', 'sqlite3', n=400, flush_every=10**9)
    per_message = w.bytes_written / 401
    report = recover_bag(tmp_path / 'bag')
    recovered = report.messages.get('/sensors/mic_array/audio', 0)
    assert _audio_indices(tmp_path / 'bag') == list(range(recovered))
    assert 0 < (400 - recovered) * per_message < (1 << 20), (recovered, per_message)
