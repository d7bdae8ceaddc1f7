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
    """Every node section of every bringup YAML holds exactly its node's declared parameters,
    with values the declarations accept (mmdistill_bringup/test/test_graphs.py checks the rest)."""
    from mmdistill_bringup import graphs
    from mmdistill_common.params import check_values
    specs = (graphs.SIM_NODE,) + tuple(graphs.GRAPHS['car']) + tuple(graphs.GRAPHS['record'])
    for spec in specs:
        data = yaml.safe_load((ROOT / 'mmdistill_bringup' / 'config' / spec.params_file).read_text())
        values = data[graphs.yaml_key(spec)]['ros__parameters']
        params = graphs.node_params(spec.module)
        assert set(values) == {p.name for p in params}, f'{spec.params_file}: keys differ from {spec.name}'
        check_values(params, values)


def test_readme_lists_every_cli_command():
    from mmdistill_training.cli import COMMANDS
    text = (ROOT / 'README.md').read_text()
    for name in COMMANDS:
        assert f'`mmdistill {name}' in text, f'README does not document mmdistill {name}'
