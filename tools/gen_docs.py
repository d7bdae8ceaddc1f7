"""Regenerate the README sections and bringup YAML that derive from code.

Sections in README.md between ``<!-- BEGIN generated:NAME -->`` and
``<!-- END generated:NAME -->`` and the files in ``mmdistill_bringup/config/``
come from the parameter declarations and the scenario schema; ``tests/test_docs.py``
fails when they drift. Run: ``python tools/gen_docs.py``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def node_params():
    """node executable -> (module PARAMS, bringup YAML file), from the graph table of
    ``mmdistill_bringup.graphs`` (the one place that lists the nodes of every job)."""
    from mmdistill_bringup import graphs
    out = {}
    for spec in (graphs.SIM_NODE,) + tuple(graphs.GRAPHS['car']) + tuple(graphs.GRAPHS['record']):
        out.setdefault(spec.executable, (graphs.node_params(spec.module), spec.params_file))
    return out


def sections() -> dict:
    from mmdistill_common.params import markdown_table
    from mmdistill_sim.scenario import schema_markdown
    out = {'scenario-schema': schema_markdown().rstrip('\n')}
    for node, (params, _) in node_params().items():
        out[f'params-{node}'] = markdown_table(params)
    return out


def config_files() -> dict:
    from mmdistill_bringup.graphs import params_files, render_params_yaml
    return {f'mmdistill_bringup/config/{f}': render_params_yaml(f) for f in params_files()}


def render_readme(text: str) -> str:
    for name, body in sections().items():
        pattern = re.compile(rf'(<!-- BEGIN generated:{re.escape(name)} -->\n)(?:.*?\n)?(<!-- END generated:{re.escape(name)} -->)', re.S)
        if not pattern.search(text):
            raise SystemExit(f'README.md lacks the markers for section {name}')
        text = pattern.sub(lambda m: m.group(1) + body + '\n' + m.group(2), text)
    return text


def main() -> int:
    readme = ROOT / 'README.md'
    readme.write_text(render_readme(readme.read_text()))
    for rel, content in config_files().items():
        (ROOT / rel).write_text(content)
    print('README.md and bringup config regenerated')
    return 0


if __name__ == '__main__':
    sys.exit(main())
