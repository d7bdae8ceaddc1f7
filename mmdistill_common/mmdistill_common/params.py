"""Node parameters declared once: name, default, description, constraints.

A node module lists its parameters as ``PARAMS = [Param(...), ...]`` at module
level. ``declare_parameters(node, PARAMS)`` declares them with a
``ParameterDescriptor`` (description, read-only flag, ranges) and returns the
validated values; ``yaml_defaults`` and ``markdown_table`` derive the bringup
YAML and the README tables from the same list, and a test checks both against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .errors import ConfigError


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    choices: Sequence[Any] = ()
    min: Optional[float] = None
    max: Optional[float] = None
    read_only: bool = False

    def check(self, value: Any) -> Any:
        """Validate ``value`` against type, choices and range; returns it or raises ConfigError."""
        expected = type(self.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f'parameter {self.name} must be {expected.__name__}, got {value!r}')
        if self.choices and value not in self.choices:
            raise ConfigError(f'parameter {self.name} must be one of {list(self.choices)}, got {value!r}')
        if self.min is not None and value < self.min:
            raise ConfigError(f'parameter {self.name} must be >= {self.min}, got {value!r}')
        if self.max is not None and value > self.max:
            raise ConfigError(f'parameter {self.name} must be <= {self.max}, got {value!r}')
        return value

    def descriptor(self):
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
        text = self.description
        if self.choices:
            text += f' One of: {", ".join(map(str, self.choices))}.'
        desc = ParameterDescriptor(description=text, read_only=self.read_only)
        if self.min is not None and self.max is not None:
            if isinstance(self.default, float):
                desc.floating_point_range = [FloatingPointRange(from_value=float(self.min), to_value=float(self.max))]
            elif isinstance(self.default, int) and not isinstance(self.default, bool):
                desc.integer_range = [IntegerRange(from_value=int(self.min), to_value=int(self.max), step=1)]
        return desc


def declare_parameters(node, params: Sequence[Param]) -> Dict[str, Any]:
    """Declare ``params`` on ``node`` and return their validated values (ConfigError if invalid)."""
    values: Dict[str, Any] = {}
    for p in params:
        node.declare_parameter(p.name, p.default, p.descriptor())
        values[p.name] = p.check(node.get_parameter(p.name).value)
    return values


def check_values(params: Sequence[Param], values: Dict[str, Any]) -> Dict[str, Any]:
    """Validate a dict of overrides (e.g. from YAML) against ``params``; unknown names are errors."""
    known = {p.name: p for p in params}
    for name in values:
        if name not in known:
            raise ConfigError(f'unknown parameter {name!r} (known: {", ".join(sorted(known))})')
    return {name: known[name].check(value) for name, value in values.items()}


def yaml_defaults(node_name: str, params: Sequence[Param]) -> Dict[str, Any]:
    """``{node_name: {ros__parameters: {...}}}`` with every default, for bringup YAML."""
    return {node_name: {'ros__parameters': {p.name: p.default for p in params}}}


def markdown_table(params: Sequence[Param]) -> str:
    lines = ['| parameter | default | description |', '|---|---|---|']
    for p in params:
        text = p.description + (f' One of: {", ".join(map(str, p.choices))}.' if p.choices else '')
        lines.append(f'| `{p.name}` | `{p.default!r}` | {text} |')
    return '\n'.join(lines)
