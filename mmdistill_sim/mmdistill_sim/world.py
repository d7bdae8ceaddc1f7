"""World state: seeded traffic on straight lanes, ego motion, static occluders.

Every vehicle moves at constant velocity along its lane, so its position is an
analytic function of time; the acoustics use that to solve the retarded-time
equation in closed form (exact Doppler) and the renderer to place boxes at any
frame time.  All randomness comes from one ``numpy.random.Generator`` derived
from the scenario seed, so traffic is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .scenario import VEHICLE_CLASSES, Lane, Scenario

__all__ = ['Vehicle', 'World', 'CLASS_PARAMS']

# length, width, height (m) mean and spread; acoustic source height; cylinders; idle rpm; rpm per m/s;
# engine and tyre level (dB SPL at 1 m, tyre level at 14 m/s)
CLASS_PARAMS = {
    'car': dict(size=(4.5, 1.8, 1.5), size_sd=(0.3, 0.08, 0.08), src_h=0.4, cyl=4, idle=800.0, k_rpm=110.0,
                engine_db=82.0, tyre_db=84.0, speed_factor=1.0),
    'truck': dict(size=(9.0, 2.5, 3.4), size_sd=(1.5, 0.05, 0.3), src_h=0.8, cyl=6, idle=600.0, k_rpm=70.0,
                  engine_db=92.0, tyre_db=90.0, speed_factor=0.85),
    'motorbike': dict(size=(2.1, 0.8, 1.4), size_sd=(0.1, 0.05, 0.05), src_h=0.5, cyl=2, idle=1200.0,
                      k_rpm=260.0, engine_db=90.0, tyre_db=76.0, speed_factor=1.1),
}


@dataclass
class Vehicle:
    """One vehicle: constant-velocity box with acoustic timbre and appearance."""
    vid: int
    kind: str
    lane: int
    p0: np.ndarray            # footprint centre at t = 0 (world, z = 0)
    vel: np.ndarray           # (3,) m/s
    size: np.ndarray          # (3,) length along travel, width, height
    along_x: bool             # length axis is world x (along lane) or y (across lane)
    t_on: float               # existence interval (s), may be +-inf
    t_off: float
    engine_on: bool
    rpm: float
    cylinders: int
    src_height: float
    engine_db: float          # dB SPL at 1 m
    tyre_db: float            # dB SPL at 1 m
    wobble: np.ndarray        # (depth, frequency Hz, phase rad) of the slow rpm modulation
    harmonics: np.ndarray     # relative amplitude of half-orders 1..K
    tyre_peak_hz: float
    colour: np.ndarray        # (3,) linear RGB in [0, 1]
    seed_key: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def speed(self) -> float:
        return float(np.linalg.norm(self.vel))

    @property
    def moving(self) -> bool:
        return self.speed > 0.0

    def half_extent(self) -> np.ndarray:
        ln, wd, ht = self.size
        return np.array([ln / 2, wd / 2, ht / 2]) if self.along_x else np.array([wd / 2, ln / 2, ht / 2])

    def position(self, t) -> np.ndarray:
        """Footprint centre at time(s) ``t`` (shape (..., 3))."""
        t = np.asarray(t, dtype=np.float64)
        return self.p0 + t[..., None] * self.vel

    def box(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box (lo, hi) in the world frame at time ``t``."""
        c = self.position(t)
        h = self.half_extent()
        lo = np.array([c[0] - h[0], c[1] - h[1], 0.0])
        hi = np.array([c[0] + h[0], c[1] + h[1], self.size[2]])
        return lo, hi

    def exists(self, t: float) -> bool:
        return self.t_on <= t <= self.t_off

    def level_db(self) -> float:
        """Total emitted level at 1 m (dB SPL): engine and tyre noise added in power."""
        if not self.engine_on:
            return -np.inf
        p = 10 ** (self.engine_db / 10)
        if self.moving:
            p += 10 ** (self.tyre_db / 10)
        return float(10 * np.log10(p))


