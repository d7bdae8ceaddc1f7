"""The ``mmdistill`` entry point: every subcommand's parser is built for every command line, so
building them must stay cheap (each simulated drive of the demo is one ``mmdistill sim`` process)."""
import subprocess
import sys


def test_building_the_parser_imports_no_torch():
    code = ('import sys; from mmdistill_training.cli import build_parser; build_parser(); '
            'print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'
