"""README tables and bringup YAML must match the code they describe (tools/gen_docs.py regenerates them)."""
import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('gen_docs', ROOT / 'tools' / 'gen_docs.py')
gen_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_docs)


def test_readme_generated_sections_are_current():
    text = (ROOT / 'README.md').read_text()
    assert gen_docs.render_readme(text) == text, 'README.md is stale: run python tools/gen_docs.py'


def test_bringup_yaml_matches_declarations():
    from mmdistill_common.params import check_values
    for node, (params, fname) in gen_docs.node_params().items():
        data = yaml.safe_load((ROOT / 'mmdistill_bringup' / 'config' / fname).read_text())
        values = data[node]['ros__parameters']
        assert set(values) == {p.name for p in params}, f'{fname}: keys differ from {node} declarations'
        check_values(params, values)


def test_readme_lists_every_cli_command():
    from mmdistill_training.cli import COMMANDS
    text = (ROOT / 'README.md').read_text()
    for name in COMMANDS:
        assert f'`mmdistill {name}' in text, f'README does not document mmdistill {name}'
