"""Extra CPU of the Foxglove view: ``mmdistill view`` serving the graph's topics at 10 Hz.

``mmdistill view`` runs as a child process (its own ``ROS_DOMAIN_ID``, localhost discovery,
``--port`` free). This process publishes what the simulated car graph publishes, over Fast DDS:
``AudioInfo`` (transient local), 8-channel 44.1-kHz S16LE audio in 40-ms chunks at real time,
and at 10 Hz ``/student/detections`` (5 boxes), ``/tracking/tracks`` (3), ``/tracking/markers``
and ``/sim/ground_truth`` (4), plus in the ``sim`` case the RGB camera (``rgb8`` of the default
scenario's size). A WebSocket client (``mmdistill_bringup.foxglove_client``) stays connected
and subscribed to every channel and decodes every message, as the app would.

CPU = user + system time of the view process (``/proc/<pid>/stat``, all threads: DDS, the
conversions, JPEG, SRP-PHAT, the foxglove-sdk server) over the measured interval divided by
its wall time, in % of one core; first with the client connected but nothing published
(idle), then per case. Also the in-process cost of each conversion (thread CPU time, median),
which says where the time goes. The machine may be shared: the load average is recorded.

    python benchmarks/bench_view.py --seconds 20 --out benchmarks/results/view.json
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# bench_graph sets the thread counts, a private ROS domain and localhost discovery on import
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_graph  # noqa: E402,F401

import numpy as np  # noqa: E402

from bench_graph import proc_cpu_s  # noqa: E402
from bench_sim import machine_info  # noqa: E402

SR = 44100
CHUNK_S = 0.04


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Feed:
    """Publishers of the graph's topics, driven by a background thread at real time."""

    def __init__(self, node, geometry, camera: bool) -> None:
        from audio_common_msgs.msg import AudioDataStamped, AudioInfo
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray
        from visualization_msgs.msg import MarkerArray

        from mmdistill_common import topics as T
        from mmdistill_common.qos import latched_qos, stream_qos
        self.T = T
        self.camera = camera
        self.w, self.h = geometry.width, geometry.height
        q = stream_qos()
        self.pub = {t: node.create_publisher(c, t, q) for t, c in [
            (T.AUDIO, AudioDataStamped), (T.STUDENT_DETECTIONS, Detection2DArray), (T.TRACKS, Detection2DArray),
            (T.GROUND_TRUTH, Detection2DArray), (T.TRACK_MARKERS, MarkerArray), (T.image_topic('rgb'), Image)]}
        self.info = node.create_publisher(AudioInfo, T.AUDIO_INFO, latched_qos())
        rng = np.random.default_rng(0)
        self.audio = (rng.standard_normal((10 * SR, 8)) * 2000).astype(np.int16)
        self.image = rng.integers(0, 255, (self.h, self.w, 3), dtype=np.uint8)
        self.stop = threading.Event()
        self.thread = None

    def frame(self, k: int, t_ns: int) -> None:
        from mmdistill_common.conversions import detections_to_msg, image_to_msg, make_header
        from mmdistill_tracking.tracking_node import marker_msg
        from mmdistill_tracking.visualization import track_markers
        from visualization_msgs.msg import MarkerArray
        T = self.T
        x = 20 + (k * 7) % (self.w - 120)
        boxes = [[x + 20 * i, 40, x + 20 * i + 60, 90] for i in range(5)]
        self.pub[T.STUDENT_DETECTIONS].publish(detections_to_msg(boxes, [0.9, 0.8, 0.7, 0.6, 0.5], stamp_ns=t_ns))
        self.pub[T.TRACKS].publish(detections_to_msg(boxes[:3], [0.9, 0.8, 0.7], ids=[1, 2, 3], stamp_ns=t_ns))
        self.pub[T.GROUND_TRUTH].publish(detections_to_msg(boxes[:4], [1.0] * 4, ids=[5, 6, 7, 8], stamp_ns=t_ns))
        self.pub[T.TRACK_MARKERS].publish(MarkerArray(markers=[
            marker_msg(s, make_header(t_ns, 'image_plane')) for s in track_markers(boxes[:3], [1, 2, 3])]))
        if self.camera:
            self.pub[T.image_topic('rgb')].publish(image_to_msg(self.image, 'rgb8', stamp_ns=t_ns))

    def _run(self) -> None:
        from mmdistill_common.conversions import audio_to_msg
        chunk = int(CHUNK_S * SR)
        t0 = time.monotonic()
        i = 0
        while not self.stop.is_set():
            t_ns = int(i * CHUNK_S * 1e9)
            start = (i * chunk) % (len(self.audio) - chunk)
            self.pub[self.T.AUDIO].publish(audio_to_msg(self.audio[start:start + chunk], t_ns))
            ms = round(CHUNK_S * 1000)
            if (i + 1) * ms // 100 > i * ms // 100:                                  # a 10-Hz tick in this chunk
                self.frame((i + 1) * ms // 100, t_ns)
            i += 1
            time.sleep(max(0.0, t0 + i * CHUNK_S - time.monotonic()))

    def start(self) -> None:
        from mmdistill_common.conversions import audio_info
        self.info.publish(audio_info(8, SR))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        self.stop.clear()


def measure(proc, client, seconds: float) -> dict:
    """CPU % of one core of ``proc`` while the client reads for ``seconds``."""
    c0, t0 = proc_cpu_s(proc.pid), time.monotonic()
    n0 = {k: len(v) for k, v in client.received.items()}
    client.poll(seconds)
    c1, t1 = proc_cpu_s(proc.pid), time.monotonic()
    got = {k: len(v) - n0.get(k, 0) for k, v in client.received.items()}
    return {'cpu_pct_one_core': round(100 * (c1 - c0) / (t1 - t0), 1), 'seconds': round(t1 - t0, 1),
            'messages_per_s': {k: round(v / (t1 - t0), 1) for k, v in sorted(got.items()) if v}}


def conversion_costs(geometry, repeats: int = 50) -> dict:
    """Median thread CPU time (ms) of each conversion the view does per message, no DDS, no server."""
    from mmdistill_bringup import foxglove_messages as F
    from mmdistill_bringup.acoustic_map import BearingHistory, SrpPhatMap, column_azimuths
    from mmdistill_bringup.foxglove_view import HEATMAP_COLUMNS, HEATMAP_ROWS
    from mmdistill_tracking.visualization import track_markers
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (geometry.height, geometry.width, 3), dtype=np.uint8)
    block = (rng.standard_normal((int(0.1 * SR), 8)) * 2000).astype(np.int16)
    boxes = [[20 * i, 40, 20 * i + 60, 90] for i in range(5)]
    srp = BearingHistory(SrpPhatMap(geometry.mic_positions, SR, column_azimuths(
        geometry.width, geometry.fx, geometry.cx, HEATMAP_COLUMNS), speed_of_sound=geometry.speed_of_sound),
        HEATMAP_COLUMNS, HEATMAP_ROWS)
    cases = {
        'camera_jpeg': lambda: F.compressed_image(img, 0).encode(),
        'boxes_5': lambda: F.box_annotations(boxes, 0, scores=[0.5] * 5).encode(),
        'scene_3_tracks': lambda: F.scene_update(track_markers(boxes[:3], [1, 2, 3]), 0).encode(),
        'srp_phat_0.1s': lambda: srp.push(block.astype(np.float32)),
        'heatmap_image': lambda: F.heatmap_image(np.stack(srp.rows), 0, vmin=0.0, vmax=1.0, scale=(2, 2)).encode(),
        'audio_levels': lambda: F.audio_levels(block, 0),
    }
    out = {}
    for name, fn in cases.items():
        fn()
        times = []
        for _ in range(repeats):
            t = time.thread_time()
            fn()
            times.append(time.thread_time() - t)
        out[name] = round(float(np.median(times)) * 1e3, 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seconds', type=float, default=20.0, help='measured seconds per case (default 20)')
    p.add_argument('--idle', type=float, default=5.0, help='idle seconds measured first (default 5)')
    p.add_argument('--out', type=Path, default=Path(__file__).parent / 'results' / 'view.json')
    a = p.parse_args(argv)

    import rclpy

    from mmdistill_bringup.acoustic_map import ArrayGeometry
    from mmdistill_bringup.foxglove_client import FoxgloveClient
    from mmdistill_bringup.foxglove_view import VIEW_CHANNELS
    geometry = ArrayGeometry.from_scenario()
    result = {'benchmark': 'view', 'machine': machine_info(), 'rate_hz': 10.0,
              'image': [geometry.width, geometry.height], 'conversions_ms': conversion_costs(geometry)}
    port = free_port()
    proc = subprocess.Popen(['mmdistill', 'view', '--port', str(port)], stderr=subprocess.PIPE, text=True)
    rclpy.init()
    node = rclpy.create_node('bench_view_feed')
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin_stop = threading.Event()

    def spin() -> None:
        while not spin_stop.is_set():
            ex.spin_once(timeout_sec=0.05)
    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        client = None
        deadline = time.monotonic() + 60
        while client is None:
            try:
                client = FoxgloveClient(port)
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f'mmdistill view did not start: {proc.stderr.read() if proc.poll() else ""}')
                time.sleep(0.3)
        with client:
            client.wait(lambda c: set(VIEW_CHANNELS) <= set(c.channels), timeout=10)
            client.subscribe()
            time.sleep(2.0)                                          # imports and discovery settle
            result['idle'] = measure(proc, client, a.idle)
            for case, camera in (('car', False), ('sim', True)):
                feed = Feed(node, geometry, camera)
                deadline = time.monotonic() + 15
                while node.count_subscribers(feed.T.AUDIO) < 1 and time.monotonic() < deadline:
                    time.sleep(0.1)
                feed.start()
                client.poll(2.0)                                     # warm-up
                result[case] = measure(proc, client, a.seconds)
                result[case]['extra_cpu_pct_one_core'] = round(result[case]['cpu_pct_one_core']
                                                               - result['idle']['cpu_pct_one_core'], 1)
                feed.halt()
                client.poll(1.0)
    finally:
        spin_stop.set()
        spinner.join(timeout=5)
        proc.send_signal(2)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    result['load_avg_after'] = list(os.getloadavg())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
