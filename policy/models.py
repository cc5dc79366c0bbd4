"""The paper's networks: a convolutional autoencoder of the reconstruction and the GRU policy.

Autoencoder: 6 conv layers (kernel 3, stride 1, padding 1, ReLU) with 2x2 max pooling
between them, then a linear map to a compact latent z; the decoder mirrors it with
nearest-neighbour upsampling. Its input is the reconstructed potential over the field
of view resampled to ``input_size`` pixels and normalised to zero mean, unit variance
(``reconstruction_image``).

Options beyond the paper (``AutoencoderConfig``): GroupNorm after every hidden conv with
He initialisation (``normalization="group"``), a normalised latent (``latent_norm``), and a
low-passed training target (``target_sigma_px``, see ``lowpass``). With the defaults the
module and its state dict are the paper's.

Policy (one step per sub-sequence): FC_R(positions of the last sub-sequence, fov units)
and FC_z(latent of the current reconstruction) -> concat -> FC_LC -> GRU (2 layers) ->
FC_H -> sigmoid: the mean of the next sub-sequence's positions in fov units [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from policy.config import AutoencoderConfig, PolicyNetConfig


class ConvAutoencoder(nn.Module):
    """Encoder (B, 1, S, S) -> z (B, latent_dim); decoder z -> (B, 1, S, S)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.encoder_convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, 1, 1) for c_in, c_out in zip((1, *ch[:-1]), ch, strict=True))
        self.bottom = config.input_size // 2 ** (len(ch) - 1)
        flat = ch[-1] * self.bottom**2
        self.to_latent = nn.Linear(flat, config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, flat)
        rev = ch[::-1]
        self.decoder_convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, 1, 1) for c_in, c_out in zip(rev, (*rev[1:], 1), strict=True))
        grouped = config.normalization == "group"
        self.encoder_norms = nn.ModuleList(_norm(c, grouped) for c in ch)
        self.decoder_norms = nn.ModuleList(_norm(c, grouped) for c in rev[1:])
        self.latent_norm = nn.LayerNorm(config.latent_dim, elementwise_affine=False) if config.latent_norm else nn.Identity()
        if grouped:
            for conv in (*self.encoder_convs, *self.decoder_convs):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for i, (conv, norm) in enumerate(zip(self.encoder_convs, self.encoder_norms, strict=True)):
            x = F.relu(norm(conv(x)))
            if i < len(self.encoder_convs) - 1:
                x = F.max_pool2d(x, 2)
        return self.latent_norm(self.to_latent(x.flatten(1)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.from_latent(z)).reshape(z.shape[0], self.config.channels[-1], self.bottom, self.bottom)
        for i, conv in enumerate(self.decoder_convs):
            x = conv(x)
            if i < len(self.decoder_convs) - 1:
                x = F.interpolate(F.relu(self.decoder_norms[i](x)), scale_factor=2, mode="nearest")
        return x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(image))


def _norm(channels: int, grouped: bool) -> nn.Module:
    """GroupNorm of up to 8 groups (a divisor of ``channels``), or nothing (the paper)."""
    if not grouped:
        return nn.Identity()
    groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def lowpass(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """(B, 1, S, S) images blurred by a Gaussian of ``sigma_px`` pixels (reflecting borders); 0: unchanged."""
    if sigma_px <= 0:
        return images
    radius = max(1, round(3 * sigma_px))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (t / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.reshape(1, 1, 1, -1))
    return F.conv2d(x, kernel.reshape(1, 1, -1, 1))


def r_squared(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """1 - sum of squared errors / sum of squares about each image's mean, over a batch (B, 1, S, S)."""
    sse = ((prediction - target) ** 2).sum()
    sst = ((target - target.mean(dim=(-2, -1), keepdim=True)) ** 2).sum()
    return float(1.0 - sse / sst.clamp_min(1e-12))


class ScanPolicy(nn.Module):
    """GRU policy predicting the mean of the next sub-sequence (B, chunk, 2) in fov units."""

    def __init__(self, config: PolicyNetConfig, latent_dim: int):
        super().__init__()
        self.config = config
        n = config.chunk * 2
        self.fc_r = nn.Linear(n, config.input_size)
        self.fc_z = nn.Linear(latent_dim, config.input_size)
        self.fc_lc = nn.Linear(2 * config.input_size, config.input_size)
        self.gru = nn.GRU(config.input_size, config.hidden, num_layers=config.gru_layers, batch_first=True)
        self.fc_h = nn.Linear(config.hidden, n)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(self.config.gru_layers, batch, self.config.hidden, device=device)

    def forward(self, positions: torch.Tensor, latent: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step. positions (B, chunk, 2) in [0, 1], latent (B, latent_dim), state (layers, B, hidden).

        Returns the next sub-sequence's mean (B, chunk, 2) in [0, 1] and the new state.
        """
        b = positions.shape[0]
        if positions.shape[1:] != (self.config.chunk, 2):
            raise ValueError(f"positions must be (B, {self.config.chunk}, 2), got {tuple(positions.shape)}")
        if state is None:
            state = self.initial_state(b, positions.device)
        r = F.relu(self.fc_r(positions.reshape(b, -1)))
        z = F.relu(self.fc_z(latent))
        x = F.relu(self.fc_lc(torch.cat([r, z], dim=1)))
        out, state = self.gru(x[:, None, :], state)
        mean = torch.sigmoid(self.fc_h(out[:, 0]))
        return mean.reshape(b, self.config.chunk, 2), state


def reconstruction_image(potential: torch.Tensor, grid, fov_nm, size: int) -> torch.Tensor:
    """Resample a potential (ny, nx) on ``grid`` over ``fov_nm`` to (1, size, size), zero mean, unit variance.

    ``grid`` has ``origin_nm`` (x, y of pixel [0, 0]), ``pixel_nm`` and ``shape`` (ny, nx);
    ``fov_nm`` is (x0, y0, width, height) in nm. Bilinear sampling at the pixel centres
    of a size x size image covering the fov.
    """
    x0, y0, width, height = (float(v) for v in fov_nm)
    ny, nx = grid.shape
    pot = torch.as_tensor(potential, dtype=torch.float32).reshape(1, 1, ny, nx)
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    xs = (x0 + t * width - grid.origin_nm[0]) / grid.pixel_nm  # pixel coordinates
    ys = (y0 + t * height - grid.origin_nm[1]) / grid.pixel_nm
    gx = 2 * xs / max(nx - 1, 1) - 1
    gy = 2 * ys / max(ny - 1, 1) - 1
    mesh = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    img = F.grid_sample(pot, mesh, mode="bilinear", padding_mode="border", align_corners=True)[0]
    return (img - img.mean()) / (img.std() + 1e-6)
