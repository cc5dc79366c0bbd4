"""Configuration of the policy models and their training (pydantic; YAML/TOML/JSON via ptychoscan.config).

Defaults are the paper's scale (Schloz et al. 2023: autoencoder input 512, channels
16..512, GRU hidden 2048, Adam lr 1e-5, batch 24, sigma 0.0125 of the fov, gamma 0).
``cpu_scale()`` gives the small sizes that train on two CPU cores.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class AutoencoderConfig(BaseModel):
    """Convolutional autoencoder of the reconstruction (6 conv layers, kernel 3, stride 1)."""

    input_size: int = Field(512, ge=16, description="reconstruction resampled to input_size^2 pixels over the fov")
    channels: tuple[int, ...] = Field((16, 32, 64, 128, 256, 512), description="output channels of the 6 conv layers")
    latent_dim: int = Field(512, ge=1, description="size of the compact latent vector z")
    normalization: Literal["none", "group"] = Field(
        "none", description="none (the paper): conv + ReLU; group: GroupNorm after every hidden conv and He initialisation, so "
        "deep ReLU layers keep firing (without it 3-4 % of the last layers' units ever fired)")
    latent_norm: bool = Field(False, description="normalise z to zero mean, unit variance over its components (the policy sees O(1) features)")
    target_sigma_px: float = Field(
        0.0, ge=0, description="Gaussian sigma (input pixels) of the low-pass applied to the training target: the encoder "
        "keeps the structure the planner needs, not each pixel's noise; 0: the image itself (the paper)")

    @model_validator(mode="after")
    def _check(self) -> AutoencoderConfig:
        if len(self.channels) != 6 or min(self.channels) < 1:
            raise ValueError("channels must list 6 positive channel counts (one per conv layer)")
        if self.input_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"input_size must be divisible by {2 ** (len(self.channels) - 1)} (5 poolings)")
        if round(3 * self.target_sigma_px) >= self.input_size:
            raise ValueError(f"target_sigma_px {self.target_sigma_px} is too wide for {self.input_size}-pixel images (3 sigma must fit)")
        return self


class PolicyNetConfig(BaseModel):
    """GRU policy: FC_R(positions), FC_z(latent) -> concat -> FC_LC -> GRU -> FC_H -> means."""

    chunk: int = Field(50, ge=1, description="positions per sub-sequence")
    input_size: int = Field(512, ge=1, description="width of FC_R, FC_z and FC_LC (GRU input)")
    hidden: int = Field(2048, ge=1, description="GRU hidden size")
    gru_layers: int = Field(2, ge=1)


class ModelConfig(BaseModel):
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    policy: PolicyNetConfig = PolicyNetConfig()


class DataConfig(BaseModel):
    """Training datasets (dense-raster files from ``ptychoscan simulate``)."""

    train: list[str] = Field(default_factory=list, description="dataset files or glob patterns")
    dose: float | None = Field(None, gt=0, description="electrons per position (Poisson); None: noise-free patterns")
    measurement: Literal["raster", "simulate", "auto"] = Field(
        "raster", description="the files' stored rasters, or candidates every candidate_step_nm with patterns simulated on demand "
        "from their ground truth (the paper's 0.02 nm raster without storing it); auto: simulate when a file has a ground truth")
    candidate_step_nm: float = Field(0.02, gt=0, description="candidate raster for measurement 'simulate', nm (the paper's 0.02 nm)")


class StageConfig(BaseModel):
    iterations: int = Field(200, ge=0)
    lr: float = Field(1e-5, gt=0, description="Adam learning rate")
    batch: int = Field(24, ge=1, description="episodes (or images) per iteration, over all processes")


class RLConfig(StageConfig):
    iterations: int = 2800
    sigma: float = Field(0.0125, gt=0, description="Gaussian policy std in fov units")
    gamma: float = Field(0.0, ge=0, le=1, description="discount; the paper uses 0")
    credit: Literal["voronoi", "total"] = Field("voronoi", description="per-position Voronoi reward or total reward to all")
    reward_phase: Literal["contrast", "raw"] = Field(
        "contrast", description="per cell sum of |V - mean| (contrast, gauge-free) or of V (raw, the paper's wording; ~0 here)")
    reward: Literal["phase", "quality"] = Field(
        "phase", description="phase: the paper's (phase per Voronoi cell, reward_phase); quality: each sub-sequence's gain in fit "
        "to the ground truth, per position by the error fall nearest to it (policy.quality_reward; with gamma 1 each "
        "position's return adds every later sub-sequence's gain)")
    baseline: bool = Field(True, description="subtract the batch-mean reward per step (with rollouts_per_specimen > 1: leave-one-out)")
    budget: int = Field(250, ge=2, description="positions per episode, first sub-sequence included")
    reward_scale: float = Field(1.0, gt=0)
    rollouts_per_specimen: int = Field(
        1, ge=1, description="K episodes of each sampled specimen on the same noise seed; the baseline of each is the mean of the "
        "other K - 1 (leave-one-out: same specimen, same noise, only the actions differ); batch per process must divide by K")
    normalize_advantages: bool = Field(False, description="scale the advantages to zero mean, unit std over each process's batch")
    sigma_start: float | None = Field(None, gt=0, description="anneal sigma geometrically from this (e.g. 0.1 of the fov) to sigma")
    sigma_anneal_iterations: int = Field(0, ge=0, description="iterations over which sigma_start anneals to sigma")
    max_grad_norm: float | None = Field(None, gt=0, description="clip the policy gradient's norm to this; None: no clipping")
    learn_sigma: bool = Field(
        False, description="learn the Gaussian's std (one log-std per axis, starting at sigma) by the policy gradient instead of "
        "fixing or annealing it")
    sigma_min: float = Field(1e-3, gt=0, description="floor of a learned sigma, fov units")
    sigma_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the learned log-std (the policy's lr of 1e-5 would "
                            "move it by ~0.03 over the paper's 2,800 iterations)")
    entropy_coef: float = Field(
        0.0, ge=0, description="weight of the entropy bonus (nats per position, added to the objective): keeps a learned sigma "
        "from collapsing early; needs learn_sigma (a fixed sigma's entropy is a constant, its gradient zero)")

    @model_validator(mode="after")
    def _check_anneal(self) -> RLConfig:
        if (self.sigma_start is None) != (self.sigma_anneal_iterations == 0):
            raise ValueError("sigma_start and sigma_anneal_iterations go together (set both, or neither)")
        if self.learn_sigma and self.sigma_start is not None:
            raise ValueError("learn_sigma and sigma_start exclude each other (a learned sigma starts at sigma)")
        if self.entropy_coef > 0 and not self.learn_sigma:
            raise ValueError("entropy_coef needs learn_sigma: true (a fixed sigma's entropy does not depend on the weights)")
        if self.learn_sigma and self.sigma < self.sigma_min:
            raise ValueError(f"sigma {self.sigma} is below sigma_min {self.sigma_min}")
        return self

    def sigma_at(self, iteration: int) -> float:
        """The Gaussian's std at ``iteration``: sigma, or sigma_start annealed geometrically to it."""
        if self.sigma_start is None or self.sigma_anneal_iterations == 0:
            return self.sigma
        frac = min(1.0, iteration / self.sigma_anneal_iterations)
        return float(self.sigma_start * (self.sigma / self.sigma_start) ** frac)


