"""The viewer's files are written from the image the analysis read: a display PNG for 2D inputs (scaled to at most
DISPLAY_MAX_SIDE), an int16 NIfTI in the input geometry for CT volumes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pulmo.io import Image2D, Volume, read_image
from pulmo.report.viewer_files import DISPLAY_MAX_SIDE, write_viewer_files


def test_2d_input_gives_a_grey_png_no_larger_than_the_display_side(tmp_path):
    pixels = np.tile(np.linspace(0, 4095, 3000, dtype=np.float32), (1500, 1))  # 3000 x 1500, 12-bit range
    assert write_viewer_files(Image2D(pixels), tmp_path) == ["image.png"]
    im = Image.open(tmp_path / "image.png")
    assert im.mode == "L" and im.size == (DISPLAY_MAX_SIDE, 1024)
    row = np.asarray(im)[0]
    assert row[0] < 5 and row[-1] > 250 and np.all(np.diff(row.astype(int)) >= -1)  # the ramp kept, min-max scaled


def test_ct_volume_gives_int16_nifti_with_its_geometry(tmp_path):
    hu = np.full((4, 6, 8), -1000.0, np.float32)
    hu[2, 3, 4] = 40.4
    vol = Volume(hu=hu, spacing=(2.5, 0.7, 0.7), origin=(-10.0, 20.0, 30.0))
    assert write_viewer_files(vol, tmp_path) == ["volume.nii.gz"]
    back = read_image(tmp_path / "volume.nii.gz")
    assert back.hu.shape == (4, 6, 8) and back.hu[2, 3, 4] == 40 and back.hu.min() == -1000
    assert np.allclose(back.spacing, (2.5, 0.7, 0.7)) and np.allclose(back.origin, (-10.0, 20.0, 30.0))
