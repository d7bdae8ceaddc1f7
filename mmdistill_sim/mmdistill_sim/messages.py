"""Simulator output -> ROS messages, shared by the bag writer (``mmdistill sim``) and ``sim_node``.

``messages(sim)`` yields ``(topic, message, stamp_ns)`` in the order a live car
would deliver them (``Simulator.stream``): per camera frame the three images and
camera infos, ground truth as ``Detection2DArray`` (``id`` = vehicle id) and the
richer ``mmdistill_msgs/SimTruth``; audio as S16LE ``AudioDataStamped`` chunks.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

from mmdistill_common import topics
from mmdistill_common.conversions import audio_info, audio_to_msg, detections_to_msg, image_to_msg, make_header
from mmdistill_msgs.msg import SimTruth, VehicleTruth
from sensor_msgs.msg import CameraInfo

from .acoustics import to_int16
from .simulator import AudioChunk, Frame, Simulator

CAMERA_FRAME = 'camera'
MIC_FRAME = 'mic_array'
# thermal is published as 32FC1 kelvin
ENCODINGS = {'rgb': 'rgb8', 'depth': '32FC1', 'thermal': '32FC1'}


def camera_info_msg(sim: Simulator, stamp_ns: int) -> CameraInfo:
    info = sim.camera_info()
    return CameraInfo(header=make_header(stamp_ns, CAMERA_FRAME), height=info['height'], width=info['width'],
                      distortion_model=info['distortion_model'], d=info['d'], k=info['k'], r=info['r'], p=info['p'])


def truth_msgs(sim: Simulator, frame: Frame):
    """(Detection2DArray, SimTruth) for one frame."""
    gt = frame.gt
    dets = detections_to_msg(gt.boxes, [1.0] * len(gt), list(gt.classes), ids=gt.ids.tolist(),
                             stamp_ns=frame.stamp_ns, frame_id=CAMERA_FRAME)
    sc = sim.scenario
    truth = SimTruth(header=make_header(frame.stamp_ns, CAMERA_FRAME), scenario=sc.name,
                     time_of_day=sc.time_of_day, weather=sc.weather, ego_motion=sc.ego.mode)
    for k in range(len(gt)):
        truth.vehicles.append(VehicleTruth(
            id=int(gt.ids[k]), vehicle_class=str(gt.classes[k]), bbox=dets.detections[k].bbox,
            distance_m=float(gt.distance_m[k]), azimuth_deg=float(gt.azimuth_deg[k]),
            speed_mps=float(gt.speed_mps[k]), visible_rgb=float(gt.visible_rgb[k]),
            visible_depth=float(gt.visible_depth[k]), visible_thermal=float(gt.visible_thermal[k]),
            occluded=bool(gt.occluded[k]), audible=bool(gt.audible[k]), level_db=float(gt.level_db[k]),
            engine_on=bool(gt.engine_on[k])))
    return dets, truth


def frame_messages(sim: Simulator, frame: Frame, images: bool = True) -> List[Tuple[str, object, int]]:
    out = []
    if images:
        for modality in topics.CAMERAS:
            img = image_to_msg(getattr(frame, modality), ENCODINGS[modality], frame.stamp_ns, CAMERA_FRAME)
            out.append((topics.image_topic(modality), img, frame.stamp_ns))
            out.append((topics.camera_info_topic(modality), camera_info_msg(sim, frame.stamp_ns), frame.stamp_ns))
    dets, truth = truth_msgs(sim, frame)
    out.append((topics.GROUND_TRUTH, dets, frame.stamp_ns))
    out.append((topics.SIM_TRUTH, truth, frame.stamp_ns))
    return out


def audio_message(chunk: AudioChunk):
    return audio_to_msg(to_int16(chunk.data), chunk.stamp_ns, MIC_FRAME)


def messages(sim: Simulator, images: bool = True) -> Iterator[Tuple[str, object, int]]:
    """Everything the simulated car publishes, in delivery order (stamps in ns from ``sim.t0_ns``)."""
    info = sim.audio_info()
    yield topics.AUDIO_INFO, audio_info(info['channels'], info['sample_rate']), sim.t0_ns
    for item in sim.stream():
        if isinstance(item, Frame):
            yield from frame_messages(sim, item, images)
        else:
            # a chunk is delivered when its last sample exists
            yield topics.AUDIO, audio_message(item), item.stamp_ns