class World:
    """Seeded traffic, ego motion and occluders for one scenario."""

    def __init__(self, scenario: Scenario):
        self.sc = scenario
        self.ego_velocity = np.array([scenario.ego.speed_mps if scenario.ego.mode == 'driving' else 0.0, 0.0, 0.0])
        occ = []
        for o in scenario.occluders:
            cx, cy = o.center_m
            lx, ly, h = o.size_m
            occ.append((np.array([cx - lx / 2, cy - ly / 2, 0.0]), np.array([cx + lx / 2, cy + ly / 2, h])))
        self.occluders: list[tuple[np.ndarray, np.ndarray]] = occ
        self.occluder_kinds = [o.kind for o in scenario.occluders]
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([scenario.seed, 0x7A11])))
        self.vehicles: list[Vehicle] = []
        self._spawn(rng)

    # ------------------------------------------------------------------ ego
    def ego_position(self, t) -> np.ndarray:
        """Ego origin in the world frame at time(s) ``t`` (shape (..., 3))."""
        t = np.asarray(t, dtype=np.float64)
        return t[..., None] * self.ego_velocity

    # ------------------------------------------------------------------ traffic
    def _lane_segment(self, lane: Lane) -> tuple[float, float]:
        ext = self.sc.road.extent_m
        if lane.direction == 'along':
            return -ext, ext + self.ego_velocity[0] * self.sc.duration_s
        return -ext, ext

    def _make_vehicle(self, rng: np.random.Generator, vid: int, kind: str, lane_idx: int, q0: float,
                      speed: float, t_on: float, t_off: float, engine_on: bool) -> Vehicle:
        lane = self.sc.road.lanes[lane_idx]
        prm = CLASS_PARAMS[kind]
        sign = 1.0 if lane.travel == 'positive' else -1.0
        size = np.maximum(np.array(prm['size']) + rng.normal(0, 1, 3) * np.array(prm['size_sd']), 0.3)
        if lane.direction == 'along':
            p0 = np.array([q0, lane.offset_m, 0.0])
            vel = np.array([sign * speed, 0.0, 0.0])
        else:
            p0 = np.array([lane.offset_m, q0, 0.0])
            vel = np.array([0.0, sign * speed, 0.0])
        rpm = (prm['idle'] + prm['k_rpm'] * speed) * rng.uniform(0.85, 1.15)
        rpm = float(np.clip(rpm, 500.0, 9000.0))
        n_h = 48
        k = np.arange(1, n_h + 1)
        # half-order series: firing orders (multiples of the cylinder count) dominate, others give timbre
        amp = rng.lognormal(0.0, 0.5, n_h) / k ** rng.uniform(0.6, 1.1)
        amp[k % prm['cyl'] == 0] *= rng.uniform(3.0, 6.0)
        amp /= np.sqrt(np.sum(amp ** 2))
        colour = rng.uniform(0.05, 0.9, 3) if rng.random() < 0.7 else np.full(3, rng.uniform(0.05, 0.9))
        return Vehicle(
            vid=vid, kind=kind, lane=lane_idx, p0=p0, vel=vel, size=size, along_x=lane.direction == 'along',
            t_on=t_on, t_off=t_off, engine_on=engine_on, rpm=rpm, cylinders=prm['cyl'],
            src_height=prm['src_h'], engine_db=prm['engine_db'] + 20 * np.log10(rpm / 2000.0) + rng.normal(0, 2),
            tyre_db=(prm['tyre_db'] + 35 * np.log10(max(speed, 1.0) / 14.0) + rng.normal(0, 2)),
            wobble=np.array([rng.uniform(0.005, 0.03), rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)]),
            harmonics=amp, tyre_peak_hz=float(rng.uniform(700, 1300)), colour=colour,
            seed_key=int(rng.integers(0, 2**31)))

    def _spawn(self, rng: np.random.Generator) -> None:
        tr = self.sc.traffic
        vid = 1
        # scripted vehicles first: their ids do not depend on the random traffic
        for sv in tr.scripted:
            self.vehicles.append(self._make_vehicle(rng, vid, sv.kind, sv.lane, sv.position_m, sv.speed_mps,
                                                    -np.inf, np.inf, sv.engine_on))
            vid += 1
        if tr.vehicles_per_minute > 0 and self.sc.road.lanes:
            vid = self._spawn_traffic(rng, vid)
        self._spawn_parked(rng, vid)

    def _spawn_parked(self, rng: np.random.Generator, vid: int) -> int:
        """Parked, cold vehicles along lanes with ``parked_per_100m`` > 0: bumper to bumper with random
        gaps (mean spacing 100 m / density), none inside the crossing zone of a lane of the other
        direction (an intersection is kept clear)."""
        lanes = self.sc.road.lanes
        probs = self.sc.traffic.class_mix.probabilities()
        for li, lane in enumerate(lanes):
            if lane.parked_per_100m <= 0:
                continue
            a, b = self._lane_segment(lane)
            cross = [(l.offset_m, l.width_m / 2 + 3.0) for l in lanes if l.direction != lane.direction]
            spacing = 100.0 / lane.parked_per_100m
            q = a + rng.uniform(0.0, spacing)
            while q < b:
                kind = VEHICLE_CLASSES[rng.choice(3, p=probs)]
                v = self._make_vehicle(rng, vid, kind, li, q, 0.0, -np.inf, np.inf, False)
                half = v.size[0] / 2
                if all(abs(q - c) > half + w for c, w in cross):
                    self.vehicles.append(v)
                    vid += 1
                q += max(spacing * rng.uniform(0.4, 1.6), v.size[0] + 1.0)
        return vid

    def _spawn_traffic(self, rng: np.random.Generator, vid: int) -> int:
        """Moving traffic (and the traffic's ``stopped_fraction`` of parked arrivals), per lane."""
        sc, tr = self.sc, self.sc.traffic
        lanes = sc.road.lanes
        probs = tr.class_mix.probabilities()
        wsum = sum(l.weight for l in lanes)
        for li, lane in enumerate(lanes):
            rate = tr.vehicles_per_minute / 60.0 * lane.weight / wsum
            if rate <= 0:
                continue
            a, b = self._lane_segment(lane)
            length = b - a
            vmin = max(tr.speed_min_mps, 0.5)
            t_start = -length / vmin          # prefill: the road is already populated at t = 0
            n = rng.poisson(rate * (sc.duration_s - t_start))
            times = np.sort(rng.uniform(t_start, sc.duration_s, n))
            sign = 1.0 if lane.travel == 'positive' else -1.0
            for t_arr in times:
                kind = VEHICLE_CLASSES[rng.choice(3, p=probs)]
                if rng.random() < tr.stopped_fraction:
                    if t_arr < 0:
                        continue   # parked vehicles are drawn from the arrivals during the drive only
                    # parked in the part of the lane the camera can see
                    q0 = rng.uniform(8.0, 60.0) if lane.direction == 'along' else rng.uniform(-25.0, 25.0)
                    self.vehicles.append(self._make_vehicle(rng, vid, kind, li, q0, 0.0, -np.inf, np.inf, False))
                    vid += 1
                    continue
                speed = float(np.clip(rng.uniform(tr.speed_min_mps, tr.speed_max_mps)
                                      * CLASS_PARAMS[kind]['speed_factor'], vmin, 80.0))
                t_off = t_arr + length / speed
                if t_off < 0:
                    continue
                q_entry = a if sign > 0 else b
                q0 = q_entry - sign * speed * t_arr     # coordinate at t = 0
                self.vehicles.append(self._make_vehicle(rng, vid, kind, li, q0, speed, t_arr, t_off, True))
                vid += 1
        return vid

    def active(self, t: float) -> list[Vehicle]:
        """Vehicles that exist at time ``t``."""
        return [v for v in self.vehicles if v.exists(t)]
