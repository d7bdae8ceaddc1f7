"""Top-level simulator: one scenario -> time-stamped camera frames and continuous 8-channel audio.

Timing (all stamps are integer nanoseconds from ``t0_ns``):

* audio sample n is captured at ``t0_ns + n * 1e9 / fs`` (floor to ns); chunks
  tile the signal without gaps or overlaps and carry the stamp of their first
  sample (DESIGN section 3);
* frame k is exposed at ``t0_ns + k * 1e9 / frame_rate`` for
  ``k < floor(duration * frame_rate)``.

Frames and audio are independent and random-access (each is keyed by its index
or sample range), so they can be streamed in any interleaving, and the same
scenario + seed always gives byte-identical output.  :meth:`Simulator.stream`
interleaves both in stamp order, which is what a bag writer or a live node
needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .acoustics import PA_PER_FULL_SCALE, AcousticRenderer, to_int16
from .camera import PinholeCamera
from .render import FrameGroundTruth, Renderer
from .scenario import Scenario, load_scenario
from .world import World

__all__ = ['Frame', 'AudioChunk', 'Simulator', 'PA_PER_FULL_SCALE', 'to_int16']


@dataclass
class Frame:
    """One camera frame: registered RGB (uint8 H x W x 3), depth (float32 m, NaN = no return),
    thermal (float32 K) and ground truth."""
    index: int
    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray
    thermal: np.ndarray
    gt: FrameGroundTruth


@dataclass
class AudioChunk:
    """Consecutive audio samples (float32, (n, channels), full-scale units: 1.0 = PA_PER_FULL_SCALE Pa)."""
    index: int
    first_sample: int
    stamp_ns: int
    data: np.ndarray

    def to_s16le(self) -> bytes:
        """Interleaved signed 16-bit little-endian bytes (AudioInfo sample_format S16LE)."""
        return to_int16(self.data).astype('<i2').tobytes()


class Simulator:
    """Deterministic multimodal simulation of one scenario."""

    def __init__(self, scenario: Union[Scenario, str, Path], seed: Optional[int] = None, t0_ns: int = 0):
        if not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario, seed=seed)
        elif seed is not None:
            import dataclasses
            scenario = dataclasses.replace(scenario, seed=int(seed))
        self.scenario = sc = scenario
        self.t0_ns = int(t0_ns)
        self.world = World(sc)
        self.camera = PinholeCamera(sc.camera)
        self.mic_positions = sc.mic_array.positions()            # (M, 3) ego frame
        self.acoustics = AcousticRenderer(self.world, self.mic_positions)
        self.renderer = Renderer(self.world, self.camera, audible_level=self.acoustics.received_level_db,
                                 noise_db=self.acoustics.noise_db, array_centre_ego=self.mic_positions.mean(0))

    # ------------------------------------------------------------------ properties
    @property
    def sample_rate(self) -> int:
        return int(self.scenario.audio.sample_rate)

    @property
    def channels(self) -> int:
        return int(self.mic_positions.shape[0])

    @property
    def n_samples(self) -> int:
        return int(round(self.scenario.duration_s * self.sample_rate))

    @property
    def n_frames(self) -> int:
        return int(np.floor(self.scenario.duration_s * self.scenario.frame_rate + 1e-9))

    def sample_stamp_ns(self, n: int) -> int:
        """Capture time of audio sample n (integer arithmetic: no drift over long drives)."""
        return self.t0_ns + (int(n) * 1_000_000_000) // self.sample_rate

    def frame_stamp_ns(self, k: int) -> int:
        return self.t0_ns + int(round(int(k) * 1e9 / self.scenario.frame_rate))

    def frame_time(self, k: int) -> float:
        return k / self.scenario.frame_rate

    # ------------------------------------------------------------------ vision
    def frame(self, k: int) -> Frame:
        """Render frame k (random access)."""
        if not 0 <= k < self.n_frames:
            raise IndexError(f'frame {k} outside 0..{self.n_frames - 1}')
        rgb, depth, thermal, gt = self.renderer.render(self.frame_time(k), k)
        return Frame(k, self.frame_stamp_ns(k), rgb, depth, thermal, gt)

    def frames(self) -> Iterator[Frame]:
        """All frames in order."""
        for k in range(self.n_frames):
            yield self.frame(k)

    def ground_truth(self, k: int) -> FrameGroundTruth:
        return self.frame(k).gt

    # ------------------------------------------------------------------ audio
    def audio_block(self, n0: int, n1: int, *, vehicles: bool = True, noise: bool = True) -> np.ndarray:
        """Samples [n0, n1) as float32 (n, channels) in full-scale units; any split gives the same samples."""
        n1 = min(n1, self.n_samples)
        x = self.acoustics.render(n0, n1, vehicles=vehicles, noise=noise) / PA_PER_FULL_SCALE
        return x.astype(np.float32)

    def audio(self, block_s: float = 1.0) -> np.ndarray:
        """The whole drive, float32 (samples, channels) in full-scale units."""
        out = np.empty((self.n_samples, self.channels), np.float32)
        step = max(1, int(block_s * self.sample_rate))
        for n0 in range(0, self.n_samples, step):
            n1 = min(n0 + step, self.n_samples)
            out[n0:n1] = self.audio_block(n0, n1)
        return out

    def audio_chunks(self, chunk_samples: Optional[int] = None, block_s: float = 1.0) -> Iterator[AudioChunk]:
        """Consecutive chunks (default ``audio.chunk_ms``), computed a block at a time; the last may be short."""
        cs = int(chunk_samples or self.scenario.chunk_samples)
        step = max(cs, int(block_s * self.sample_rate) // cs * cs)
        idx = 0
        for b0 in range(0, self.n_samples, step):
            block = self.audio_block(b0, min(b0 + step, self.n_samples))
            for off in range(0, len(block), cs):
                n0 = b0 + off
                yield AudioChunk(idx, n0, self.sample_stamp_ns(n0), block[off:off + cs])
                idx += 1

    # ------------------------------------------------------------------ streaming
    def stream(self, chunk_samples: Optional[int] = None) -> Iterator[Union[Frame, AudioChunk]]:
        """Frames and audio chunks interleaved by stamp (a chunk is yielded once all its samples exist,
        i.e. ordered by the stamp of its last sample, as a live driver would deliver it)."""
        frames = self.frames()
        nxt = next(frames, None)
        cs = int(chunk_samples or self.scenario.chunk_samples)
        for ch in self.audio_chunks(cs):
            end_ns = self.sample_stamp_ns(ch.first_sample + len(ch.data))
            while nxt is not None and nxt.stamp_ns <= end_ns:
                yield nxt
                nxt = next(frames, None)
            yield ch
        while nxt is not None:
            yield nxt
            nxt = next(frames, None)

    def audio_info(self) -> dict:
        """Fields of audio_common_msgs/AudioInfo for the chunks' S16LE encoding."""
        return dict(channels=self.channels, sample_rate=self.sample_rate, sample_format='S16LE',
                    bitrate=16 * self.channels * self.sample_rate, coding_format='wave')

    def camera_info(self) -> dict:
        return self.camera.camera_info()
