"""Topic names of the mmdistill graph (DESIGN §3), one place for nodes, bags and tests."""

CAMERAS = ('rgb', 'depth', 'thermal')


def image_topic(modality: str) -> str:
    return f'/sensors/camera/{modality}/image_raw'


def camera_info_topic(modality: str) -> str:
    return f'/sensors/camera/{modality}/camera_info'


AUDIO = '/sensors/mic_array/audio'
AUDIO_INFO = '/sensors/mic_array/audio_info'
GROUND_TRUTH = '/sim/ground_truth'            # vision_msgs/Detection2DArray, id = vehicle id
SIM_TRUTH = '/sim/truth'                      # mmdistill_msgs/SimTruth, per-vehicle details
CLOCK = '/clock'
PSEUDO_LABELS = '/pseudo_labels'
STUDENT_DETECTIONS = '/student/detections'
STUDENT_ACOUSTIC_IMAGE = '/student/acoustic_image'    # rgb8 heat map (publish_acoustic_image)
TRACKS = '/tracking/tracks'
TRACK_MARKERS = '/tracking/markers'
TRACK_IMAGE = '/tracking/image'


def teacher_detections_topic(modality: str) -> str:
    return f'/teachers/{modality}/detections'


def teacher_attention_topic(modality: str) -> str:
    return f'/teachers/{modality}/attention'
