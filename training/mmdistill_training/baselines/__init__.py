"""Non-learned baselines the student is compared against."""
from .classical import ClassicalBaseline, CameraModel, camera_dict
from .scene_prior import ScenePrior

__all__ = ['ClassicalBaseline', 'CameraModel', 'camera_dict', 'ScenePrior']
