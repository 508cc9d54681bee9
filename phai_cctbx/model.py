"""The PhAI network: a 3D convolutional encoder followed by an MLP-mixer.

One readable module whose sizes come from :class:`PhAIConfig`.  The
parameter names follow the published checkpoint layout, so a state dict
saved by the reference implementation (``PhAI_model.pth``) loads directly.

Inputs are two grids of shape (batch, 2m+1, m+1, m+1), m = ``max_index``:
amplitudes scaled to at most 1 and phases in degrees (0 or -180).  The output
is logits of shape (batch, 2, n_reflections); class 0 means phase pi, class 1
means phase 0.

``voxel_head`` (not in the published network) adds a second output: a 1x1x1
convolution of the convolution stack's features and of the input itself (the
sign of each voxel's phase, and that sign times its amplitude), read at each
reflection's voxel and added to the mixer's logits.  The mixer decodes all 1205 signs
from the mean of its tokens, one ``dim``-vector, which cannot carry the
input's signs through; the voxel head can, so that a network may keep the
right signs of a partial solution it is given and change the others.  It
starts at zero (the network's output is unchanged), so it can be added to
trained weights and fine-tuned.
"""
from __future__ import annotations

import dataclasses
import json

import torch
from torch import nn

from phai_cctbx import network_io


@dataclasses.dataclass
class PhAIConfig:
  max_index: int = 10
  filters: int = 96
  kernel_size: int = 3
  cnn_depth: int = 6
  dim: int = 1024
  dim_exp: int = 2048
  dim_token_exp: int = 512
  mlp_depth: int = 8
  reflections: int = 1205
  voxel_head: bool = False

  @classmethod
  def from_dict(cls, d: dict) -> "PhAIConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError("unknown model configuration keys: %s" % ", ".join(unknown))
    return cls(**d)

  @classmethod
  def from_json(cls, path: str) -> "PhAIConfig":
    with open(path) as f:
      return cls.from_dict(json.load(f))

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def voxels(self) -> int:
    m = self.max_index
    return (2 * m + 1) * (m + 1) * (m + 1)


# The published configuration (42.4 M parameters).
PUBLISHED = PhAIConfig()


class ConvBlock(nn.Module):
  """Two 3D convolutions, each followed by GELU and GroupNorm, plus a skip."""

  def __init__(self, channels: int, kernel_size: int):
    super().__init__()
    pad = kernel_size // 2
    self.conv1 = nn.Conv3d(channels, channels, kernel_size, padding=pad)
    self.norm1 = nn.GroupNorm(channels, channels)
    self.conv2 = nn.Conv3d(channels, channels, kernel_size, padding=pad)
    self.norm2 = nn.GroupNorm(channels, channels)
    self.act = nn.GELU()

  def forward(self, x):
    y = self.norm1(self.act(self.conv1(x)))
    y = self.norm2(self.act(self.conv2(y)))
    return x + y


class TokenMixer(nn.Module):
  """MLP across the tokens (the conv channels), applied per feature."""

  def __init__(self, tokens: int, hidden: int):
    super().__init__()
    self.norm1 = nn.GroupNorm(tokens, tokens)
    self.layer1 = nn.Conv1d(tokens, hidden, 1)
    self.layer2 = nn.Conv1d(hidden, tokens, 1)
    self.act = nn.GELU()

  def forward(self, x):
    return x + self.layer2(self.act(self.layer1(self.norm1(x))))


class ChannelMixer(nn.Module):
  """MLP across the features of each token."""

  def __init__(self, tokens: int, dim: int, hidden: int):
    super().__init__()
    self.norm1 = nn.GroupNorm(tokens, tokens)
    self.layer1 = nn.Linear(dim, hidden)
    self.layer2 = nn.Linear(hidden, dim)
    self.act = nn.GELU()

  def forward(self, x):
    return x + self.layer2(self.act(self.layer1(self.norm1(x))))


def _input_branch(filters: int, kernel_size: int) -> nn.Sequential:
  # Indices 1 and 3 carry the weights, as in the published layout.
  return nn.Sequential(
    nn.Identity(),
    nn.Conv3d(1, filters, kernel_size, padding=kernel_size // 2),
    nn.GELU(),
    nn.GroupNorm(filters, filters))


class PhAINet(nn.Module):

  def __init__(self, config: PhAIConfig = PUBLISHED):
    super().__init__()
    c = config
    self.config = c
    self.net_a = _input_branch(c.filters, c.kernel_size)
    self.net_p = _input_branch(c.filters, c.kernel_size)
    self.net_convolution_layers = nn.ModuleList(
      [nn.Sequential(ConvBlock(c.filters, c.kernel_size)) for _ in range(c.cnn_depth)])
    self.net_projection_layer = nn.Sequential(
      nn.Flatten(2), nn.Linear(c.voxels, c.dim))
    self.net_mixer_layers = nn.Sequential(
      *[nn.Sequential(TokenMixer(c.filters, c.dim_token_exp),
                      ChannelMixer(c.filters, c.dim, c.dim_exp))
        for _ in range(c.mlp_depth)],
      nn.LayerNorm(c.dim))
    # Index 3 carries the weights, as in the published layout; the token mean
    # is taken in forward().
    self.net_output = nn.Sequential(
      nn.Identity(), nn.Identity(), nn.Identity(), nn.Linear(c.dim, 2 * c.reflections))
    if c.voxel_head:
      # conv features and two input channels: the sign of the phase, and
      # the sign times the amplitude (so that trust can grow with |F|)
      self.net_voxel_output = nn.Conv3d(c.filters + 2, 2, 1)
      nn.init.zeros_(self.net_voxel_output.weight)
      nn.init.zeros_(self.net_voxel_output.bias)
      # the voxels the inputs are scattered to (network_io.to_grid)
      flat = network_io._grid_index(c.max_index)
      if len(flat) != c.reflections:
        raise ValueError("voxel_head: %d reflections in the index grid of max_index %d, not %d"
                         % (len(flat), c.max_index, c.reflections))
      # Not a buffer: DistributedDataParallel broadcasts buffers from rank 0,
      # and over gloo an int64 buffer beside float ones arrives corrupted.
      self._voxel_index = {"cpu": torch.as_tensor(flat, dtype=torch.long)}

  @property
  def voxel_index(self) -> torch.Tensor:
    """(reflections,) the flat voxel of each reflection (network_io.to_grid)."""
    return self._voxel_index["cpu"]

  def _voxel_index_on(self, device) -> torch.Tensor:
    key = str(device)
    if key not in self._voxel_index:
      self._voxel_index[key] = self._voxel_index["cpu"].to(device)
    return self._voxel_index[key]

  def forward(self, amplitudes: torch.Tensor, phases_deg: torch.Tensor) -> torch.Tensor:
    """Logits (batch, 2, reflections) from amplitude and phase grids."""
    x = self.net_a(amplitudes.unsqueeze(1)) + self.net_p(phases_deg.unsqueeze(1))
    for block in self.net_convolution_layers:
      x = block(x)
    voxels = x
    x = self.net_projection_layer(x)
    x = self.net_mixer_layers(x)
    x = self.net_output(x.mean(dim=1))
    x = x.view(x.shape[0], 2, self.config.reflections)
    if self.config.voxel_head:
      sign = torch.cos(torch.deg2rad(phases_deg)).unsqueeze(1)
      features = torch.cat([voxels, sign, sign * amplitudes.unsqueeze(1)], dim=1)
      x = x + self.net_voxel_output(features).flatten(2)[:, :, self._voxel_index_on(x.device)]
    return x

  def parameter_count(self) -> int:
    return sum(p.numel() for p in self.parameters())
