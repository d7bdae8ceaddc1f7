"""Scenario schema: dataclasses loaded from YAML with strict validation.

A scenario fully determines a simulated drive together with its ``seed``: the
same file and seed always give byte-identical sensor data.  The schema is the
single source of truth for the README table (:func:`schema_markdown`), so the
documentation cannot drift from the code.

Frames used throughout the simulator (REP 103):

* **world**: x forward (the ego vehicle's heading), y left, z up, metres; the
  ground is z = 0 and the ego vehicle starts at the origin.
* **ego**: the same axes, attached to the ego vehicle (which only translates
  along +x).  Camera and microphone mounting are given in this frame.
* **camera**: x right, y down, z forward (optical frame).
* **azimuth**: angle in the ego x-y plane from +x towards +y (left positive),
  degrees; 0 is straight ahead (image centre column).
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from mmdistill_common.errors import ConfigError

__all__ = [
    'Ego', 'Lane', 'Road', 'ClassMix', 'Traffic', 'ScriptedVehicle', 'Environment', 'Occluder',
    'MicArray', 'Camera', 'Audio', 'Scenario', 'load_scenario', 'list_scenarios',
    'scenario_from_dict', 'scenario_to_dict', 'schema_markdown', 'VEHICLE_CLASSES',
]

VEHICLE_CLASSES = ('car', 'truck', 'motorbike')


def _f(default: Any = dataclasses.MISSING, *, unit: str = '', doc: str = '', lo: Optional[float] = None,
       hi: Optional[float] = None, lo_open: bool = False, factory: Any = None) -> Any:
    """A dataclass field carrying the unit, meaning and numeric bounds used by validation and docs."""
    meta = {'unit': unit, 'doc': doc, 'lo': lo, 'hi': hi, 'lo_open': lo_open}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Ego:
    """Motion of the vehicle that carries the sensors."""
    mode: Literal['static', 'driving'] = _f('static', doc='`static`: parked; `driving`: constant speed along +x')
    speed_mps: float = _f(0.0, unit='m/s', lo=0.0, hi=45.0, doc='forward speed when driving')
    engine_rpm: float = _f(1800.0, unit='rpm', lo=500.0, hi=7000.0, doc='ego engine speed when driving (ego noise)')
    noise_db: float = _f(68.0, unit='dB SPL', lo=0.0, hi=120.0,
                         doc='ego engine + tyre noise level at the array when driving')

    def validate(self, path: str) -> None:
        if self.mode == 'driving' and self.speed_mps <= 0:
            raise ConfigError(f'{path}.speed_mps: must be > 0 when mode is driving')
        if self.mode == 'static' and self.speed_mps != 0:
            raise ConfigError(f'{path}.speed_mps: must be 0 when mode is static (got {self.speed_mps})')


@dataclass
class Lane:
    """One straight lane of traffic."""
    direction: Literal['along', 'across'] = _f(
        'along', doc='`along`: parallel to the ego heading (x); `across`: crossing it (parallel to y)')
    offset_m: float = _f(0.0, unit='m', lo=-500.0, hi=500.0,
                         doc='lateral position y of an along lane, or forward position x of an across lane')
    travel: Literal['positive', 'negative'] = _f(
        'positive', doc='direction of travel: towards +x/+y (`positive`) or -x/-y (`negative`)')
    width_m: float = _f(3.5, unit='m', lo=1.0, hi=10.0, doc='lane width (vehicles drive on its centre line)')
    weight: float = _f(1.0, lo=0.0, hi=1000.0, doc='share of the traffic rate assigned to this lane')
    parked_per_100m: float = _f(0.0, unit='1/100m', lo=0.0, hi=25.0,
                                doc='parked vehicles (engine off: silent and cold) standing on this lane for the '
                                    'whole drive, per 100 m; a kerb lane is one with weight 0 and parked cars')


def _default_lanes() -> list:
    return [Lane('along', 3.5, 'positive'), Lane('along', 7.0, 'negative')]


@dataclass
class Road:
    """Road layout: straight lanes and how far they extend around the ego path."""
    lanes: list[Lane] = _f(unit='', doc='list of lanes', factory=_default_lanes)
    extent_m: float = _f(150.0, unit='m', lo=10.0, hi=2000.0,
                         doc='lanes are simulated from -extent to +extent (plus the ego travel) along their axis')


@dataclass
class ClassMix:
    """Relative frequency of the vehicle classes (normalised to sum 1)."""
    car: float = _f(0.75, lo=0.0, hi=1.0, doc='share of cars')
    truck: float = _f(0.15, lo=0.0, hi=1.0, doc='share of trucks')
    motorbike: float = _f(0.10, lo=0.0, hi=1.0, doc='share of motorbikes')

    def validate(self, path: str) -> None:
        if self.car + self.truck + self.motorbike <= 0:
            raise ConfigError(f'{path}: at least one class share must be > 0')

    def probabilities(self) -> list[float]:
        s = self.car + self.truck + self.motorbike
        return [self.car / s, self.truck / s, self.motorbike / s]


@dataclass
class ScriptedVehicle:
    """A vehicle placed by hand (in addition to random traffic), for reproducible set pieces and tests."""
    kind: Literal['car', 'truck', 'motorbike'] = _f('car', doc='vehicle class')
    lane: int = _f(0, lo=0, hi=1000, doc='index into `road.lanes`')
    position_m: float = _f(0.0, unit='m', lo=-5000.0, hi=5000.0,
                           doc='coordinate along the lane axis (x for along, y for across) at t = 0')
    speed_mps: float = _f(10.0, unit='m/s', lo=0.0, hi=80.0, doc='speed in the lane travel direction; 0 = parked')
    engine_on: bool = _f(True, doc='false: silent and cold (parked with the engine off)')


@dataclass
class Traffic:
    """Random traffic: Poisson arrivals per lane, with class and speed drawn per vehicle."""
    vehicles_per_minute: float = _f(12.0, unit='1/min', lo=0.0, hi=600.0,
                                    doc='mean arrival rate summed over all lanes')
    speed_min_mps: float = _f(8.0, unit='m/s', lo=0.0, hi=80.0, doc='lowest moving-vehicle speed')
    speed_max_mps: float = _f(16.0, unit='m/s', lo=0.0, hi=80.0, doc='highest moving-vehicle speed')
    class_mix: ClassMix = _f(doc='class shares', factory=ClassMix)
    stopped_fraction: float = _f(0.0, lo=0.0, hi=1.0,
                                 doc='probability that an arrival is instead a parked vehicle (engine off: '
                                     'silent and cold) standing in its lane for the whole drive')
    scripted: list[ScriptedVehicle] = _f(doc='hand-placed vehicles', factory=list)

    def validate(self, path: str) -> None:
        if self.speed_min_mps > self.speed_max_mps:
            raise ConfigError(f'{path}.speed_min_mps: {self.speed_min_mps} is above speed_max_mps '
                              f'{self.speed_max_mps}')
        if self.vehicles_per_minute > 0 and self.speed_max_mps <= 0:
            raise ConfigError(f'{path}.speed_max_mps: must be > 0 when vehicles_per_minute > 0')


@dataclass
class Environment:
    """Atmosphere and ambient sound."""
    temperature_c: float = _f(15.0, unit='degC', lo=-40.0, hi=50.0,
                              doc='air temperature (speed of sound, thermal background)')
    fog_visibility_m: float = _f(35.0, unit='m', lo=1.0, hi=10000.0,
                                 doc='meteorological visibility when weather is fog')
    ambient_noise_db: float = _f(45.0, unit='dB SPL', lo=0.0, hi=120.0,
                                 doc='diffuse ambient noise level at each microphone')
    wind_mps: float = _f(2.0, unit='m/s', lo=0.0, hi=30.0, doc='wind speed (low-frequency wind noise)')


@dataclass
class Occluder:
    """A static axis-aligned box (wall, parked truck, building) that blocks light and sound."""
    kind: Literal['wall', 'truck', 'building'] = _f('wall', doc='appearance only')
    center_m: list[float] = _f(unit='m', doc='[x, y] of the footprint centre in the world frame',
                               factory=lambda: [15.0, 4.0])
    size_m: list[float] = _f(unit='m', doc='[length along x, width along y, height]',
                             factory=lambda: [8.0, 0.3, 2.5])

    def validate(self, path: str) -> None:
        if len(self.center_m) != 2:
            raise ConfigError(f'{path}.center_m: expected [x, y], got {len(self.center_m)} values')
        if len(self.size_m) != 3 or min(self.size_m) <= 0:
            raise ConfigError(f'{path}.size_m: expected three positive values [length, width, height]')


@dataclass
class MicArray:
    """Microphone array on the ego roof (ego frame)."""
    n_mics: int = _f(8, lo=1, hi=64, doc='number of microphones on the circle')
    radius_m: float = _f(0.15, unit='m', lo=0.0, hi=5.0, lo_open=True, doc='circle radius')
    height_m: float = _f(1.7, unit='m', lo=0.0, hi=10.0, doc='height of the circle above the ground')
    x_m: float = _f(0.0, unit='m', lo=-10.0, hi=10.0, doc='forward position of the circle centre on the ego')
    positions_m: Optional[list[list[float]]] = _f(
        None, unit='m', doc='explicit [[x, y, z], ...] in the ego frame (overrides the circle)')

    def validate(self, path: str) -> None:
        if self.positions_m is not None:
            if not self.positions_m or any(len(p) != 3 for p in self.positions_m):
                raise ConfigError(f'{path}.positions_m: expected a non-empty list of [x, y, z]')
            if any(p[2] <= 0 for p in self.positions_m):
                raise ConfigError(f'{path}.positions_m: microphones must be above the ground (z > 0)')
            self.n_mics = len(self.positions_m)

    def positions(self):
        """(M, 3) microphone positions in the ego frame; mic 0 points ahead, numbering counter-clockwise."""
        import numpy as np
        if self.positions_m is not None:
            return np.asarray(self.positions_m, dtype=np.float64)
        a = 2 * np.pi * np.arange(self.n_mics) / self.n_mics
        return np.stack([self.x_m + self.radius_m * np.cos(a), self.radius_m * np.sin(a),
                         np.full(self.n_mics, self.height_m)], axis=1)


@dataclass
class Camera:
    """Pinhole camera shared by the RGB, depth and thermal images (registered, same intrinsics)."""
    width: int = _f(768, unit='px', lo=8, hi=8192, doc='image width')
    height: int = _f(256, unit='px', lo=8, hi=8192, doc='image height')
    fx: float = _f(384.0, unit='px', lo=1.0, hi=1e5, doc='focal length x (default: 90 deg horizontal FOV)')
    fy: float = _f(384.0, unit='px', lo=1.0, hi=1e5, doc='focal length y (default: 37 deg vertical FOV)')
    cx: Optional[float] = _f(None, unit='px', doc='principal point x (default width / 2)')
    cy: Optional[float] = _f(None, unit='px', doc='principal point y (default height / 2)')
    height_m: float = _f(1.5, unit='m', lo=0.1, hi=10.0, doc='mounting height above the ground')
    x_m: float = _f(0.0, unit='m', lo=-10.0, hi=10.0, doc='forward mounting position on the ego')
    pitch_deg: float = _f(0.0, unit='deg', lo=-45.0, hi=45.0, doc='downward tilt of the optical axis')
    depth_range_m: float = _f(40.0, unit='m', lo=1.0, hi=1000.0, doc='depth sensor maximum range (clear air)')

    def validate(self, path: str) -> None:
        if self.cx is None:
            self.cx = self.width / 2.0
        if self.cy is None:
            self.cy = self.height / 2.0


@dataclass
class Audio:
    """Microphone signal and propagation options."""
    sample_rate: int = _f(44100, unit='Hz', lo=8000, hi=192000, doc='sampling rate')
    chunk_ms: float = _f(40.0, unit='ms', lo=5.0, hi=1000.0, doc='chunk length used by `Simulator.audio_chunks`')
    ground_reflection: float = _f(0.8, lo=0.0, hi=1.0,
                                  doc='pressure reflection coefficient of the road (0 = no ground image source)')
    air_absorption: bool = _f(True, doc='frequency-dependent air absorption (ISO 9613-1-like band values)')
    occluder_loss_db: float = _f(12.0, unit='dB', lo=0.0, hi=60.0,
                                 doc='mid-band (1-4 kHz) loss behind an occluder; low band 0.6x, high band 1.5x')
    max_range_m: float = _f(250.0, unit='m', lo=1.0, hi=10000.0, doc='sources farther away are not rendered')


@dataclass
class Scenario:
    """A complete simulated drive."""
    name: str = _f('custom', doc='scenario name')
    description: str = _f('', doc='one line for humans')
    seed: int = _f(0, lo=0, hi=2**63 - 1, doc='seed of every random choice')
    duration_s: float = _f(60.0, unit='s', lo=0.0, hi=3600.0, lo_open=True, doc='length of the drive')
    frame_rate: float = _f(10.0, unit='Hz', lo=0.0, hi=120.0, lo_open=True, doc='camera frame rate')
    time_of_day: Literal['day', 'dusk', 'night'] = _f('day', doc='lighting')
    weather: Literal['clear', 'fog', 'rain'] = _f('clear', doc='fog hurts RGB and depth; rain adds noise')
    ego: Ego = _f(doc='ego motion', factory=Ego)
    road: Road = _f(doc='lanes', factory=Road)
    traffic: Traffic = _f(doc='traffic', factory=Traffic)
    environment: Environment = _f(doc='atmosphere and ambient sound', factory=Environment)
    occluders: list[Occluder] = _f(doc='static boxes', factory=list)
    mic_array: MicArray = _f(doc='microphone array', factory=MicArray)
    camera: Camera = _f(doc='camera', factory=Camera)
    audio: Audio = _f(doc='audio', factory=Audio)

    def validate(self, path: str) -> None:
        for i, sv in enumerate(self.traffic.scripted):
            if sv.lane >= len(self.road.lanes):
                raise ConfigError(f'traffic.scripted[{i}].lane: {sv.lane} but the road has '
                                  f'{len(self.road.lanes)} lanes')
        if self.traffic.vehicles_per_minute > 0 and not self.road.lanes:
            raise ConfigError('road.lanes: traffic needs at least one lane')
        if self.traffic.vehicles_per_minute > 0 and sum(l.weight for l in self.road.lanes) <= 0:
            raise ConfigError('road.lanes: at least one lane needs weight > 0')

    @property
    def speed_of_sound(self) -> float:
        """Speed of sound in dry air at the scenario temperature (m/s)."""
        return 331.3 * math.sqrt(1.0 + self.environment.temperature_c / 273.15)

    @property
    def chunk_samples(self) -> int:
        return max(1, int(round(self.audio.sample_rate * self.audio.chunk_ms / 1000.0)))


# ----------------------------------------------------------------------------- loading

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return ' | '.join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) + ' (optional)' if len(args) == 1 else ' | '.join(map(_type_name, args))
    if origin is list:
        return f'list of {_type_name(typing.get_args(tp)[0])}'
    if dataclasses.is_dataclass(tp):
        return 'mapping'
    return {float: 'float', int: 'int', str: 'str', bool: 'bool'}.get(tp, str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f'{path}: {value!r} is not one of {", ".join(map(str, choices))}')
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{path}: expected a list, got {type(value).__name__}')
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f'{path}[{i}]') for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{path}: expected true/false, got {value!r}')
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{path}: expected an integer, got {value!r}')
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{path}: expected a number, got {value!r}')
        if not math.isfinite(value):
            raise ConfigError(f'{path}: must be finite, got {value!r}')
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f'{path}: expected a string, got {value!r}')
        return value
    raise TypeError(f'unsupported schema type {tp!r}')  # pragma: no cover


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{path or "scenario"}: expected a mapping, got {type(data).__name__}')
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f'{path}.{key}' if path else str(key)
            raise ConfigError(f'{where}: unknown key (allowed: {", ".join(fields)})')
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        sub = f'{path}.{name}' if path else name
        val = _convert(data[name], hints[name], sub)
        lo, hi, lo_open = f.metadata.get('lo'), f.metadata.get('hi'), f.metadata.get('lo_open')
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            if lo is not None and (val < lo or (lo_open and val == lo)):
                raise ConfigError(f'{sub}: {val} is out of range (must be {">" if lo_open else ">="} {lo})')
            if hi is not None and val > hi:
                raise ConfigError(f'{sub}: {val} is out of range (must be <= {hi})')
        kwargs[name] = val
    obj = cls(**kwargs)
    _validate_tree(obj, path)
    return obj


def _validate_tree(obj: Any, path: str) -> None:
    validate = getattr(obj, 'validate', None)
    if validate is not None:
        validate(path)


def scenario_from_dict(data: Any, seed: Optional[int] = None) -> Scenario:
    """Build and validate a :class:`Scenario` from a plain mapping (as parsed from YAML)."""
    sc = _build(Scenario, data, '')
    # nested dataclasses built from defaults (key absent) still need their derived values
    for obj, p in [(sc.camera, 'camera'), (sc.mic_array, 'mic_array')]:
        obj.validate(p)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f'seed: expected a non-negative integer, got {seed!r}')
        sc.seed = seed
    return sc


def scenario_to_dict(sc: Scenario) -> dict:
    """Plain mapping of a scenario (round-trips through :func:`scenario_from_dict`)."""
    return dataclasses.asdict(sc)


def _library() -> Path:
    return Path(str(importlib.resources.files('mmdistill_sim') / 'scenarios'))


def list_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    return sorted(p.stem for p in _library().glob('*.yaml'))


def load_scenario(name_or_path: Union[str, Path], seed: Optional[int] = None) -> Scenario:
    """Load a named library scenario or a YAML file; ``seed`` overrides the file's seed."""
    p = Path(name_or_path)
    if not (p.suffix in ('.yaml', '.yml') or p.exists()):
        lib = _library() / f'{name_or_path}.yaml'
        if not lib.exists():
            raise ConfigError(f'unknown scenario {str(name_or_path)!r} (not a file; named scenarios: '
                              f'{", ".join(list_scenarios())})')
        p = lib
    if not p.exists():
        raise ConfigError(f'scenario file not found: {p}')
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f'{p}: not valid YAML ({exc.__class__.__name__}: {exc})') from None
    try:
        sc = scenario_from_dict(data, seed=seed)
    except ConfigError as exc:
        raise ConfigError(f'{p.name}: {exc}') from None
    if sc.name == 'custom':
        sc.name = p.stem
    return sc


