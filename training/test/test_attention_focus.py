import numpy as np
import pytest

from mmdistill_training.attention_focus import box_cells, format_focus, mass_shares
from mmdistill_training.labelled_bag import attention_blobs


def test_box_cells_cover_the_cells_a_box_overlaps():
    m = box_cells(np.array([[10.0, 3.0, 33.0, 9.0]]), (4, 6), 8)
    want = np.zeros((4, 6), bool)
    want[0:2, 1:5] = True
    assert (m == want).all()
    assert box_cells(np.array([[-20.0, -5.0, 500.0, 500.0]]), (4, 6), 8).all()     # clipped to the grid
    assert not box_cells(np.zeros((0, 4)), (4, 6), 8).any()


def test_uniform_map_has_focus_one_and_a_blob_on_the_box_more():
    aud = box_cells(np.array([[64.0, 32.0, 128.0, 96.0]]), (16, 48), 8)
    other = box_cells(np.array([[256.0, 32.0, 320.0, 96.0]]), (16, 48), 8)
    uniform = np.full((16, 48), 1.0 / (16 * 48))
    a, o, c = mass_shares(uniform, aud, other)
    assert a / c == pytest.approx(1.0) and o == pytest.approx(other.mean())
    blob = attention_blobs(np.array([[64.0, 32.0, 128.0, 96.0]]), (384, 128), strides=(8,))[0].astype(np.float64)
    a, o, c = mass_shares(blob / blob.sum(), aud, other)
    assert a / c > 3 and o < other.mean()
    # a blob on the silent vehicle moves the mass there instead
    blob = attention_blobs(np.array([[256.0, 32.0, 320.0, 96.0]]), (384, 128), strides=(8,))[0].astype(np.float64)
    a, o, c = mass_shares(blob / blob.sum(), aud, other)
    assert a / c < 1 and o > 0.3


def test_format_focus_one_line_per_target():
    f = {'rgb': {'16': {'audible_mass': 0.2, 'other_mass': 0.1, 'audible_cells': 0.1, 'focus': 2.0, 'frames': 3}},
         'product': {'16': {'audible_mass': 0.3, 'other_mass': 0.0, 'audible_cells': 0.1, 'focus': 3.0, 'frames': 3}}}
    text = format_focus(f)
    assert text.count('\n') == 4 and '(3.00)' in text and 'stride 16' in text
