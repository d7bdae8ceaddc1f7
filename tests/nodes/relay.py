"""A second-process node for integration tests: republishes /relay/in/<name> on /relay/out/<name>.

It touches nothing in the messages, so whatever differs on the way back was
changed by serialisation or transport.
"""
import sys

import rclpy
from audio_common_msgs.msg import AudioDataStamped
from mmdistill_msgs.msg import PseudoLabel
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from vision_msgs.msg import Detection2DArray

TYPES = {'detections': Detection2DArray, 'audio': AudioDataStamped, 'pseudo_label': PseudoLabel}


class Relay(Node):
    def __init__(self) -> None:
        super().__init__('relay')
        self._pubs = {}
        for name, msg_type in TYPES.items():
            pub = self.create_publisher(msg_type, f'/relay/out/{name}', 10)
            self.create_subscription(msg_type, f'/relay/in/{name}', pub.publish, 10)
        self.get_logger().info('relay ready')


def main() -> int:
    rclpy.init()
    node = Relay()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
