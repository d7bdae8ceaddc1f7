"""Launch files, the runner and the parameter YAML describe the same graphs (mmdistill_bringup.graphs).

``launch`` is not installed in pip mode, so the launch files are parsed with ``ast`` and their
Node / DeclareLaunchArgument / IncludeLaunchDescription calls evaluated symbolically.
"""
import ast
from pathlib import Path

import pytest
import yaml

from mmdistill_bringup import graphs
from mmdistill_bringup.graphs import Arg
from mmdistill_bringup.runner import node_kwargs, parse_override
from mmdistill_common.errors import ConfigError
from mmdistill_common.params import check_values

ROOT = Path(__file__).resolve().parents[1]


class LaunchEval:
    """Evaluate the body of generate_launch_description() into plain data."""

    def __init__(self, path: Path):
        tree = ast.parse(path.read_text())
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description')
        self.env = {}
        for stmt in fn.body:
            if isinstance(stmt, ast.Assign):
                self.env[stmt.targets[0].id] = self.ev(stmt.value)
            elif isinstance(stmt, ast.Return):
                self.actions = self.ev(stmt.value)

    def ev(self, n):
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, (ast.List, ast.Tuple)):
            return [self.ev(e) for e in n.elts]
        if isinstance(n, ast.Dict):
            return {self.ev(k): self.ev(v) for k, v in zip(n.keys, n.values)}
        if isinstance(n, ast.Name):
            return self.env[n.id]
        assert isinstance(n, ast.Call), ast.dump(n)
        name = n.func.id
        args = [self.ev(a) for a in n.args]
        kw = {k.arg: self.ev(k.value) for k in n.keywords}
        if name == 'LaunchConfiguration':
            return Arg(args[0])
        if name == 'FindPackageShare':
            return ('share', args[0])
        if name == 'PathJoinSubstitution':
            parts = args[0]
            assert parts[0] == ('share', graphs.PACKAGE)
            return tuple([graphs.PACKAGE] + parts[1:])
        if name in ('PythonLaunchDescriptionSource', 'LaunchDescription'):
            return args[0]
        if name in ('IfCondition', 'EqualsSubstitution'):
            return (name,) + tuple(args)
        return {'call': name, 'args': args, **kw}

    def calls(self, name):
        return [a for a in self.actions if a['call'] == name]


def launch(job):
    return LaunchEval(ROOT / 'launch' / f'{job}.launch.py')


def expected_node(spec):
    file_arg = 'sim_params_file' if spec is graphs.SIM_NODE else 'params_file'
    params = [Arg(file_arg)] + ([dict(spec.parameters)] if spec.parameters else [])
    return {'package': spec.package, 'executable': spec.executable, 'name': spec.name,
            'namespace': spec.namespace, 'parameters': params,
            'remappings': [list(r) for r in spec.remappings] or None}


def launched_node(call):
    return {'package': call['package'], 'executable': call['executable'], 'name': call['name'],
            'namespace': call.get('namespace'), 'parameters': call['parameters'],
            'remappings': call.get('remappings')}


@pytest.mark.parametrize('job', ['car', 'record'])
def test_launch_nodes_match_graph(job):
    lf = launch(job)
    assert [launched_node(c) for c in lf.calls('Node')] == [expected_node(s) for s in graphs.GRAPHS[job]]


@pytest.mark.parametrize('job', graphs.JOBS)
def test_launch_arguments_match_graph(job):
    got = [(c['args'][0], c['default_value'], c['description'], tuple(c.get('choices') or ()))
           for c in launch(job).calls('DeclareLaunchArgument')]
    want = [(a.name, a.default, a.description, a.choices) for a in graphs.launch_args(job)]
    assert got == want
    # every Arg a node uses is declared (in the job, or for sim in the fed graph)
    declared = {a.name for a in graphs.launch_args(job)}
    for g in (graphs.GRAPHS if job == 'sim' else [job]):
        specs = graphs.graph_nodes(job, g)
        extra = {a.name for a in graphs.launch_args(g)} if job == 'sim' else set()
        for s in specs:
            used = [v for _, v in s.parameters + s.remappings if isinstance(v, Arg)] + \
                [s.namespace] * (s.namespace is not None)
            assert {a.name for a in used} <= declared | extra | {'params_file', 'sim_params_file'}, s.name