class PretrainConfig(StageConfig):
    """Supervised pre-training: the policy learns to reproduce a target planner's sub-sequences (teacher forcing)."""

    iterations: int = 400
    lr: float = 1e-4
    batch: int = 24
    target: Literal["sparse_grid", "structure_guided"] = Field(
        "sparse_grid", description="sparse_grid (the paper): interleaved sparse grids, the same for every specimen; "
        "structure_guided: what the structure-guided planner chooses from each specimen's own live reconstruction")
    loss: Literal["ordered", "matched"] = Field(
        "ordered", description="ordered (the paper): MSE of each output slot to the same slot of the target; matched: MSE after "
        "the best one-to-one matching of outputs to target positions (the order within a sub-sequence is free; suits "
        "structure_guided, whose order changes with the specimen)")


class TrainConfig(BaseModel):
    """Everything ``ptychoscan train`` needs; one file for all three stages."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    recon: dict = Field(default_factory=dict, description="recon.options.ReconOptions fields (paper defaults when empty)")
    autoencoder: StageConfig = StageConfig(iterations=800, lr=1e-3, batch=16)
    pretrain: PretrainConfig = PretrainConfig()
    rl: RLConfig = RLConfig()
    out_dir: str = Field("runs/policy", description="checkpoints, metrics.jsonl and plots go here")
    seed: int = 0
    threads: int = Field(2, ge=1, description="torch threads per process")
    device: str = Field("auto", description="where the environment reconstructs and simulates: auto (CUDA when present), cpu, cuda")
    checkpoint_every: int = Field(20, ge=1, description="iterations between checkpoints")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.rl.budget < self.model.policy.chunk:
            raise ValueError(f"rl.budget {self.rl.budget} is smaller than one sub-sequence ({self.model.policy.chunk})")
        return self

    @property
    def n_subsequences(self) -> int:
        """Sub-sequences per episode, the sparse-grid first one included."""
        return -(-self.rl.budget // self.model.policy.chunk)


def cpu_scale() -> ModelConfig:
    """Small model sizes that train on two CPU cores."""
    return ModelConfig(
        autoencoder=AutoencoderConfig(input_size=64, channels=(8, 16, 32, 64, 64, 64), latent_dim=64),
        policy=PolicyNetConfig(chunk=16, input_size=64, hidden=128),
    )
