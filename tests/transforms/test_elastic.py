"""The report's (Simard et al. 2003) elastic deformation."""

from __future__ import annotations

import numpy as np
import pytest

from pulmo.transforms.elastic import RandElasticReportd, elastic_deform, elastic_displacement


def _disc(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    mask = (((yy - 40) ** 2 + (xx - 52) ** 2) < 20**2).astype(np.uint8)
    image = (0.2 + 0.7 * mask + 0.05 * np.sin(xx / 5.0)).astype(np.float32)
    return image, mask


def test_zero_alpha_is_the_identity():
    image, mask = _disc()
    out, (m,) = elastic_deform(image[None], [mask], alpha=0.0, sigma=4.0, rng=0)
    np.testing.assert_allclose(out[0], image, atol=1e-6)
    assert out.dtype == np.float32 and m.dtype == np.uint8 and (m == mask).all()


def test_field_statistics():
    dy, dx = elastic_displacement((256, 256), alpha=1.0, sigma=0.0, rng=0)
    for d in (dy, dx):  # unsmoothed: U(-1, 1) per pixel
        assert -1 < d.min() < -0.99 and 0.99 < d.max() < 1
        assert abs(d.mean()) < 0.01 and abs(d.var() - 1 / 3) < 0.01
    assert abs(np.corrcoef(dy.ravel(), dx.ravel())[0, 1]) < 0.02  # two independent fields
    alpha, sigma = 34.0, 4.0
    dy, dx = elastic_displacement((512, 512), alpha, sigma, rng=1)
    expected = alpha / np.sqrt(3) / (2 * np.sqrt(np.pi) * sigma)  # sd of U(-1,1) through a 2D Gaussian, scaled
    for d in (dy, dx):
        assert abs(d.mean()) < 0.1 * expected and abs(d.std() / expected - 1) < 0.1
        assert np.corrcoef(d[:, :-1].ravel(), d[:, 1:].ravel())[0, 1] > 0.9  # smooth: neighbours move together
    a, b = elastic_displacement((64, 64), alpha, sigma, rng=7), elastic_displacement((64, 64), alpha, sigma, rng=7)
    assert all((x == y).all() for x, y in zip(a, b))  # seeded


def test_mask_stays_aligned_with_the_image():
    image, mask = _disc()
    for mode in ("nearest", "bilinear"):
        out, (m,) = elastic_deform(image, [mask], alpha=300.0, sigma=8.0, rng=3, mask_mode=mode)
        assert set(np.unique(m)) <= {0, 1}
        moved = (m != mask).sum()
        assert moved > 100  # the deformation did something
        bright = out > 0.55  # the disc in the deformed image
        iou = (bright & (m == 1)).sum() / (bright | (m == 1)).sum()
        assert iou > 0.95, (mode, iou)


def test_dict_transform_uses_one_field_for_image_and_masks_and_is_seedable():
    image, mask = _disc(64)
    t = RandElasticReportd("image", ("label",), alpha=200.0, sigma=6.0, prob=1.0)
    t.set_random_state(0)
    a = t({"image": image[None], "label": mask[None].astype(np.float32)})
    t.set_random_state(0)
    b = t({"image": image[None], "label": mask[None].astype(np.float32)})
    assert (a["image"] == b["image"]).all() and (a["label"] == b["label"]).all()
    assert a["image"].shape == (1, 64, 64) and a["label"].shape == (1, 64, 64)
    bright = a["image"][0] > 0.55
    assert (bright == (a["label"][0] == 1)).mean() > 0.97
    off = RandElasticReportd("image", ("label",), prob=0.0)({"image": image[None], "label": mask[None]})
    assert (off["image"] == image[None]).all()
    with pytest.raises(ValueError, match="mask_mode"):
        elastic_deform(image, [mask], mask_mode="cubic")
