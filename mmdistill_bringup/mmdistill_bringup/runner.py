"""``mmdistill-bringup``: run a job's whole node graph in one process (pip mode has no ``ros2 launch``).

The nodes, their YAML sections, fixed parameters, launch arguments and remappings
come from :mod:`mmdistill_bringup.graphs`, the same tables the launch files are
checked against, and each node gets the YAML through ``--params-file`` as under
``ros2 launch``. All nodes share one ``SingleThreadedExecutor`` (the pip wheels'
``MultiThreadedExecutor`` is throttled). Lifecycle nodes are configured and
activated here unless their ``autostart`` parameter is false. SIGINT / SIGTERM
(or ``--duration``) end the run; every node is destroyed, so a recorder closes
its bag.

    mmdistill-bringup car checkpoint:=runs/student rate:=10
    mmdistill-bringup sim --graph record scenario:=night-traffic --duration 30
    mmdistill-bringup car -p tracking_node.tracker:=iou --params-file my_car.yaml
    mmdistill-bringup sim --view          # + a Foxglove server on ws://localhost:8765 (mmdistill view)
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mmdistill_common.errors import ConfigError, MmdistillError
from mmdistill_common.node_main import catch_sigint, interrupted_take, settle_signal_thread

from . import graphs
from .graphs import NodeSpec

__all__ = ['Graph', 'node_kwargs', 'build_graph', 'parse_override', 'typed_value', 'spin', 'main']

# parameters every rclpy node declares itself
BUILTIN_PARAMS = {'use_sim_time': False}


def _declared(spec: NodeSpec) -> Dict[str, Any]:
    out = dict(BUILTIN_PARAMS)
    out.update({p.name: p.default for p in graphs.node_params(spec.module)})
    return out


def typed_value(spec: NodeSpec, name: str, value: Any) -> Any:
    """A launch-argument / command-line string converted to the parameter's declared type
    (``ros2 launch`` types strings as YAML; typing by the declaration also keeps ``''`` and
    ``'10'`` for string and float parameters)."""
    declared = _declared(spec)
    if name not in declared:
        raise ConfigError(f'{spec.name} has no parameter {name!r} (it has: {", ".join(sorted(declared))})')
    if not isinstance(value, str):
        return value
    default = declared[name]
    try:
        if isinstance(default, bool):
            low = value.strip().lower()
            if low not in ('true', 'false'):
                raise ValueError(value)
            return low == 'true'
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return value
        import yaml
        return yaml.safe_load(value)
    except ValueError:
        raise ConfigError(f'{spec.name}.{name} must be {type(default).__name__}, got {value!r}') from None


def parse_override(text: str) -> Tuple[str, str, str]:
    """``'node.param:=value'`` -> ``(node, param, value)``."""
    key, sep, value = text.partition(':=')
    node, dot, param = key.partition('.')
    if not sep or not dot or not node or not param:
        raise ConfigError(f'parameter override must look like node.param:=value, got {text!r}')
    return node, param, value


@dataclass
class Graph:
    """The constructed nodes of one job, in graph order."""
    job: str
    specs: Tuple[NodeSpec, ...]
    nodes: List[Any] = field(default_factory=list)

    def node(self, name: str):
        for spec, node in zip(self.specs, self.nodes):
            if spec.name == name:
                return node
        raise KeyError(name)

    def activate(self) -> None:
        """Configure + activate the lifecycle nodes whose ``autostart`` is not false."""
        from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
        for spec, node in zip(self.specs, self.nodes):
            if not isinstance(node, LifecycleNode):
                continue
            if node.has_parameter('autostart') and not node.get_parameter('autostart').value:
                continue
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise ConfigError(f'{spec.name}: configure failed (see its log above)')
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                raise ConfigError(f'{spec.name}: activate failed (see its log above)')

    def destroy(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.destroy_node()
            except Exception as exc:  # keep destroying the others (a recorder must close its bag)
                print(f'mmdistill-bringup: destroying {node.get_name()}: {exc}', file=sys.stderr)
        self.nodes.clear()


def node_kwargs(job: str, graph: str = 'car', args: Optional[Mapping[str, str]] = None,
                params_file: Optional[str] = None, overrides: Optional[Mapping[str, Mapping[str, Any]]] = None
                ) -> List[Tuple[NodeSpec, Dict[str, Any]]]:
    """Per node of ``job``: the keyword arguments its class is constructed with (``cli_args`` with
    ``--params-file``, the node-name and topic remaps; ``parameter_overrides``; ``namespace``).
    ``args``: launch arguments (``checkpoint``, ``rate``, ...), defaults as in the launch files.
    ``params_file``: replaces the job's YAML (for sim: the fed graph's; sim_node's is the
    ``sim_params_file`` argument). ``overrides``: ``{node name: {param: value}}``, applied last."""
    from rclpy.parameter import Parameter

    specs = graphs.graph_nodes(job, graph)
    values: Dict[str, Any] = graphs.default_args(job, graph)
    if params_file is not None:
        values['params_file'] = str(params_file)
    if job == 'sim':
        values['graph'] = graph
    for name, value in (args or {}).items():
        if name not in values:
            raise ConfigError(f'{job} has no launch argument {name!r} (it has: {", ".join(values)})')
        values[name] = str(value)
    if job == 'sim' and 'graph' in (args or {}) and values['graph'] != graph:
        raise ConfigError(f'graph:={values["graph"]} disagrees with --graph {graph}')
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    unknown = set(overrides) - {s.name for s in specs}
    if unknown:
        raise ConfigError(f'no node named {sorted(unknown)[0]!r} in the {job} graph '
                          f'(nodes: {", ".join(s.name for s in specs)})')
    for file_arg in ('params_file', 'sim_params_file'):
        if file_arg in values and not Path(values[file_arg]).is_file():
            raise ConfigError(f'parameter file {values[file_arg]} does not exist')
    out = []
    for spec in specs:
        file_arg = 'sim_params_file' if spec is graphs.SIM_NODE else 'params_file'
        cli = ['--ros-args', '--params-file', values[file_arg], '-r', f'__node:={spec.name}']
        for src, dst in spec.remappings:
            dst = graphs.resolve(dst, values)
            if dst != src:
                cli += ['-r', f'{src}:={dst}']
        params = {k: typed_value(spec, k, graphs.resolve(v, values)) for k, v in spec.parameters}
        params.update({k: typed_value(spec, k, v) for k, v in overrides.get(spec.name, {}).items()})
        kwargs: Dict[str, Any] = {'cli_args': cli,
                                  'parameter_overrides': [Parameter(k, value=v) for k, v in params.items()]}
        if spec.namespace is not None and graphs.resolve(spec.namespace, values):
            kwargs['namespace'] = graphs.resolve(spec.namespace, values)
        out.append((spec, kwargs))
    return out


def build_graph(job: str, graph: str = 'car', args: Optional[Mapping[str, str]] = None,
                params_file: Optional[str] = None, overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
                activate: bool = True) -> Graph:
    """Construct (and by default activate) the nodes of ``job`` in this process (rclpy must be
    initialised); arguments as :func:`node_kwargs`. On error every node built so far is
    destroyed and the error raised."""
    built = node_kwargs(job, graph, args, params_file, overrides)
    out = Graph(job, tuple(spec for spec, _ in built))
    try:
        for spec, kwargs in built:
            out.nodes.append(graphs.node_class(spec.module)(**kwargs))
        if activate:
            out.activate()
    except BaseException:
        out.destroy()
        raise
    return out


def spin(nodes: Sequence[Any], until: Optional[Callable[[], bool]] = None, duration: Optional[float] = None,
         executor=None) -> None:
    """Spin ``nodes`` on one SingleThreadedExecutor until ``until()`` is true, ``duration``
    seconds passed, or rclpy shuts down (SIGINT / SIGTERM)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    ex = executor or SingleThreadedExecutor()
    for n in nodes:
        ex.add_node(n)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while rclpy.ok():
            if until is not None and until():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            ex.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        settle_signal_thread()
    except RuntimeError:            # maybe a Ctrl-C in disguise (see main): the caller decides
        settle_signal_thread()
        raise
    finally:
        for n in nodes:
            ex.remove_node(n)
        if executor is None:
            ex.shutdown()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='mmdistill-bringup', description=__doc__.split('\n')[0],
                                epilog='Launch arguments as in the launch files, e.g. checkpoint:=DIR rate:=10 '
                                       'tracker:=iou (car), teachers_dir:=DIR output:=BAG (record), '
                                       'scenario:=NAME sim_rate:=1.0 (sim).')
    p.add_argument('job', choices=graphs.JOBS, help='car: student + tracker; record: teachers + pseudo-labels + '
                   'recorder; sim: sim_node feeding --graph')
    p.add_argument('launch_args', nargs='*', metavar='NAME:=VALUE', help='launch arguments')
    p.add_argument('--graph', choices=tuple(graphs.GRAPHS), default='car', help='graph the sim job feeds (default car)')
    p.add_argument('--params-file', metavar='YAML', help="replaces the job's parameter YAML (as params_file:=)")
    p.add_argument('-p', dest='params', action='append', default=[], metavar='NODE.PARAM:=VALUE',
                   help='set one node parameter (overrides YAML and launch arguments); repeatable')
    p.add_argument('--duration', type=float, metavar='S', help='stop after S wall-clock seconds (default: until SIGINT)')
    p.add_argument('--view', action='store_true', help='also serve the graph to Foxglove (as mmdistill view)')
    p.add_argument('--view-port', type=int, default=8765, metavar='PORT', help='port of --view (default 8765)')
    return p


