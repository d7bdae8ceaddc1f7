"""Make the package sources importable even when pytest runs from the repository root, where the bare
``mmdistill_sim/`` folder would otherwise shadow the package as a namespace package."""
import os
import sys
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
_ROOT = Path(__file__).resolve().parents[2]
for _p in (_ROOT / 'mmdistill_common', _ROOT / 'mmdistill_sim'):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
for _m in [m for m in sys.modules if m == 'mmdistill_sim' or m == 'mmdistill_common']:
    if getattr(sys.modules[_m], '__file__', None) is None:
        del sys.modules[_m]
