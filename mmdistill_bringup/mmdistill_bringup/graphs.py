"""The node graphs of the three jobs (car, record, sim), described once.

The single-process runner (:mod:`mmdistill_bringup.runner`) builds its nodes from
these tables; the launch files in ``launch/`` spell out the same nodes for
``ros2 launch`` (launch cannot import this module's data at test time in pip
mode, so ``test/test_graphs.py`` parses the launch files and compares them with
these tables), and the parameter YAML in ``config/`` is rendered from the nodes'
``PARAMS`` with :func:`render_params_yaml`.

Conventions
-----------
* Each node reads one section of its job's YAML, keyed ``/**/<node name>`` so that
  it also matches when the graph runs in a namespace.
* Launch arguments override the YAML (as in ``ros2 launch``); their defaults are the
  nodes' declared defaults, so an unchanged launch behaves like the YAML defaults.
* A value ``Arg('x')`` stands for the launch argument ``x`` (``LaunchConfiguration('x')``).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from mmdistill_common import topics

__all__ = ['Arg', 'LaunchArg', 'NodeSpec', 'JOBS', 'GRAPHS', 'SIM_NODE', 'graph_nodes',
           'launch_args', 'node_class', 'node_params', 'config_dir', 'render_params_yaml', 'params_files',
           'yaml_key', 'default_args', 'resolve', 'YAML_HEADER']

YAML_HEADER = '# Generated from the node parameter declarations by tools/gen_docs.py; edit values, keep keys.\n'
PACKAGE = 'mmdistill_bringup'


@dataclass(frozen=True)
class Arg:
    """Reference to a launch argument (``LaunchConfiguration(name)`` in a launch file)."""
    name: str


Value = Union[str, int, float, bool, Arg]


@dataclass(frozen=True)
class NodeSpec:
    """One node of a graph.

    ``module``: Python module holding ``PARAMS`` and the node class (its console script
    / executable is the module's last component). ``params_file``: YAML file in
    ``config/`` (section ``/**/<name>``). ``parameters``: fixed or launch-argument
    values that override the YAML. ``remappings``: ``(from, to)`` topic remaps.
    ``namespace``: ``Arg('namespace')`` where the job takes one.
    """
    package: str
    module: str
    name: str
    params_file: str
    parameters: Tuple[Tuple[str, Value], ...] = ()
    remappings: Tuple[Tuple[str, Value], ...] = ()
    namespace: Optional[Arg] = None

    @property
    def executable(self) -> str:
        return self.module.rsplit('.', 1)[1]

    @property
    def parameter_dict(self) -> Dict[str, Value]:
        return dict(self.parameters)


@dataclass(frozen=True)
class LaunchArg:
    """A launch argument: ``default`` is a string as ``DeclareLaunchArgument`` takes it, or a
    ``(package, 'config', file)`` path into the bringup share directory for parameter files."""
    name: str
    default: Union[str, Tuple[str, ...]]
    description: str
    choices: Tuple[str, ...] = ()


STUDENT = 'mmdistill_student.student_node'
TRACKING = 'mmdistill_tracking.tracking_node'
TEACHER = 'mmdistill_teachers.teacher_node'
PSEUDO = 'mmdistill_teachers.pseudo_label_node'
RECORDER = 'mmdistill_teachers.recorder_node'
SIM = 'mmdistill_sim.sim_node'

SIM_NODE = NodeSpec('mmdistill_sim', SIM, 'sim_node', 'sim.yaml',
                    parameters=(('scenario', Arg('scenario')), ('rate', Arg('sim_rate'))))

GRAPHS: Dict[str, Tuple[NodeSpec, ...]] = {
    'car': (
        NodeSpec('mmdistill_student', STUDENT, 'student_node', 'car.yaml',
                 parameters=(('checkpoint', Arg('checkpoint')), ('rate', Arg('rate'))),
                 remappings=((topics.AUDIO, Arg('audio_topic')),), namespace=Arg('namespace')),
        NodeSpec('mmdistill_tracking', TRACKING, 'tracking_node', 'car.yaml',
                 parameters=(('tracker', Arg('tracker')),), namespace=Arg('namespace')),
    ),
    'record': tuple(
        NodeSpec('mmdistill_teachers', TEACHER, f'teacher_{m}', 'record.yaml',
                 parameters=(('modality', m), ('teachers_dir', Arg('teachers_dir'))))
        for m in topics.CAMERAS) + (
        NodeSpec('mmdistill_teachers', PSEUDO, 'pseudo_label_node', 'record.yaml'),
        NodeSpec('mmdistill_teachers', RECORDER, 'recorder_node', 'record.yaml',
                 parameters=(('output', Arg('output')),)),
    ),
}

JOBS = ('car', 'record', 'sim')


def _param_default(module: str, name: str) -> str:
    """A node parameter's declared default as a launch-argument string."""
    for p in node_params(module):
        if p.name == name:
            if isinstance(p.default, bool):
                return 'true' if p.default else 'false'
            return str(p.default)
    raise KeyError(f'{module} declares no parameter {name!r}')


def launch_args(job: str) -> Tuple[LaunchArg, ...]:
    """The launch arguments of ``<job>.launch.py``, in declaration order."""
    if job == 'car':
        return (
            LaunchArg('params_file', (PACKAGE, 'config', 'car.yaml'), 'Parameter YAML of student_node and tracking_node.'),
            LaunchArg('checkpoint', _param_default(STUDENT, 'checkpoint'), 'Student checkpoint directory (mmdistill train --out).'),
            LaunchArg('rate', _param_default(STUDENT, 'rate'), 'Detections per second (student output grid rate, Hz).'),
            LaunchArg('audio_topic', topics.AUDIO, 'Microphone-array audio topic (AudioDataStamped) the student reads.'),
            LaunchArg('tracker', _param_default(TRACKING, 'tracker'), 'Tracker: the paper\'s IoU tracker or a Kalman tracker.',
                      choices=('iou', 'kalman')),
            LaunchArg('namespace', '', 'Namespace of the two nodes (topics are absolute and stay unchanged).'),
        )
    if job == 'record':
        return (
            LaunchArg('params_file', (PACKAGE, 'config', 'record.yaml'), 'Parameter YAML of the teachers, pseudo_label_node and recorder_node.'),
            LaunchArg('teachers_dir', _param_default(TEACHER, 'teachers_dir'), 'Teachers directory (mmdistill teachers train --out).'),
            LaunchArg('output', _param_default(RECORDER, 'output'), 'Bag directory to create; {stamp} becomes the start time.'),
        )
    if job == 'sim':
        return (
            LaunchArg('graph', 'car', 'Which graph the simulator feeds.', choices=('car', 'record')),
            LaunchArg('scenario', _param_default(SIM, 'scenario'), 'Named scenario or scenario YAML file.'),
            LaunchArg('sim_rate', _param_default(SIM, 'rate'), 'Simulated seconds per wall-clock second.'),
            LaunchArg('sim_params_file', (PACKAGE, 'config', 'sim.yaml'), 'Parameter YAML of sim_node.'),
        )
    raise KeyError(f'unknown job {job!r} (one of {", ".join(JOBS)})')


def graph_nodes(job: str, graph: str = 'car') -> Tuple[NodeSpec, ...]:
    """Nodes of ``job``; the sim job is sim_node plus the ``graph`` it feeds."""
    if job == 'sim':
        if graph not in GRAPHS:
            raise KeyError(f'unknown graph {graph!r} (one of {", ".join(GRAPHS)})')
        return (SIM_NODE,) + GRAPHS[graph]
    if job not in GRAPHS:
        raise KeyError(f'unknown job {job!r} (one of {", ".join(JOBS)})')
    return GRAPHS[job]


def yaml_key(spec: NodeSpec) -> str:
    """YAML section of a node: ``/**/<name>`` (matches in any namespace); plain ``sim_node`` in
    sim.yaml, which tools/gen_docs.py has always written that way."""
    return spec.name if spec.params_file == SIM_NODE.params_file else f'/**/{spec.name}'


# ----------------------------------------------------------------------------- node modules

def node_params(module: str):
    """``PARAMS`` of a node module."""
    return importlib.import_module(module).PARAMS


def node_class(module: str):
    """The rclpy Node (or LifecycleNode) subclass defined in ``module`` (exactly one)."""
    from rclpy.node import Node
    mod = importlib.import_module(module)
    found = [obj for _, obj in inspect.getmembers(mod, inspect.isclass)
             if obj.__module__ == mod.__name__ and issubclass(obj, Node)]
    if len(found) != 1:
        raise LookupError(f'{module} defines {len(found)} Node classes ({[c.__name__ for c in found]}), expected one')
    return found[0]


def config_dir() -> Path:
    """``config/`` of the installed bringup share directory, else the source tree's."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            path = Path(get_package_share_directory(PACKAGE)) / 'config'
            if path.is_dir():
                return path
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    return Path(__file__).resolve().parents[1] / 'config'


def render_params_yaml(params_file: str) -> str:
    """The text of ``config/<params_file>``: every node of every job that reads it, with its
    declared defaults and fixed per-instance values (e.g. a teacher's modality)."""
    import yaml
    doc: Dict[str, Any] = {}
    seen = set()
    for job in ('car', 'record'):
        for spec in GRAPHS[job]:
            if spec.params_file != params_file or spec.name in seen:
                continue
            seen.add(spec.name)
            values = {p.name: p.default for p in node_params(spec.module)}
            values.update({k: v for k, v in spec.parameters if not isinstance(v, Arg)})
            doc[yaml_key(spec)] = {'ros__parameters': values}
    if params_file == SIM_NODE.params_file:
        doc[yaml_key(SIM_NODE)] = {'ros__parameters': {p.name: p.default for p in node_params(SIM)}}
    if not doc:
        raise KeyError(f'no node reads {params_file}')
    return YAML_HEADER + yaml.safe_dump(doc, sort_keys=False)


def params_files() -> List[str]:
    """Every parameter YAML in ``config/`` that :func:`render_params_yaml` generates."""
    out: List[str] = []
    for spec in (SIM_NODE,) + GRAPHS['car'] + GRAPHS['record']:
        if spec.params_file not in out:
            out.append(spec.params_file)
    return out


def resolve(value: Value, args: Dict[str, str]) -> Any:
    """A spec value with launch arguments substituted (strings typed as YAML, like launch_ros)."""
    if isinstance(value, Arg):
        return args[value.name]
    return value


def default_args(job: str, graph: str = 'car') -> Dict[str, Any]:
    """Launch-argument defaults of ``job`` (for sim, also those of the fed graph)."""
    names = list(launch_args(job))
    if job == 'sim':
        names += list(launch_args(graph))
    out: Dict[str, Any] = {}
    for a in names:
        out[a.name] = str(config_dir() / a.default[2]) if isinstance(a.default, tuple) else a.default
    return out