def schema_markdown() -> str:
    """The scenario schema as a Markdown table (field, type, unit, default, meaning), for the README."""
    rows = ['| field | type | unit | default | meaning |', '|---|---|---|---|---|']

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            name = prefix + f.name
            if f.default is not dataclasses.MISSING:
                default = f.default
            else:
                default = f.default_factory()
            if dataclasses.is_dataclass(tp):
                walk(tp, name + '.')
                continue
            inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
            if inner is not None and dataclasses.is_dataclass(inner):
                shown = f'{len(default)} items' if default else '[]'
                rows.append(f'| `{name}` | list of mapping | | {shown} | {f.metadata.get("doc", "")} |')
                walk(inner, name + '[].')
                continue
            shown = 'null' if default is None else (str(default).lower() if isinstance(default, bool)
                                                   else str(default))
            rng = ''
            lo, hi = f.metadata.get('lo'), f.metadata.get('hi')
            if lo is not None or hi is not None:
                rng = f' (range {">" if f.metadata.get("lo_open") else ""}{lo} .. {hi})'
            type_cell = _type_name(tp).replace('|', '\\|')   # a literal's choices, escaped for the table
            rows.append(f'| `{name}` | {type_cell} | {f.metadata.get("unit", "")} | {shown} | '
                        f'{f.metadata.get("doc", "")}{rng} |')

    walk(Scenario, '')
    return '\n'.join(rows) + '\n'
