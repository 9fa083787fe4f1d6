"""DICOM grayscale: modality LUT, VOI LUT or window, and polarity (MONOCHROME1, Presentation LUT
Shape), each checked against values worked out by hand from the formulas of DICOM PS3.3.

The expected numbers are the standard's, computed here with plain arithmetic, never by pydicom.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_bad_inputs import dicom_file
from xray_core import imaging

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]

# Stored values 0, 1000, 2000, 4000 under the window centre 2048, width 4096 (LINEAR, C.11.2.1.2.1):
# y = ((x - 2047.5) / 4095 + 0.5) * 255, so 0 -> 0, 1000 -> 62.27, 2000 -> 124.54, 4000 -> 249.08.
RAMP = np.array([[0, 1000], [2000, 4000]], np.uint16)
RAMP_WINDOWED = np.array([[0, 62], [125, 249]], np.uint8)
WINDOW = {"WindowCenter": 2048, "WindowWidth": 4096}


def _decode(pixels, **attrs) -> np.ndarray:
    return imaging.decode(dicom_file(pixels, **attrs), "a.dcm")


def test_an_inverse_film_is_the_inverse_of_its_identity_twin():
    identity = _decode(RAMP, PresentationLUTShape="IDENTITY", **WINDOW)
    inverse = _decode(RAMP, PresentationLUTShape="INVERSE", **WINDOW)
    np.testing.assert_array_equal(identity, RAMP_WINDOWED)
    np.testing.assert_array_equal(inverse, np.array([[255, 193], [130, 6]], np.uint8))
    np.testing.assert_array_equal(inverse, 255 - identity)
    # without a window too (the film's own min..max: 0, 63.75, 191.25, 255)
    pixels = np.array([[0, 1000], [3000, 4000]], np.uint16)
    plain = _decode(pixels, PresentationLUTShape="IDENTITY")
    np.testing.assert_array_equal(plain, np.array([[0, 64], [191, 255]], np.uint8))
    np.testing.assert_array_equal(_decode(pixels, PresentationLUTShape="INVERSE"), 255 - plain)


@pytest.mark.parametrize("photometric, shape, inverted", [
    ("MONOCHROME2", None, False),
    ("MONOCHROME2", "IDENTITY", False),
    ("MONOCHROME2", "INVERSE", True),
    ("MONOCHROME1", None, True),
    ("MONOCHROME1", "INVERSE", True),  # the standard's pairing: one inversion, not two
    ("MONOCHROME1", "IDENTITY", True),  # outside the pairing: the photometric interpretation decides
])
def test_polarity_follows_monochrome1_and_presentation_lut_shape(photometric, shape, inverted):
    attrs = dict(WINDOW, **({"PresentationLUTShape": shape} if shape else {}))
    img = _decode(RAMP, photometric=photometric, **attrs)
    np.testing.assert_array_equal(img, 255 - RAMP_WINDOWED if inverted else RAMP_WINDOWED)


@pytest.mark.parametrize("function, expected", [
    # LINEAR (C.11.2.1.2.1): the window runs from 80 to 119, y = ((x - 99.5) / 39 + 0.5) * 255:
    # 81 -> 6.54, 101 -> 137.31, 119 -> 255
    ("LINEAR", [0, 7, 137, 255, 255]),
    # LINEAR_EXACT (C.11.2.1.3.2): from 80 to 120, y = ((x - 100) / 40 + 0.5) * 255:
    # 81 -> 6.375, 101 -> 133.875, 119 -> 248.625
    ("LINEAR_EXACT", [0, 6, 134, 249, 255]),
    # SIGMOID (C.11.2.1.3.1): y = 255 / (1 + exp(-4 (x - 100) / 40)):
    # 80 -> 30.40, 81 -> 33.18, 101 -> 133.87, 119 -> 221.82, 121 -> 227.18
    ("SIGMOID", [30, 33, 134, 222, 227]),
])
def test_window_functions_give_the_standards_values(function, expected):
    pixels = np.array([[80, 81, 101, 119, 121]], np.uint16)  # centre 100, width 40
    img = _decode(pixels, WindowCenter=100, WindowWidth=40, VOILUTFunction=function)
    np.testing.assert_array_equal(img, np.array([expected], np.uint8))


def test_rescale_comes_before_the_window_even_with_a_negative_slope():
    # stored 0, 500, 1000 -> 1000, 500, 0 (slope -1, intercept 1000); centre 500, width 1001:
    # y = ((x - 499.5) / 1000 + 0.5) * 255: 1000 -> 255 (above), 500 -> 127.63, 0 -> 0.13
    img = _decode(np.array([[0, 500, 1000]], np.uint16), RescaleSlope=-1, RescaleIntercept=1000,
                  WindowCenter=500, WindowWidth=1001)
    np.testing.assert_array_equal(img, np.array([[255, 128, 0]], np.uint8))


def test_a_modality_lut_sequence_maps_stored_values_first():
    # stored 0, 1, 2, 7 through a 3-entry table [0, 20000, 60000] (7 is past the end: the last
    # entry), then the film's own min..max: 0, 85, 255, 255
    item = Dataset()
    item.LUTDescriptor = [3, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", [0, 20000, 60000])
    img = _decode(np.array([[0, 1, 2, 7]], np.uint16), ModalityLUTSequence=pydicom.Sequence([item]))
    np.testing.assert_array_equal(img, np.array([[0, 85, 255, 255]], np.uint8))


def test_a_voi_lut_sequence_wins_over_a_window_and_clamps_at_its_ends():
    # a 12-bit table of 3 entries from input 100: [0, 2048, 4095]; stored 0..3 and 60 plus the
    # intercept 99 are 99 (before the table: its first entry), 100, 101, 102, 159 (after: its last);
    # 2048 / 4095 * 255 = 127.53. The window (centre 5000, width 10) would make all of them 0.
    item = Dataset()
    item.LUTDescriptor = [3, 100, 12]
    item.add_new(0x00283006, "US", [0, 2048, 4095])
    img = _decode(np.array([[0, 1, 2, 3, 60]], np.uint16), RescaleSlope=1, RescaleIntercept=99,
                  VOILUTSequence=pydicom.Sequence([item]), WindowCenter=5000, WindowWidth=10)
    np.testing.assert_array_equal(img, np.array([[0, 0, 128, 255, 255]], np.uint8))


def test_a_window_pydicom_refuses_falls_back_to_min_max_with_a_warning():
    # LINEAR needs a width of at least 1 (C.11.2.1.2.1); min..max of 0, 100, 300, 400: 0, 63.75, 191.25, 255
    with pytest.warns(UserWarning, match="window cannot be applied.*own minimum..maximum"):
        img = _decode(np.array([[0, 100, 300, 400]], np.uint16), WindowCenter=200, WindowWidth=0)
    np.testing.assert_array_equal(img, np.array([[0, 64, 191, 255]], np.uint8))


def test_a_colour_secondary_capture_is_luma_and_keeps_its_polarity():
    # 601 luma of pure red (76) and pure blue (29); colour images are IDENTITY by the standard
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 0, 0], rgb[0, 1, 2] = 255, 255
    np.testing.assert_array_equal(_decode(rgb, PresentationLUTShape="INVERSE"),
                                  np.array([[76, 29]], np.uint8))


def test_dicom_and_imaging_share_a_leaf_not_a_cycle():
    """dicom needs nothing of imaging (pixels holds what both use), and no private name crosses."""
    for name in ("dicom", "imaging", "pixels"):
        tree = ast.parse((PROJECT / "xray_core" / f"{name}.py").read_text(encoding="utf-8"))
        imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and (node.module or "").startswith("xray_core") for alias in node.names]
        assert [a for a in imported if a[1].startswith("_")] == [], name
        if name == "dicom":
            assert all(module == "xray_core.pixels" for module, _ in imported), imported
        if name == "pixels":
            assert imported == []
    code = "import sys, xray_core.dicom; sys.exit('xray_core.imaging' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
