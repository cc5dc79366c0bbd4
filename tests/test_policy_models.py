"""Shapes and ranges of the autoencoder and the GRU policy; reconstruction resampling."""

from types import SimpleNamespace

import pytest
import torch

from policy.config import AutoencoderConfig, PolicyNetConfig, TrainConfig, cpu_scale
from policy.models import ConvAutoencoder, ScanPolicy, reconstruction_image


def test_autoencoder_round_trip_shapes():
    cfg = cpu_scale().autoencoder
    ae = ConvAutoencoder(cfg)
    x = torch.randn(3, 1, cfg.input_size, cfg.input_size)
    z = ae.encode(x)
    assert z.shape == (3, cfg.latent_dim)
    assert ae(x).shape == x.shape
    assert sum(isinstance(m, torch.nn.Conv2d) for m in ae.encoder_convs) == 6


def test_policy_step_outputs_means_in_unit_square():
    cfg = PolicyNetConfig(chunk=5, input_size=16, hidden=24)
    pol = ScanPolicy(cfg, latent_dim=7)
    mean, h = pol(torch.rand(4, 5, 2), torch.randn(4, 7))
    assert mean.shape == (4, 5, 2) and h.shape == (2, 4, 24)
    assert mean.min() > 0 and mean.max() < 1
    mean2, _ = pol(torch.rand(4, 5, 2), torch.randn(4, 7), h)
    assert not torch.allclose(mean, mean2)
    with pytest.raises(ValueError, match="positions must be"):
        pol(torch.rand(4, 6, 2), torch.randn(4, 7))


def test_reconstruction_image_resamples_fov_and_normalises():
    grid = SimpleNamespace(origin_nm=(0.0, 0.0), pixel_nm=0.1, shape=(40, 50))
    _yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(50.0), indexing="ij")
    pot = xx * 0.1  # potential = x in nm
    img = reconstruction_image(pot, grid, (1.0, 1.0, 2.0, 2.0), 16)
    assert img.shape == (1, 16, 16)
    assert abs(img.mean()) < 1e-5 and abs(img.std() - 1) < 1e-3
    assert torch.all(img[0, :, 1:] > img[0, :, :-1])  # increases along x
    assert torch.allclose(img[0, 0], img[0, -1], atol=1e-5)  # constant along y


def test_config_validation():
    with pytest.raises(ValueError, match="6 positive"):
        AutoencoderConfig(channels=(1, 2, 3))
    with pytest.raises(ValueError, match="divisible"):
        AutoencoderConfig(input_size=100)
    with pytest.raises(ValueError, match="smaller than one sub-sequence"):
        TrainConfig.model_validate({"rl": {"budget": 10}, "model": {"policy": {"chunk": 50}}})
    assert TrainConfig().n_subsequences == 5  # paper: 250 positions in sub-sequences of 50


def test_the_paper_encoder_keeps_its_state_dict_and_the_options_add_only_what_they_name():
    """Defaults are the paper's (the shipped checkpoint's keys); GroupNorm adds parameters, the latent norm none."""
    small = {"input_size": 32, "channels": (4, 4, 8, 8, 8, 8), "latent_dim": 8}
    paper = set(ConvAutoencoder(AutoencoderConfig(**small)).state_dict())
    assert not any("norm" in k for k in paper)
    assert set(ConvAutoencoder(AutoencoderConfig(**small, latent_norm=True)).state_dict()) == paper
    grouped = set(ConvAutoencoder(AutoencoderConfig(**small, normalization="group")).state_dict())
    assert paper < grouped and all("norms" in k for k in grouped - paper)


def test_grouped_encoder_units_fire_and_the_latent_is_normalised():
    """He initialisation and GroupNorm keep the deep ReLU layers alive at the start; the normalised latent is O(1)."""
    torch.manual_seed(0)
    cfg = AutoencoderConfig(input_size=64, channels=(8, 16, 32, 64, 64, 64), latent_dim=16, normalization="group", latent_norm=True)
    ae = ConvAutoencoder(cfg)
    images = torch.randn(8, 1, 64, 64)
    x = images
    for i, (conv, norm) in enumerate(zip(ae.encoder_convs, ae.encoder_norms, strict=True)):
        x = torch.relu(norm(conv(x)))
        if i < len(ae.encoder_convs) - 1:
            x = torch.nn.functional.max_pool2d(x, 2)
    assert float((x > 0).float().mean()) > 0.3  # about half of the last layer's units fire
    z = ae.encode(images)
    torch.testing.assert_close(z.mean(dim=1), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=1, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


def test_lowpass_keeps_the_mean_and_removes_fine_detail_and_r_squared_scores_it():
    from policy.models import lowpass, r_squared

    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    coarse = torch.cos(2 * torch.pi * xs / 16)[None, None]
    fine = 0.5 * torch.cos(torch.pi * (xs + ys))[None, None]  # the Nyquist checkerboard
    blurred = lowpass(coarse + fine, 1.5)
    assert float((blurred - lowpass(coarse, 1.5))[..., 8:24, 8:24].abs().max()) < 0.01  # the checkerboard is gone
    assert float(lowpass(coarse, 1.5)[..., 8:24, 8:24].abs().max()) > 0.8  # the 16-pixel wave keeps > 80 % of its amplitude
    assert lowpass(coarse, 0.0) is coarse
    assert r_squared(coarse, coarse) == 1.0 and abs(r_squared(torch.zeros_like(coarse), coarse)) < 1e-6


def test_a_low_pass_wider_than_the_image_is_refused():
    with pytest.raises(ValueError, match="too wide"):
        AutoencoderConfig(input_size=32, channels=(4, 4, 8, 8, 8, 8), latent_dim=8, target_sigma_px=11.0)
    AutoencoderConfig(input_size=32, channels=(4, 4, 8, 8, 8, 8), latent_dim=8, target_sigma_px=5.0)
