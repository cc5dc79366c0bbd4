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
