"""The shipped Foxglove layout is the generated one and names only channels the view advertises."""
import json
import re
from pathlib import Path

from mmdistill_bringup.foxglove_layout import FILE_NAME, layout_json
from mmdistill_bringup.foxglove_view import VIEW_CHANNELS

CONFIG = Path(__file__).resolve().parents[1] / 'config'


def test_shipped_layout_is_generated():
    assert (CONFIG / FILE_NAME).read_text() == layout_json(), \
        'regenerate: python -m mmdistill_bringup.foxglove_layout > mmdistill_bringup/config/foxglove_layout.json'


def test_layout_topics_are_view_channels():
    text = (CONFIG / FILE_NAME).read_text()
    doc = json.loads(text)
    assert doc['version'] == 1 and doc['content']['type'] == 'split'
    topics = set(re.findall(r'"(/view/[a-z_/]+)', text))
    assert topics and topics <= set(VIEW_CHANNELS)
    assert {'/view/camera', '/view/student', '/view/tracks', '/view/acoustic', '/view/scene'} <= topics
