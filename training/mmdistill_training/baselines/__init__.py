"""Non-learned baselines the student is compared against."""
from .classical import ClassicalBaseline, CameraModel, camera_dict

__all__ = ['ClassicalBaseline', 'CameraModel', 'camera_dict']
