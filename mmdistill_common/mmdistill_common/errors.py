"""Exception types shared by the ROS-free core, the nodes and the CLI.

Nodes catch ``InputError`` to log and drop one bad message; the CLI catches
``MmdistillError`` to print one readable line and exit non-zero.
"""


class MmdistillError(Exception):
    """Base class for errors a user can act on (printed as one line, no traceback)."""


class InputError(MmdistillError, ValueError):
    """Data that cannot be used as given: wrong encoding, odd byte length, NaN, bad stamp."""


class ConfigError(MmdistillError, ValueError):
    """A configuration, scenario, parameter or checkpoint that is invalid or does not match."""