def test_sim_launch_feeds_either_graph():
    lf = launch('sim')
    assert [launched_node(c) for c in lf.calls('Node')] == [expected_node(graphs.SIM_NODE)]
    includes = {c['args'][0][-1]: c['condition'] for c in lf.calls('IncludeLaunchDescription')}
    assert includes == {f'{g}.launch.py': ('IfCondition', ('EqualsSubstitution', Arg('graph'), g))
                        for g in graphs.GRAPHS}
    for g in graphs.GRAPHS:
        assert graphs.graph_nodes('sim', g) == (graphs.SIM_NODE,) + graphs.GRAPHS[g]


@pytest.mark.parametrize('fname', graphs.params_files())
def test_yaml_generated_and_keys_match_params(fname):
    text = (ROOT / 'config' / fname).read_text()
    assert text == graphs.render_params_yaml(fname), f'{fname} drifted: regenerate with tools/gen_docs.py'
    doc = yaml.safe_load(text)
    specs = [s for s in (graphs.SIM_NODE,) + graphs.GRAPHS['car'] + graphs.GRAPHS['record'] if s.params_file == fname]
    assert set(doc) == {graphs.yaml_key(s) for s in specs}
    for s in specs:
        values = doc[graphs.yaml_key(s)]['ros__parameters']
        assert set(values) == {p.name for p in graphs.node_params(s.module)}, s.name
        check_values(graphs.node_params(s.module), values)
        for k, v in s.parameters:                       # fixed per-instance values are in the YAML too
            if not isinstance(v, Arg):
                assert values[k] == v


def test_node_classes_found():
    for spec in (graphs.SIM_NODE,) + graphs.GRAPHS['car'] + graphs.GRAPHS['record']:
        cls = graphs.node_class(spec.module)
        assert cls.__module__ == spec.module


def _cli(kwargs):
    cli = kwargs['cli_args']
    remaps = [cli[i + 1] for i, a in enumerate(cli) if a == '-r']
    return cli[cli.index('--params-file') + 1], remaps


@pytest.mark.parametrize('job,graph', [('car', 'car'), ('record', 'car'), ('sim', 'car'), ('sim', 'record')])
def test_runner_builds_what_launch_declares(ros, job, graph):
    """Runner kwargs with default arguments = the launch files' nodes with their argument defaults."""
    built = node_kwargs(job, graph)
    specs = graphs.graph_nodes(job, graph)
    assert [s for s, _ in built] == list(specs)
    defaults = graphs.default_args(job, graph)
    for spec, kw in built:
        pfile, remaps = _cli(kw)
        file_arg = 'sim_params_file' if spec is graphs.SIM_NODE else 'params_file'
        assert Path(pfile) == graphs.config_dir() / spec.params_file == Path(defaults[file_arg])
        assert remaps[0] == f'__node:={spec.name}'
        overrides = {p.name: p.value for p in kw['parameter_overrides']}
        assert set(overrides) == {k for k, _ in spec.parameters}
        assert 'namespace' not in kw                       # default namespace '' = none
    # arguments reach the same places as in the launch files, typed by the declarations
    built = dict((s.name, kw) for s, kw in node_kwargs('car', args={'rate': '5', 'audio_topic': '/mic',
                                                                     'namespace': 'car1', 'tracker': 'iou'}))
    st = built['student_node']
    assert _cli(st)[1] == ['__node:=student_node', '/sensors/mic_array/audio:=/mic']
    assert {p.name: p.value for p in st['parameter_overrides']}['rate'] == 5.0
    assert st['namespace'] == 'car1' and built['tracking_node']['namespace'] == 'car1'
    assert {p.name: p.value for p in built['tracking_node']['parameter_overrides']}['tracker'] == 'iou'
    rec = dict((s.name, kw) for s, kw in node_kwargs('record', overrides={'teacher_depth': {'queue_depth': '3'}}))
    assert {p.name: p.value for p in rec['teacher_depth']['parameter_overrides']} == \
        {'modality': 'depth', 'teachers_dir': '', 'queue_depth': 3}


