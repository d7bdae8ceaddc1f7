"""Registered RGB, depth and thermal images of the scene plus per-frame ground truth.

Rendering is exact ray casting against axis-aligned boxes (vehicles and
occluders) with a z-buffer, vectorised over the pixels of each object's
projected rectangle.  Each modality degrades the way the real sensor does:

* RGB (``rgb8``): exposure follows the ambient light (gain capped at 4x), so at
  night only headlit areas and vehicle lights stand out of the amplified noise;
  fog blends towards the fog colour with Koschmieder's law (contrast 5 % at the
  visibility distance).
* depth (``32FC1`` metres along the optical axis, NaN = no return): range
  limit (shortened by fog and rain), noise growing with z^2, dropouts growing
  towards the range limit; independent of light.
* thermal (``32FC1`` kelvin): engine, tyres and exhaust of running vehicles are
  hot, the background follows the air and road temperature; parked vehicles
  with the engine off sit at road temperature and almost vanish; LWIR fog
  extinction is ~6x weaker than visible; independent of light.

Visibility per modality (ground truth) counts the vehicle's silhouette pixels
that are unoccluded *and* distinguishable in that modality: RGB display
contrast against the empty scene above 3 noise sigmas, a valid depth return,
or a thermal contrast above 1.5 K.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .camera import PinholeCamera
from .world import Vehicle, World

__all__ = ['FrameGroundTruth', 'Renderer', 'GT_FIELDS']

LIGHT = {'day': 1.0, 'dusk': 0.3, 'night': 0.01}
SUN_K = {'day': 8.0, 'dusk': 3.0, 'night': 0.5}
SKY = {'day': np.array([0.55, 0.70, 0.95]), 'dusk': np.array([0.45, 0.30, 0.28]),
       'night': np.array([0.010, 0.012, 0.025])}
CLASS_ID = {'car': 0, 'truck': 1, 'motorbike': 2}
OCCLUDED_BELOW = 0.5
THERMAL_CONTRAST_K = 1.5
AUDIBLE_SNR_DB = -6.0
_SHADE = np.array([0.8, 0.65, 1.0])   # face shading by the axis of its normal
NOISY_BACKGROUNDS = 8   # noisy empty-scene renderings a frame starts from (see Renderer._empty_scenes)   # tonal engine sound is still detectable somewhat below the broadband noise level

GT_FIELDS = ('id', 'class', 'box', 'distance_m', 'azimuth_deg', 'speed_mps', 'visible_fraction',
             'visible_rgb', 'visible_depth', 'visible_thermal', 'occluded', 'audible', 'level_db', 'engine_on')


@dataclass
class FrameGroundTruth:
    """Ground truth of one frame, as parallel arrays (one row per vehicle whose box is in the image).

    ``boxes`` are amodal (the whole projected vehicle, clipped to the image) in the
    RGB image, x1 y1 x2 y2 pixels (mmdistill_common.boxes convention).  Distance
    and azimuth are from the microphone array centre (azimuth: left positive,
    0 = straight ahead).  ``audible``: the analytic received level exceeds the
    non-vehicle noise level at the array minus 6 dB (``AUDIBLE_SNR_DB``).
    """
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    classes: list = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    distance_m: np.ndarray = field(default_factory=lambda: np.zeros(0))
    azimuth_deg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    speed_mps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    visible_fraction: np.ndarray = field(default_factory=lambda: np.zeros(0))
    visible_rgb: np.ndarray = field(default_factory=lambda: np.zeros(0))
    visible_depth: np.ndarray = field(default_factory=lambda: np.zeros(0))
    visible_thermal: np.ndarray = field(default_factory=lambda: np.zeros(0))
    occluded: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    audible: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    level_db: np.ndarray = field(default_factory=lambda: np.zeros(0))
    engine_on: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.ids)

    def to_list(self) -> list[dict]:
        """One plain dict per vehicle (JSON-serialisable)."""
        out = []
        for i in range(len(self.ids)):
            out.append({
                'id': int(self.ids[i]), 'class': self.classes[i], 'box': [float(x) for x in self.boxes[i]],
                'distance_m': float(self.distance_m[i]), 'azimuth_deg': float(self.azimuth_deg[i]),
                'speed_mps': float(self.speed_mps[i]), 'visible_fraction': float(self.visible_fraction[i]),
                'visible_rgb': float(self.visible_rgb[i]), 'visible_depth': float(self.visible_depth[i]),
                'visible_thermal': float(self.visible_thermal[i]), 'occluded': bool(self.occluded[i]),
                'audible': bool(self.audible[i]), 'level_db': float(self.level_db[i]),
                'engine_on': bool(self.engine_on[i])})
        return out


def _cast_box_numpy(inv_rays, o, lo, hi, y0, y1, x0, x1, zr, idb, k):
    """Slab test of the box [lo, hi] against the rays of pixels [y0:y1, x0:x1].

    Returns the silhouette size and, for the pixels where the box is hit closer than ``zr`` (row-major
    order), their rows, columns, entry parameter, entry axis and normal sign; updates ``zr`` and ``idb``
    (= k) there.  The compiled kernel below does exactly the same float64 operations per pixel.
    """
    inv = inv_rays[y0:y1, x0:x1]
    with np.errstate(invalid='ignore'):
        t1 = (lo - o) * inv
        t2 = (hi - o) * inv
    tn = np.minimum(t1, t2)
    tf = np.maximum(t1, t2)
    tn = np.where(np.isnan(tn), -np.inf, tn)
    tf = np.where(np.isnan(tf), np.inf, tf)
    tmin = tn.max(-1)
    tmax = tf.min(-1)
    hit = (tmax >= tmin) & (tmin > 0)
    sil = int(hit.sum())
    closer = hit & (tmin < zr[y0:y1, x0:x1])
    yy, xx = np.nonzero(closer)
    axis = tn.argmax(-1)[yy, xx]
    a1, a2 = t1[yy, xx, axis], t2[yy, xx, axis]
    normal_sign = np.where(a1 <= a2, -1.0, 1.0)
    tm = tmin[yy, xx]
    ys, xs = yy + y0, xx + x0
    zr[ys, xs] = tm
    idb[ys, xs] = k
    return sil, ys, xs, tm, axis, normal_sign


_cast_box = _cast_box_numpy
_vehicle_appearance = None      # the compiled twin of Renderer._appearance for vehicles, where numba exists

try:  # numba ships with librosa; the numpy path is used where it is missing or disabled
    if os.environ.get('MMDISTILL_SIM_NUMBA', '1') == '0':
        raise ImportError
    import numba

    @numba.njit(cache=True, fastmath=False, nogil=True)
    def _cast_box_kernel(inv_rays, o, lo, hi, y0, y1, x0, x1, zr, idb, k):  # pragma: no cover - compiled
        n = (y1 - y0) * (x1 - x0)
        ys = np.empty(n, np.intp)
        xs = np.empty(n, np.intp)
        tms = np.empty(n, np.float64)
        axes = np.empty(n, np.intp)
        signs = np.empty(n, np.float64)
        sil = 0
        m = 0
        for y in range(y0, y1):
            for x in range(x0, x1):
                tmin = -np.inf
                tmax = np.inf
                ax = 0
                a1 = 0.0
                a2 = 0.0
                for j in range(3):
                    t1 = (lo[j] - o[j]) * inv_rays[y, x, j]
                    t2 = (hi[j] - o[j]) * inv_rays[y, x, j]
                    if np.isnan(t1) or np.isnan(t2):     # np.minimum / np.maximum propagate NaN ...
                        tn = -np.inf                      # ... which the numpy path then replaces
                        tf = np.inf
                    else:
                        tn = t1 if t1 < t2 else t2
                        tf = t2 if t1 < t2 else t1
                    if j == 0 or tn > tmin:               # argmax: the first maximum
                        tmin = tn
                        ax = j
                        a1 = t1
                        a2 = t2
                    if tf < tmax:
                        tmax = tf
                if tmax >= tmin and tmin > 0:
                    sil += 1
                    if tmin < zr[y, x]:
                        zr[y, x] = tmin
                        idb[y, x] = k
                        ys[m] = y
                        xs[m] = x
                        tms[m] = tmin
                        axes[m] = ax
                        signs[m] = -1.0 if a1 <= a2 else 1.0
                        m += 1
        return sil, ys[:m], xs[:m], tms[:m], axes[:m], signs[:m]

    @numba.njit(cache=True, fastmath=False, nogil=True)
    def _vehicle_appearance_kernel(P, axis, normal_sign, lo_z, dz, lo_t, dt, lo_o, do, ta, travel, colour,
                                   is_car, is_truck, headlights, engine_on, moving, t_air, t_road,
                                   rng_r):  # pragma: no cover - compiled
        # Renderer._appearance for a vehicle, pixel by pixel: the same comparisons and float64 operations,
        # and the same order of overwrites (glass, then tyres; engine, tyres, exhaust, then glass)
        n = P.shape[0]
        other = 1 - ta
        alb = np.empty((n, 3))
        emis = np.zeros((n, 3))
        temp = np.empty(n)
        glass_lo = 0.55 if is_car else 0.65
        for i in range(n):
            zf = (P[i, 2] - lo_z) / dz
            zf = 0.0 if zf < 0.0 else (1.0 if zf > 1.0 else zf)
            ax = axis[i]
            shade = 0.8 if ax == 0 else (0.65 if ax == 1 else 1.0)
            lon = (P[i, ta] - lo_t) / dt
            if travel < 0:
                lon = 1 - lon
            lat = (P[i, other] - lo_o) / do
            end_face = ax == ta
            front = end_face and (normal_sign[i] * travel) > 0
            rear = end_face and not front
            side = ax == other
            glass = zf > glass_lo and zf < 0.93 and ax != 2
            if is_truck:
                glass = glass and (front or (side and lon > 0.8))
            tyre = side and zf < 0.28 and (abs(lon - 0.18) < 0.09 or abs(lon - 0.82) < 0.09)
            for c in range(3):
                alb[i, c] = shade * colour[c]
            if glass:
                alb[i, 0] = alb[i, 1] = alb[i, 2] = 0.05
            if tyre:
                alb[i, 0] = alb[i, 1] = alb[i, 2] = 0.03
            lamp = zf > 0.3 and zf < 0.48 and (lat < 0.22 or lat > 0.78)
            if headlights and lamp:
                if front:
                    emis[i, 0] = 3.0
                    emis[i, 1] = 3.0
                    emis[i, 2] = 2.7
                elif rear:
                    emis[i, 0] = 1.2
                    emis[i, 1] = 0.05
                    emis[i, 2] = 0.05
            if engine_on:
                tv = t_air + 4.0
                if (front and zf < 0.6) or (side and lon > 0.75 and zf < 0.5):
                    tv = t_air + 35.0
                if tyre:
                    tv = t_air + (18.0 if moving else 4.0)
                if rear and zf < 0.25:
                    tv = t_air + 25.0
                if glass:
                    tv = t_air - 6.0
            else:
                tv = t_road + rng_r
                if glass:
                    tv = t_road - 1.0
            temp[i] = tv
        return alb, emis, temp

    def _vehicle_appearance(P, axis, normal_sign, *args):
        return _vehicle_appearance_kernel(np.ascontiguousarray(P), np.ascontiguousarray(axis, np.intp),
                                          np.ascontiguousarray(normal_sign, np.float64), *args)

    def _cast_box(inv_rays, o, lo, hi, y0, y1, x0, x1, zr, idb, k):
        return _cast_box_kernel(inv_rays, o, np.asarray(lo, np.float64), np.asarray(hi, np.float64),
                                y0, y1, x0, x1, zr, idb, k)
except ImportError:  # pragma: no cover
    pass


class Renderer:
    """Renders the three registered images and the ground truth of a frame time."""

    def __init__(self, world: World, camera: PinholeCamera, audible_level=None, noise_db: float = 0.0,
                 array_centre_ego: Optional[np.ndarray] = None):
        self.world, self.cam = world, camera
        sc = world.sc
        self.sc = sc
        self.audible_level, self.noise_db = audible_level, noise_db
        self.array_centre = np.zeros(3) if array_centre_ego is None else np.asarray(array_centre_ego, float)
        H, W = camera.height, camera.width
        self.light = LIGHT[sc.time_of_day]
        self.t_air = 273.15 + sc.environment.temperature_c
        self.t_road = self.t_air + SUN_K[sc.time_of_day]
        vis = {'clear': 20000.0, 'rain': 400.0, 'fog': sc.environment.fog_visibility_m}[sc.weather]
        self.beta = 3.0 / vis
        self.beta_ir = self.beta / 6.0
        self.depth_range = sc.camera.depth_range_m * {'clear': 1.0, 'rain': 0.8,
                                                       'fog': min(1.0, 0.6 * vis / sc.camera.depth_range_m)}[sc.weather]
        self.gain = min(1.0 / self.light, 4.0)
        self.sigma_disp = 0.012 * self.gain ** 0.7 * (1.3 if sc.weather == 'rain' else 1.0)
        rays = camera.rays
        with np.errstate(divide='ignore'):
            self.inv_rays = 1.0 / rays
        d_z = rays[..., 2]
        ground = d_z < -1e-6
        with np.errstate(divide='ignore'):
            rg = np.where(ground, camera.position[2] / np.where(ground, -d_z, 1.0), np.inf)
        self.bg_range = np.minimum(rg, 5000.0)
        self.bg_sky = ~ground | (rg > 5000.0)
        self.headlights = sc.time_of_day != 'day'            # vehicle lamps on
        self.ego_headlights = self.headlights and sc.ego.mode == 'driving'   # a parked ego has its lights off
        self._pools: dict = {}
        self._gamma_lut = (np.linspace(0, 1, 4097) ** (1 / 2.2)).astype(np.float32)
        # ego headlight illumination of any point seen along a ray at range r: cone around the forward axis
        ang = np.arccos(np.clip(rays[..., 0], -1, 1))
        self.cone = np.exp(-(ang / 0.35) ** 2) if self.ego_headlights else np.zeros((H, W))
        # empty-scene radiance (road + sky), linear
        v = (np.arange(H)[:, None] + 0.5) / H * np.ones((1, W))
        sky = SKY[sc.time_of_day][None, None, :] * (1.0 - 0.3 * v[..., None])
        road = 0.22 * np.ones((H, W, 3)) * (self.light + self._headlight(self.bg_range))[..., None]
        lin = np.where(self.bg_sky[..., None], sky, road)
        self.bg_lin = self._fog(lin, self.bg_range)
        self.bg_disp = self._display(self.bg_lin)
        t_sky = self.t_air - (25.0 if sc.weather == 'clear' else 5.0)
        self.bg_temp = self._fog_ir(np.where(self.bg_sky, t_sky, self.t_road), self.bg_range)
        self.bg_z = np.where(self.bg_sky, np.inf, self.bg_range * camera.z_per_range)
        self._zr0 = np.where(self.bg_sky, np.inf, self.bg_range)     # z-buffer (ray range) of the empty scene
        # per-frame scratch buffers: only pixels an object wins in this frame are ever read back
        self._lin = np.empty((H, W, 3))
        self._emis = np.empty((H, W, 3))
        self._temp = np.empty((H, W))
        self._backgrounds: Optional[list] = None

    # ------------------------------------------------------------------ empty scene
    def _empty_scenes(self) -> list:
        """``NOISY_BACKGROUNDS`` noisy renderings (rgb, depth, thermal) of the empty scene, made once;
        a frame starts from one of them, drawn at random, and renders only its object pixels.
        Why: the empty scene is most of every image, and its sensor noise and depth dropouts
        need not be drawn afresh each frame (that was most of the rendering time at 768x256)."""
        if self._backgrounds is None:
            H, W = self.cam.height, self.cam.width
            g = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.sc.seed, 23])))
            out = []
            for _ in range(NOISY_BACKGROUNDS):
                noisy = self.bg_disp + self._noise(g, 0, (H, W, 3)) * self.sigma_disp
                rgb = np.clip(noisy * 255.0 + 0.5, 0, 255).astype(np.uint8)
                depth, _ = self._depth(self.bg_z, g, (H, W))
                thermal = (self.bg_temp + self._noise(g, 2, (H, W)) * 0.1).astype(np.float32)
                out.append((rgb, depth, thermal))
            self._backgrounds = out
            self._bg_valid = [~np.isnan(d) for _, d, _ in out]      # depth returns of each
        return self._backgrounds

    def _depth(self, z: np.ndarray, rng: np.random.Generator, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Depth sensor reading of true camera depths ``z``: range limit, dropouts growing towards
        it, noise growing with z^2; float32 with NaN for no return, and the validity mask."""
        with np.errstate(invalid='ignore'):
            zq = z * (1.0 / self.depth_range)
            p_drop = 0.02 + 0.5 * (zq * zq) ** 2
            valid = (zq <= 1.0) & (self._uniform(rng, shape) >= p_drop)
        zv = np.where(valid, z, 0.0)
        zn = zv + self._noise(rng, 1, shape) * (0.01 + 0.0015 * zv * zv)
        return np.where(valid, zn, np.nan).astype(np.float32), valid

    # ------------------------------------------------------------------ noise
    def _pool(self, which: int) -> np.ndarray:
        """Per-scenario pool of standard normals (which < 3) or uniforms, four full RGB images long;
        draws take random windows of it, which is much cheaper than drawing fresh noise for three
        images every frame."""
        pool = self._pools.get(which)
        if pool is None:
            g = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.sc.seed, 22, which])))
            n = 4 * self.cam.height * self.cam.width * 3
            pool = g.random(n, dtype=np.float32) if which == 3 else g.standard_normal(n, dtype=np.float32)
            self._pools[which] = pool
        return pool

    def _noise(self, rng: np.random.Generator, which: int, shape: tuple) -> np.ndarray:
        size = int(np.prod(shape))
        pool = self._pool(which)
        off = int(rng.integers(0, len(pool) - size + 1))
        return pool[off:off + size].reshape(shape)

    def _uniform(self, rng: np.random.Generator, shape: tuple) -> np.ndarray:
        return self._noise(rng, 3, shape)

    # ------------------------------------------------------------------ optics helpers
    def _headlight(self, r: np.ndarray, cone: Optional[np.ndarray] = None) -> np.ndarray:
        if not self.ego_headlights:
            return np.zeros_like(r)
        c = self.cone if cone is None else cone
        return 30.0 / np.maximum(r, 3.0) ** 2 * c

    def _fog(self, lin: np.ndarray, r: np.ndarray) -> np.ndarray:
        tr = np.exp(-self.beta * r)[..., None]
        fog_col = 0.7 * self.light   # airlight: fog lit by the ambient light
        return lin * tr + fog_col * (1 - tr)

    def _fog_ir(self, temp: np.ndarray, r: np.ndarray) -> np.ndarray:
        tr = np.exp(-self.beta_ir * r)
        return temp * tr + self.t_air * (1 - tr)

    def _display(self, lin: np.ndarray) -> np.ndarray:
        """Exposure gain, clipping and display gamma (lookup table)."""
        x = lin * self.gain
        np.clip(x, 0, 1, out=x)
        x *= 4096
        x += 0.5
        return np.take(self._gamma_lut, x.astype(np.intp))

    # ------------------------------------------------------------------ scene objects
    def _objects(self, t: float) -> list:
        ego = self.world.ego_position(t)
        objs = []
        for v in self.world.vehicles:
            if v.exists(t):
                lo, hi = v.box(t)
                objs.append(('vehicle', v, lo - ego, hi - ego))
        for k, (lo, hi) in enumerate(self.world.occluders):
            objs.append(('occluder', self.world.occluder_kinds[k], lo - ego, hi - ego))
        return objs

    def _appearance(self, kind: str, obj, lo, hi, P, axis, normal_sign, rng_r):
        """Linear albedo x shading (h,w,3), emission (h,w,3) and temperature (h,w) of hit points P."""
        h = P.shape[:-1]
        zf = np.clip((P[..., 2] - lo[2]) / max(hi[2] - lo[2], 1e-6), 0, 1)
        shade = np.take(_SHADE, axis)
        emis = np.zeros(h + (3,))
        if kind == 'occluder':
            base = {'wall': np.array([0.45, 0.43, 0.40]), 'building': np.array([0.5, 0.38, 0.30]),
                    'truck': np.array([0.75, 0.75, 0.72])}[obj]
            alb = shade[..., None] * base          # (..., 3)
            temp = np.full(h, self.t_air + 0.6 * SUN_K[self.sc.time_of_day])
            return alb, emis, temp
        v: Vehicle = obj
        ta = 0 if v.along_x else 1
        other = 1 - ta
        travel = np.sign(v.vel[ta]) if v.moving else (1.0 if self.sc.road.lanes[v.lane].travel == 'positive' else -1.0)
        if _vehicle_appearance is not None:
            return _vehicle_appearance(
                P, axis, normal_sign, float(lo[2]), float(max(hi[2] - lo[2], 1e-6)), float(lo[ta]),
                float(max(hi[ta] - lo[ta], 1e-6)), float(lo[other]), float(max(hi[other] - lo[other], 1e-6)),
                ta, float(travel), np.asarray(v.colour, np.float64), v.kind == 'car', v.kind == 'truck',
                self.headlights, v.engine_on, v.moving, float(self.t_air), float(self.t_road), float(rng_r))
        # longitudinal position along travel (0 rear .. 1 front) and lateral position across the width
        lon = (P[..., ta] - lo[ta]) / max(hi[ta] - lo[ta], 1e-6)
        if travel < 0:
            lon = 1 - lon
        lat = (P[..., other] - lo[other]) / max(hi[other] - lo[other], 1e-6)
        end_face = axis == ta
        front = end_face & ((normal_sign * travel) > 0)
        rear = end_face & ~front
        side = axis == other
        alb = shade[..., None] * v.colour
        glass_lo = 0.55 if v.kind == 'car' else 0.65
        glass = (zf > glass_lo) & (zf < 0.93) & (axis != 2)
        if v.kind == 'truck':
            glass &= (front | (side & (lon > 0.8)))
        tyre = side & (zf < 0.28) & ((np.abs(lon - 0.18) < 0.09) | (np.abs(lon - 0.82) < 0.09))
        alb[glass] = 0.05
        alb[tyre] = 0.03
        lamp = (zf > 0.3) & (zf < 0.48) & ((lat < 0.22) | (lat > 0.78))
        if self.headlights:
            emis[front & lamp] = [3.0, 3.0, 2.7]
            emis[rear & lamp] = [1.2, 0.05, 0.05]
        # thermal
        moving_hot = v.engine_on
        if moving_hot:
            temp = np.full(h, self.t_air + 4.0)
            engine = (front & (zf < 0.6)) | (side & (lon > 0.75) & (zf < 0.5))
            temp[engine] = self.t_air + 35.0
            temp[tyre] = self.t_air + (18.0 if v.moving else 4.0)
            temp[rear & (zf < 0.25)] = self.t_air + 25.0
            temp[glass] = self.t_air - 6.0
        else:
            temp = np.full(h, self.t_road) + rng_r
            temp[glass] = self.t_road - 1.0   # cooled glass, but barely below the road
        return alb, emis, temp

    # ------------------------------------------------------------------ main
    def render(self, t: float, frame_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, FrameGroundTruth]:
        """RGB uint8 (H,W,3), depth float32 (H,W), thermal float32 (H,W) and ground truth at time t."""
        cam = self.cam
        H, W = cam.height, cam.width
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.sc.seed, 21, frame_index])))
        zr = self._zr0.copy()
        idb = np.full((H, W), -1, np.int32)
        # flat (pixel, ...) views: 1-D integer indexing is much cheaper than (rows, cols) pairs
        lin, emis, temp = self._lin.reshape(-1, 3), self._emis.reshape(-1, 3), self._temp.reshape(-1)
        rays = cam.rays.reshape(-1, 3)
        o = cam.position
        recs = []
        objs = self._objects(t)
        boxes = cam.project_boxes(np.array([o_[2] for o_ in objs]).reshape(-1, 3),
                                  np.array([o_[3] for o_ in objs]).reshape(-1, 3))
        for k, ((kind, obj, lo, hi), box) in enumerate(zip(objs, boxes)):
            if box is None:
                continue
            x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
            x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
            # ray casting over the box's pixels: updates the z-buffer and the object ids where this object
            # is the closest so far, returns those pixels (row-major) with their hit parameters
            sil, ys, xs, tmin, axis, normal_sign = _cast_box(self.inv_rays, o, lo, hi, y0, y1, x0, x1, zr, idb, k)
            if sil == 0:
                continue
            if len(ys):
                fl = ys * W + xs                                  # flat pixel indices (row-major)
                P = o + tmin[:, None] * np.take(rays, fl, axis=0)
                rr = rng.normal(0.0, 0.3) if kind == 'vehicle' else 0.0
                alb, em, tp = self._appearance(kind, obj, lo, hi, P, axis, normal_sign, rr)
                lin[fl] = alb
                emis[fl] = em
                temp[fl] = tp
            recs.append((k, kind, obj, lo, hi, (y0, y1, x0, x1), sil, box))

        sel = np.flatnonzero(idb >= 0)            # object pixels, flat row-major
        n_o = len(sel)
        r_o = np.take(zr, sel)
        i_bg = int(rng.integers(NOISY_BACKGROUNDS))
        bg_rgb, bg_depth, bg_thermal = self._empty_scenes()[i_bg]
        # RGB: lit albedo + emission, fog, exposure, display gamma (object pixels only; the empty scene is cached)
        lit = (np.take(lin, sel, axis=0) * (self.light + self._headlight(r_o, np.take(self.cone, sel)))[:, None]
               + np.take(emis, sel, axis=0))
        disp_o = self._display(self._fog(lit, r_o))
        rgb_vis = np.zeros((H, W), bool)
        dd = np.abs(disp_o - np.take(self.bg_disp.reshape(-1, 3), sel, axis=0))
        rgb_vis.reshape(-1)[sel] = np.maximum(np.maximum(dd[:, 0], dd[:, 1]), dd[:, 2]) > 3 * self.sigma_disp + 0.02
        rgb = bg_rgb.copy()
        if n_o:
            noisy = self._noise(rng, 0, (n_o, 3)) * self.sigma_disp
            noisy += disp_o
            noisy *= 255.0
            noisy += 0.5
            rgb.reshape(-1, 3)[sel] = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
        # depth (camera z); the empty scene's returns come with the cached background
        valid = self._bg_valid[i_bg].copy()
        depth = bg_depth.copy()
        if n_o:
            d_o, valid_o = self._depth(r_o * np.take(cam.z_per_range, sel), rng, (n_o,))
            depth.reshape(-1)[sel] = d_o
            valid.reshape(-1)[sel] = valid_o
        # thermal
        th_o = self._fog_ir(np.take(temp, sel), r_o)
        th_vis = np.zeros((H, W), bool)
        th_vis.reshape(-1)[sel] = np.abs(th_o - np.take(self.bg_temp, sel)) > THERMAL_CONTRAST_K
        thermal = bg_thermal.copy()
        if n_o:
            thermal.reshape(-1)[sel] = (th_o + self._noise(rng, 2, (n_o,)) * 0.1).astype(np.float32)

        gt = self._ground_truth(t, recs, idb, rgb_vis, valid, th_vis)
        return rgb, depth, thermal, gt

    def _ground_truth(self, t, recs, idb, rgb_vis, depth_vis, th_vis) -> FrameGroundTruth:
        rows = []
        ego = self.world.ego_position(t)
        centre = self.array_centre
        for k, kind, obj, lo, hi, (y0, y1, x0, x1), sil, box in recs:
            if kind != 'vehicle':
                continue
            v: Vehicle = obj
            win = idb[y0:y1, x0:x1] == k
            nwin = int(win.sum())
            rel = v.position(t) - ego - centre
            dist = float(np.hypot(rel[0], rel[1]))
            az = float(np.degrees(np.arctan2(rel[1], rel[0])))
            lvl = self.audible_level(v, t) if self.audible_level is not None else -np.inf
            rows.append((v.vid, v.kind, box, dist, az, v.speed, nwin / sil,
                         int((win & rgb_vis[y0:y1, x0:x1]).sum()) / sil,
                         int((win & depth_vis[y0:y1, x0:x1]).sum()) / sil,
                         int((win & th_vis[y0:y1, x0:x1]).sum()) / sil, lvl, v.engine_on))
        rows.sort(key=lambda r: r[0])
        if not rows:
            return FrameGroundTruth()
        cols = list(zip(*rows))
        vis = np.array(cols[6])
        lvl = np.array(cols[10], dtype=np.float64)
        return FrameGroundTruth(
            ids=np.array(cols[0], np.int64), classes=list(cols[1]), boxes=np.array(cols[2], np.float64),
            distance_m=np.array(cols[3]), azimuth_deg=np.array(cols[4]), speed_mps=np.array(cols[5]),
            visible_fraction=vis, visible_rgb=np.array(cols[7]), visible_depth=np.array(cols[8]),
            visible_thermal=np.array(cols[9]), occluded=vis < OCCLUDED_BELOW,
            audible=lvl > self.noise_db + AUDIBLE_SNR_DB, level_db=lvl, engine_on=np.array(cols[11], bool))
