"""FVD plumbing: the Fréchet distance's closed form, and local feature networks (TorchScript, VideoMAE) that load,
see videos the way they expect, and give a distance that is 0 for a set against itself and grows with damage."""
import numpy as np
import pytest
import torch

from modalities.video.data import draw_motion, render_videos
from modalities.video.fvd import feature_statistics, frechet_distance, fvd, load_feature_network
from shared.errors import ConfigError


class KwargsNet(torch.nn.Module):
    """The I3D detector's call signature; features: 8 random conv channels, mean colour per channel, T, H, W."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 8, 3, padding=1)

    def forward(self, videos: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        if not return_features:
            return torch.zeros(videos.shape[0], 2)        # "logits": the wrong dimension
        shape = torch.tensor(videos.shape[2:], dtype=videos.dtype).expand(videos.shape[0], 3)
        return torch.cat([torch.tanh(self.conv(videos)).mean((2, 3, 4)), videos.mean((2, 3, 4)), shape], 1)


class PlainNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv3d(3, 4, 3, padding=1)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(videos)).mean((2, 3, 4))


def save_scripted(module, path):
    torch.jit.script(module).save(str(path))
    return path


@pytest.fixture(scope="module")
def videos():
    return render_videos(draw_motion(3, range(32)), 32, 8)                   # uint8 [32, 8, 32, 32, 3]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    return load_feature_network(save_scripted(KwargsNet(), tmp_path_factory.mktemp("net") / "net.pt"))


def random_psd(rng, d):
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


def test_diagonal_covariances_match_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2, a, b = rng.normal(size=5), rng.normal(size=5), rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_identical_statistics_give_zero_and_arguments_commute():
    rng = np.random.default_rng(1)
    mu1, mu2, s1, s2 = rng.normal(size=6), rng.normal(size=6), random_psd(rng, 6), random_psd(rng, 6)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8
    forward, backward = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert forward > 0.1 and forward == pytest.approx(backward, rel=1e-9)


def test_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    for d in (1, 4, 12):
        mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), random_psd(rng, d), random_psd(rng, d)
        cross = np.real(linalg.sqrtm(s1 @ s2))
        reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * cross)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-7, abs=1e-10)


def test_statistics_and_distance_refuse_bad_shapes():
    with pytest.raises(ValueError, match="got 1"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    mu, sigma = feature_statistics(np.random.default_rng(3).normal(size=(50, 3)))
    assert mu.shape == (3,) and sigma.shape == (3, 3) and mu.dtype == sigma.dtype == np.float64


def test_torchscript_network_sees_videos_as_i3d_does(network):
    colour = np.zeros((3, 4, 10, 12, 3), dtype=np.uint8)
    colour[..., 1], colour[..., 2] = 255, 51
    features = network(colour)
    assert features.shape == (3, 14) and features.dtype == np.float64            # return_features=True passed
    np.testing.assert_allclose(features[:, 8:11], [[-1, 1, -0.6]] * 3, atol=1e-6)  # [N, 3, T, H, W] in [-1, 1]
    np.testing.assert_allclose(features[:, 11:], [[4, 10, 12]] * 3)


def test_resize_and_batching_do_not_change_what_the_network_sees(tmp_path, videos):
    path = save_scripted(KwargsNet(), tmp_path / "net.pt")
    resized = load_feature_network(path, resize_to=16)(videos[:3])
    np.testing.assert_allclose(resized[:, 11:], [[8, 16, 16]] * 3)
    one, many = load_feature_network(path, batch_size=1)(videos[:5]), load_feature_network(path)(videos[:5])
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)


def test_fvd_is_zero_against_itself_and_grows_with_damage(network, videos):
    rng = np.random.default_rng(4)
    assert fvd(videos, videos, network) < 1e-8

    def noisy(sigma):
        return np.clip(videos + rng.normal(0, sigma, videos.shape), 0, 255).astype(np.uint8)
    light, heavy = fvd(noisy(10), videos, network), fvd(noisy(40), videos, network)
    recoloured = fvd(videos[..., ::-1].copy(), videos, network)
    other_draw = fvd(render_videos(draw_motion(4, range(32)), 32, 8), videos, network)
    assert 1e-4 < light < heavy and recoloured > 1e-5
    assert other_draw < heavy                           # same distribution, new samples: closer than damage


def test_fvd_refuses_videos_of_different_shapes(network, videos):
    with pytest.raises(ValueError, match="share"):
        fvd(videos[:, :4], videos, network)


def test_network_without_keyword_arguments_falls_back(tmp_path, videos):
    network = load_feature_network(save_scripted(PlainNet(), tmp_path / "plain.pt"))
    features = network(videos[:6])
    assert features.shape == (6, 4) and np.isfinite(features).all()
    assert fvd(videos[:6], videos[:6], network) < 1e-8


def test_tiny_videomae_directory(tmp_path, videos):
    transformers = pytest.importorskip("transformers")
    config = transformers.VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(5)
    transformers.VideoMAEModel(config).save_pretrained(tmp_path)
    network = load_feature_network(tmp_path, batch_size=2)
    long_small = np.ascontiguousarray(videos[:3, :, ::2, ::2])          # 8 frames of 16 px: cut to 4, resized to 32
    features = network(long_small)
    assert features.shape == (3, 32) and np.isfinite(features).all()
    assert np.abs(features[0] - features[1]).max() > 1e-4
    exact = videos[:2, :4]                                             # 4 frames of 32 px: fed as they are
    pixels = (exact / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]      # ImageNet normalisation
    model = transformers.VideoMAEModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        reference = model(pixel_values=torch.tensor(pixels.transpose(0, 1, 4, 2, 3), dtype=torch.float32))
    np.testing.assert_allclose(network(exact), reference.last_hidden_state.mean(1).numpy(), rtol=1e-4, atol=1e-5)
    padded = network(videos[:3, :3])                                    # 3 frames: the last repeated
    np.testing.assert_allclose(padded, network(videos[:3, [0, 1, 2, 2]]), rtol=1e-5, atol=1e-6)


def test_unusable_paths_are_config_errors(tmp_path):
    missing = tmp_path / "nowhere" / "i3d_torchscript.pt"
    with pytest.raises(ConfigError, match="nowhere"):
        load_feature_network(missing)
    state_dict = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, state_dict)
    with pytest.raises(ConfigError, match="weights.pt.*TorchScript"):
        load_feature_network(state_dict)
    with pytest.raises(ConfigError, match="VideoMAEModel") as caught:
        load_feature_network(tmp_path)
    assert str(tmp_path) in str(caught.value)