def test_runner_rejects_bad_input(ros, tmp_path):
    with pytest.raises(ConfigError, match='no launch argument'):
        node_kwargs('car', args={'nope': '1'})
    with pytest.raises(ConfigError, match="no node named 'ghost'"):
        node_kwargs('car', overrides={'ghost': {'x': 1}})
    with pytest.raises(ConfigError, match='has no parameter'):
        node_kwargs('car', overrides={'student_node': {'nope': 1}})
    with pytest.raises(ConfigError, match='must be float'):
        node_kwargs('car', args={'rate': 'fast'})
    with pytest.raises(ConfigError, match='does not exist'):
        node_kwargs('car', params_file=str(tmp_path / 'missing.yaml'))
    with pytest.raises(ConfigError, match='node.param:=value'):
        parse_override('student_node:=3')
    assert parse_override('a.b:=c:=d') == ('a', 'b', 'c:=d')


def test_rviz_config_shows_tracking_topics():
    cfg = yaml.safe_load((ROOT / 'config' / 'mmdistill.rviz').read_text())
    displays = {d['Class']: d for d in cfg['Visualization Manager']['Displays']}
    assert displays['rviz_default_plugins/MarkerArray']['Topic']['Value'] == '/tracking/markers'
    assert displays['rviz_default_plugins/Image']['Topic']['Value'] == '/tracking/image'


@pytest.mark.ros
def test_runner_process_runs_car_graph_and_stops_on_sigint(ros, tmp_path):
    """``mmdistill-bringup car`` brings the lifecycle student up (autostart) in a namespace and
    exits 0 on SIGINT."""
    import subprocess
    import sys
    import time

    import rclpy
    import torch
    from mmdistill_common.testing import stop_process
    from mmdistill_student.checkpoint import save_checkpoint
    from mmdistill_student.model import StudentConfig, StudentDetector
    torch.manual_seed(0)
    save_checkpoint(StudentDetector(StudentConfig(encoder=dict(widths=(8, 16), embed_dim=32, out_channels=16),
                                                  head_width=16, head_convs=1)), tmp_path / 'ckpt')
    proc = subprocess.Popen([sys.executable, '-m', 'mmdistill_bringup.runner', 'car', f'checkpoint:={tmp_path / "ckpt"}',
                             'namespace:=car1', '-p', 'tracking_node.tracker:=iou'],
                            stderr=subprocess.PIPE, text=True)
    probe = rclpy.create_node('runner_probe')
    try:
        want = {('student_node', '/car1'), ('tracking_node', '/car1')}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not want <= set(probe.get_node_names_and_namespaces()):
            rclpy.spin_once(probe, timeout_sec=0.1)
        assert want <= set(probe.get_node_names_and_namespaces())
        # the student subscribes to the audio (it is configured and active)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (probe.count_publishers('/student/detections') < 1
                                               or probe.count_subscribers('/sensors/mic_array/audio') < 1):
            rclpy.spin_once(probe, timeout_sec=0.1)
        assert probe.count_subscribers('/sensors/mic_array/audio') >= 1
        assert probe.count_publishers('/student/detections') >= 1
    finally:
        probe.destroy_node()
        rc = stop_process(proc, timeout=15)
    err = proc.stderr.read()
    assert rc == 0, err
    assert 'Traceback' not in err
