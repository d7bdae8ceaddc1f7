"""``mmdistill view``: bad input is one ``mmdistill view: error:`` line and exit status 2, before any
server starts; a port that is taken is refused the same way."""
import socket

from mmdistill_training.cli import main


def expect_error(capsys, argv, *words):
    assert main(['view', *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('mmdistill view: error: '), err
    for w in words:
        assert w in err, err


def test_bad_arguments_exit_2(tmp_path, capsys):
    expect_error(capsys, ['--port', '70000'], '--port')
    expect_error(capsys, ['--bag', str(tmp_path / 'none')], 'does not exist')
    expect_error(capsys, ['--checkpoint', str(tmp_path)], '--checkpoint needs --bag')
    (tmp_path / 'old.mcap').write_bytes(b'')
    expect_error(capsys, ['--mcap', str(tmp_path / 'old.mcap')], 'already exists')
    expect_error(capsys, ['--mcap', str(tmp_path / 'no' / 'x.mcap')], 'does not exist')
    expect_error(capsys, ['--duration', '0'], '--duration')
    expect_error(capsys, ['--scenario', 'no-such-place'], 'unknown scenario')
    (tmp_path / 'empty').mkdir()
    expect_error(capsys, ['--bag', str(tmp_path / 'empty')], 'cannot open bag')


def test_taken_port_exits_2(capsys):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen()
        port = s.getsockname()[1]
        expect_error(capsys, ['--port', str(port), '--duration', '0.1'], f'cannot serve on 127.0.0.1:{port}')
