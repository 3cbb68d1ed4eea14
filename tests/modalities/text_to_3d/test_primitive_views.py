"""primitive_views: the analytic primitives match the 3D spec's meshes; the set follows its spec."""
import numpy as np
import pytest
import torch

import modalities.text_to_3d.data as views_data
from modalities.image.data import COLORS
from modalities.shape.data import PRIMITIVE_KINDS, primitive_mesh
from modalities.shape.mesh_sdf import signed_distance
from modalities.text_to_3d.cameras import view_suffix
from modalities.text_to_3d.data import PrimitiveViews
from modalities.text_to_3d.primitives import draw_primitive, primitive_sdf


@pytest.mark.parametrize("kind", range(len(PRIMITIVE_KINDS)))
def test_analytic_primitives_match_the_spec_meshes(kind):
    """Same draws, same normalisation: the closed forms differ from trimesh's faceted meshes by < 1% of
    the unit radius."""
    points = np.random.default_rng(9).uniform(-1.1, 1.1, (1500, 3)).astype(np.float32)
    for seed in range(2):
        mesh = primitive_mesh(PRIMITIVE_KINDS[kind], np.random.default_rng(seed))
        params, scale = draw_primitive(kind, np.random.default_rng(seed))
        ours = primitive_sdf(torch.from_numpy(points)[None], torch.tensor([kind]),
                             torch.tensor(params, dtype=torch.float32)[None], torch.tensor([scale]))[0].numpy()
        reference = signed_distance(mesh, points)
        assert np.abs(ours - reference).max() < 0.01
        assert (np.sign(ours) == np.sign(reference)).mean() > 0.99


def test_views_follow_the_spec():
    data = PrimitiveViews(num_samples=24, cache_dir=None)
    images, captions, labels = data.arrays()
    views = data.views()
    assert images.shape == (24, 3, 32, 32) and images.dtype == torch.uint8
    assert ((views.elevation >= -10) & (views.elevation <= 45)).all()
    centre = np.arange(32) + 0.5 - 16
    beyond_unit_sphere = np.hypot(centre[:, None], centre[None, :]) > 14.5
    for i, caption in enumerate(captions):
        kind, color = int(views.kind[i]), int(views.color[i])
        assert caption == f"a {COLORS[color]} {PRIMITIVE_KINDS[kind]}{view_suffix(views.azimuth[i])}"
        assert int(labels[i]) == 3 * kind + color
        rgb = views.rgb[i].astype(int)
        assert 180 <= rgb[color] <= 255 and (np.delete(rgb, color) <= 60).all()
        image = images[i].numpy().astype(int)
        foreground = image.max(0) > 30
        assert 20 < foreground.sum() < 1000
        # black outside the unit sphere's silhouette (radius tan(asin(1/3)) / tan(22.5°) · 16 = 13.6 px)
        assert image[:, beyond_unit_sphere].max() == 0
        assert np.argmax(image[:, foreground].sum(1)) == color         # lit in its own colour
        assert image[:, foreground].max() <= rgb.max() + 1             # shading never brightens the albedo
    assert PrimitiveViews(num_samples=24, cache_dir=None, view_suffixes=False).captions[0] == \
        captions[0].split(",")[0]


def test_views_are_deterministic_per_index_and_seed(tmp_path):
    a = PrimitiveViews(num_samples=6, cache_dir=None).arrays()[0]
    b = PrimitiveViews(num_samples=6, cache_dir=None).arrays()[0]
    assert torch.equal(a, b)
    assert torch.equal(PrimitiveViews(num_samples=3, cache_dir=None).arrays()[0], a[:3])
    assert not torch.equal(PrimitiveViews(num_samples=6, seed=1, cache_dir=None).arrays()[0], a)
    assert not torch.equal(PrimitiveViews(num_samples=6, split="val", cache_dir=None).arrays()[0], a)


def test_views_are_cached(tmp_path, monkeypatch):
    images = PrimitiveViews(num_samples=5, cache_dir=tmp_path).arrays()[0]
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(views_data, "render_views", refuse)
    assert torch.equal(PrimitiveViews(num_samples=5, cache_dir=tmp_path).arrays()[0], images)
    next(tmp_path.glob("*.npz")).write_bytes(b"not an npz")     # a damaged cache is rebuilt, not trusted
    monkeypatch.undo()
    assert torch.equal(PrimitiveViews(num_samples=5, cache_dir=tmp_path).arrays()[0], images)


def test_64_pixel_option_and_bad_settings():
    image = PrimitiveViews(num_samples=1, size=64, cache_dir=None)[0]["image"]
    assert image.shape == (3, 64, 64) and float(image.min()) >= -1 and float(image.max()) <= 1
    with pytest.raises(ValueError, match="data.size"):
        PrimitiveViews(size=48)
    with pytest.raises(ValueError, match="split"):
        PrimitiveViews(split="dev")
