"""``run_node`` and ``mmdistill-bringup`` exit 0 on a Ctrl-C that pybind11 disguised as a RuntimeError
while rclpy converted a taken message (CI saw it: the bringup child died with a traceback when the
test stopped it mid-message), or that numba disguised as a SystemError inside the simulator's
compiled renderer, and still fail on a RuntimeError that no Ctrl-C caused.

Each case runs in a child process: ``rclpy.init`` and the SIGINT handler must be the child's own."""
import subprocess
import sys
import textwrap

import pytest

# A node whose timer does what rclpy's take does when Ctrl-C lands inside the message conversion:
# the KeyboardInterrupt raised by the SIGINT handler comes out as pybind11's RuntimeError.
NODE = '''
import signal
from rclpy.node import Node

class Taker(Node):
    def __init__(self, interrupt):
        super().__init__('taker')
        self.interrupt = interrupt
        self.create_timer(0.05, self.take)

    def take(self):
        try:
            if self.interrupt:
                signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        else:
            if not self.interrupt:
                raise RuntimeError('a real bug')
            raise AssertionError('the SIGINT handler did not raise')
        raise {disguise}
'''

RUN_NODE = NODE + '''
import sys
from mmdistill_common.node_main import run_node
sys.exit(run_node('taker', lambda: Taker({interrupt})))
'''

BRINGUP = NODE + '''
import sys
from types import SimpleNamespace
from mmdistill_bringup import runner

def build_graph(*args):
    node = Taker({interrupt})
    return SimpleNamespace(nodes=[node], specs=[SimpleNamespace(name='taker')], destroy=node.destroy_node)
runner.build_graph = build_graph
sys.exit(runner.main(['car', '--duration', '20']))
'''


DISGUISES = {'pybind11': "RuntimeError(\"Unable to convert call argument '0' to Python object\")",
             'numba': "SystemError('CPUDispatcher(<function kernel>) returned a result with an exception set')"}


@pytest.mark.parametrize('script', [RUN_NODE, BRINGUP], ids=['run_node', 'bringup'])
@pytest.mark.parametrize('interrupt', [True, False], ids=['ctrl-c', 'bug'])
@pytest.mark.parametrize('disguise', sorted(DISGUISES))
def test_a_disguised_ctrl_c_exits_0_and_a_real_runtime_error_does_not(script, interrupt, disguise):
    code = textwrap.dedent(script).replace('{interrupt}', str(interrupt)).replace('{disguise}', DISGUISES[disguise])
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    if interrupt:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert 'Traceback' not in proc.stderr
    else:
        assert proc.returncode != 0 and 'a real bug' in proc.stderr, proc.stderr[-2000:]
