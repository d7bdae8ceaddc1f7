"""QoS profiles of the mmdistill graph and a warning on incompatible peers."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE, 'best_effort': ReliabilityPolicy.BEST_EFFORT}


def stream_qos(reliability: str = 'reliable', depth: int = 50) -> QoSProfile:
    """Keep-last sensor stream. ``best_effort`` may drop audio chunks: a gap in the signal."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos() -> QoSProfile:
    """Stream metadata (audio_info): the last message is kept for late joiners."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def incompatible_qos_warner(node, topic: str):
    """Event callbacks that log a warning when a peer's QoS cannot match (e.g. reliability)."""
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks

    def warn(event) -> None:
        node.get_logger().warning(
            f'{topic}: a peer has incompatible QoS (last policy: {event.last_policy_kind}); '
            'check the reliability/durability parameters on both sides')
    return PublisherEventCallbacks(incompatible_qos=warn), SubscriptionEventCallbacks(incompatible_qos=warn)