def _start_view(job: str, args: Mapping[str, str], port: int):
    """The Foxglove view of ``--view`` and its node; the heat map uses the array of the sim job's
    scenario (else the default car's)."""
    from .acoustic_map import ArrayGeometry
    from .foxglove_view import FoxgloveView
    from .view_node import ViewNode
    scenario = args.get('scenario', graphs.default_args('sim')['scenario']) if job == 'sim' else 'day-static'
    try:
        view = FoxgloveView(port=port, geometry=ArrayGeometry.from_scenario(scenario))
    except RuntimeError as exc:
        raise ConfigError(f'--view: cannot serve on port {port}: {exc}') from None
    print(f'mmdistill-bringup: Foxglove view on ws://127.0.0.1:{view.port}', file=sys.stderr, flush=True)
    return view, ViewNode(view)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_intermixed_args(argv)
    import rclpy
    from rclpy.executors import ExternalShutdownException
    try:
        args = {}
        for text in a.launch_args:
            name, sep, value = text.partition(':=')
            if not sep or not name:
                raise ConfigError(f'launch argument must look like name:=value, got {text!r}')
            args[name] = value
        overrides: Dict[str, Dict[str, str]] = {}
        for text in a.params:
            node, param, value = parse_override(text)
            overrides.setdefault(node, {})[param] = value
        if a.duration is not None and not a.duration > 0:
            raise ConfigError(f'--duration must be > 0, got {a.duration}')
        if not 0 <= a.view_port <= 65535:
            raise ConfigError(f'--view-port must be in 0..65535, got {a.view_port}')
    except MmdistillError as exc:
        print(f'mmdistill-bringup: error: {exc}', file=sys.stderr)
        return 2
    interrupted = catch_sigint()
    rclpy.init(args=[parser.prog])     # launch-style NAME:=VALUE must not reach rcl as remaps
    graph = view = view_node = None
    try:
        graph = build_graph(a.job, a.graph, args, a.params_file, overrides)
        names = ', '.join(s.name for s in graph.specs)
        graph.nodes[0].get_logger().info(f'{a.job}: running {names} on one executor')
        if a.view:
            view, view_node = _start_view(a.job, args, a.view_port)
        spin(graph.nodes + ([view_node] if view_node is not None else []), duration=a.duration)
    except MmdistillError as exc:
        if not rclpy.ok():          # SIGINT while the nodes were starting: not an error
            return 0
        print(f'mmdistill-bringup: error: {exc}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (RuntimeError, SystemError) as exc:
        if not interrupted_take(exc, interrupted):
            raise
    finally:
        if view_node is not None:
            view_node.destroy_node()
        if view is not None:
            view.close()
        if graph is not None:
            graph.destroy()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
