"""A minimal Foxglove WebSocket client (``foxglove.sdk.v1`` protocol), for tests and benchmarks.

It does what the Foxglove app does on connect: reads ``serverInfo`` and ``advertise``,
subscribes to channels, and decodes message data with the advertised schema: protobuf through
the schema's own ``FileDescriptorSet`` (so a decoded message proves the schema on the wire is
right), JSON as JSON. It also sends playback-control requests and reads playback states.
Built on ``websockets``' synchronous client; not used by the view itself.
"""
from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

__all__ = ['FoxgloveClient', 'decoder']

MESSAGE_DATA = 0x01      # server binary opcodes
TIME = 0x02
PLAYBACK_STATE = 0x05
PLAYBACK_CONTROL = 0x03  # client binary opcode
PLAYBACK_STATUS = {0: 'Playing', 1: 'Paused', 2: 'Buffering', 3: 'Ended'}


def decoder(channel: Dict[str, Any]):
    """A function ``bytes -> message`` for an advertised channel (protobuf message or dict)."""
    if channel['encoding'] == 'json':
        return lambda data: json.loads(data)
    if channel['encoding'] != 'protobuf':
        raise ValueError(f'cannot decode encoding {channel["encoding"]!r}')
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    fds = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(channel['schema']))
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(channel['schemaName']))
    return cls.FromString


class FoxgloveClient:
    """Connect to ``ws://host:port``; ``channels`` maps topic -> advertised channel (dict)."""

    def __init__(self, port: int, host: str = '127.0.0.1', timeout: float = 10.0) -> None:
        from websockets.sync.client import connect
        self._connection = connect(f'ws://{host}:{port}', subprotocols=['foxglove.sdk.v1'], max_size=None,
                                   open_timeout=timeout)
        self.ws = self._connection.__enter__()
        self.server_info: Dict[str, Any] = {}
        self.channels: Dict[str, Dict[str, Any]] = {}
        self._subs: Dict[int, Tuple[str, Any]] = {}
        self.playback_states: List[Dict[str, Any]] = []
        self.times: List[int] = []
        self.received: Dict[str, List[Tuple[int, Any]]] = {}

    def close(self) -> None:
        self._connection.__exit__(None, None, None)

    def __enter__(self) -> 'FoxgloveClient':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handle(self, raw) -> None:
        if isinstance(raw, str):
            msg = json.loads(raw)
            if msg['op'] == 'serverInfo':
                self.server_info = msg
            elif msg['op'] == 'advertise':
                for ch in msg['channels']:
                    self.channels[ch['topic']] = ch
            return
        op = raw[0]
        if op == MESSAGE_DATA:
            sub_id, log_time = struct.unpack_from('<IQ', raw, 1)
            topic, decode = self._subs[sub_id]
            self.received.setdefault(topic, []).append((log_time, decode(bytes(raw[13:]))))
        elif op == TIME:
            self.times.append(struct.unpack_from('<Q', raw, 1)[0])
        elif op == PLAYBACK_STATE:
            status, current, speed, did_seek, n = struct.unpack_from('<BQf?I', raw, 1)
            rid = bytes(raw[19:19 + n]).decode() if n else None
            self.playback_states.append({'status': PLAYBACK_STATUS.get(status, status), 'current_time': current,
                                         'speed': speed, 'did_seek': did_seek, 'request_id': rid})

    def poll(self, seconds: float) -> None:
        """Read whatever arrives for ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self._handle(self.ws.recv(timeout=left))
            except TimeoutError:
                return

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        """Read messages until ``predicate(self)`` is true or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._handle(self.ws.recv(timeout=min(left, 0.2)))
            except TimeoutError:
                pass
        return True

    def subscribe(self, topics: Optional[List[str]] = None) -> None:
        """Subscribe to ``topics`` (default every advertised channel)."""
        subs = []
        for topic in topics or list(self.channels):
            ch = self.channels[topic]
            sub_id = len(self._subs) + 1
            self._subs[sub_id] = (topic, decoder(ch))
            subs.append({'id': sub_id, 'channelId': ch['id']})
        self.ws.send(json.dumps({'op': 'subscribe', 'subscriptions': subs}))

    def playback_control(self, play: bool, speed: float = 1.0, seek_ns: Optional[int] = None,
                         request_id: str = 'r') -> None:
        """Send a playback-control request (what the app's play / pause / seek controls send)."""
        rid = request_id.encode()
        self.ws.send(bytes([PLAYBACK_CONTROL]) + struct.pack('<Bf?QI', 0 if play else 1, speed, seek_ns is not None,
                                                             seek_ns or 0, len(rid)) + rid)
