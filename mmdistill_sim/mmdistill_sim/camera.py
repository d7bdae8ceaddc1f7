"""Pinhole camera on the ego vehicle: projection of 3-D boxes and per-pixel rays.

Camera optical frame: x right, y down, z forward.  Mounting (ego frame) is at
(x_m, 0, height_m) with a downward pitch.  Projection is undistorted pinhole.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .scenario import Camera

__all__ = ['PinholeCamera', 'box_corners']

_NEAR = 0.1


_CORNER_HI = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) != 0


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(8, 3) corners of an axis-aligned box ((..., 8, 3) for stacked boxes (..., 3))."""
    return np.where(_CORNER_HI, np.asarray(hi)[..., None, :], np.asarray(lo)[..., None, :])


_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count('1') == 1])


class PinholeCamera:
    """Intrinsics + mounting; maps ego-frame points to pixels and pixels to ego-frame rays."""

    def __init__(self, cam: Camera):
        self.width, self.height = int(cam.width), int(cam.height)
        self.fx, self.fy = float(cam.fx), float(cam.fy)
        self.cx = float(cam.cx if cam.cx is not None else cam.width / 2)
        self.cy = float(cam.cy if cam.cy is not None else cam.height / 2)
        th = np.deg2rad(cam.pitch_deg)
        fwd = np.array([np.cos(th), 0.0, -np.sin(th)])
        right = np.array([0.0, -1.0, 0.0])
        down = np.array([-np.sin(th), 0.0, -np.cos(th)])
        self.R = np.stack([right, down, fwd])          # rows: camera axes in the ego frame
        self.position = np.array([cam.x_m, 0.0, cam.height_m])
        self.K = np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])
        u = np.arange(self.width) + 0.5
        v = np.arange(self.height) + 0.5
        uu, vv = np.meshgrid(u, v)
        d_cam = np.stack([(uu - self.cx) / self.fx, (vv - self.cy) / self.fy, np.ones_like(uu)], axis=-1)
        self.z_per_range = 1.0 / np.linalg.norm(d_cam, axis=-1)       # camera z of a unit-length ray
        self.rays = (d_cam * self.z_per_range[..., None]) @ self.R       # (H, W, 3) unit rays, ego frame

    def to_camera(self, p_ego: np.ndarray) -> np.ndarray:
        """Ego-frame points (..., 3) to the camera optical frame."""
        return (np.asarray(p_ego, float) - self.position) @ self.R.T

    def project(self, p_ego: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (..., 2) and camera depth z (...) of ego-frame points."""
        pc = self.to_camera(p_ego)
        z = pc[..., 2]
        with np.errstate(divide='ignore', invalid='ignore'):
            uv = np.stack([self.fx * pc[..., 0] / z + self.cx, self.fy * pc[..., 1] / z + self.cy], axis=-1)
        return uv, z

    def project_box(self, lo: np.ndarray, hi: np.ndarray, clip: bool = True) -> Optional[np.ndarray]:
        """Pixel box [x1, y1, x2, y2] enclosing an ego-frame box, clipped at the near plane (None if behind).

        With ``clip`` the box is also clipped to the image; None if nothing of it is in the image.
        """
        pc = self.to_camera(box_corners(lo, hi))
        z = pc[:, 2]
        front = z > _NEAR
        if not front.any():
            return None
        pts = [pc[front]]
        if not front.all():
            a, b = pc[_EDGES[:, 0]], pc[_EDGES[:, 1]]
            cross = (a[:, 2] > _NEAR) != (b[:, 2] > _NEAR)
            if cross.any():
                a, b = a[cross], b[cross]
                s = (_NEAR - a[:, 2]) / (b[:, 2] - a[:, 2])
                pts.append(a + s[:, None] * (b - a))
        p = np.concatenate(pts)
        u = self.fx * p[:, 0] / p[:, 2] + self.cx
        v = self.fy * p[:, 1] / p[:, 2] + self.cy
        box = np.array([u.min(), v.min(), u.max(), v.max()])
        if clip:
            box[[0, 2]] = np.clip(box[[0, 2]], 0, self.width)
            box[[1, 3]] = np.clip(box[[1, 3]], 0, self.height)
            if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
                return None
        return box

    def project_boxes(self, lo: np.ndarray, hi: np.ndarray) -> list:
        """:meth:`project_box` (clipped) of N boxes (lo, hi: (N, 3)) at once: the same numbers; boxes
        that straddle the near plane go through :meth:`project_box` itself."""
        n = len(lo)
        if n == 0:
            return []
        pc = self.to_camera(box_corners(lo, hi).reshape(-1, 3)).reshape(n, 8, 3)
        z = pc[..., 2]
        front = z > _NEAR
        with np.errstate(divide='ignore', invalid='ignore'):
            u = self.fx * pc[..., 0] / z + self.cx
            v = self.fy * pc[..., 1] / z + self.cy
        box = np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], axis=1)
        box[:, [0, 2]] = np.clip(box[:, [0, 2]], 0, self.width)
        box[:, [1, 3]] = np.clip(box[:, [1, 3]], 0, self.height)
        out = []
        for k in range(n):
            if not front[k].all():
                out.append(self.project_box(lo[k], hi[k]) if front[k].any() else None)
            elif box[k, 2] - box[k, 0] <= 0 or box[k, 3] - box[k, 1] <= 0:
                out.append(None)
            else:
                out.append(box[k])
        return out

    def camera_info(self) -> dict:
        """Fields of a sensor_msgs/CameraInfo (plumb_bob with zero distortion)."""
        P = np.hstack([self.K, np.zeros((3, 1))])
        return dict(width=self.width, height=self.height, distortion_model='plumb_bob', d=[0.0] * 5,
                    k=self.K.ravel().tolist(), r=np.eye(3).ravel().tolist(), p=P.ravel().tolist())
