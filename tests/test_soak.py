"""The soak benchmark's CI variant: the car graph on looped simulated audio for 20 s keeps
publishing, and the report has the time series the full 30-minute run is judged by
(``benchmarks/bench_soak.py``; figures are reported, never asserted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]


def test_soak_ci_variant(tmp_path):
    out = tmp_path / 'soak.json'
    proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_soak.py'), '--minutes', '0.34',
                           '--interval', '5', '--warmup', '5', '--loop-seconds', '6', '--out', str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert len(r['series']) >= 3
    assert r['outputs']['student']['received'] > 0 and r['outputs']['tracks']['received'] > 0
    assert r['rss_mb']['final'] > 0 and 'growth_percent_after_warmup' in r['rss_mb']
    for row in r['series']:
        assert {'t_s', 'rss_mb', 'cpu_percent', 'student', 'tracks', 'graph_warnings'} <= set(row)
