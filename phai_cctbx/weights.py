"""Network weights: the shipped default model, and any file in the published layout.

A weights file is either

* a plain state dict in the published PhAI layout (e.g. ``PhAI_model.pth``);
  the network's sizes are read off the tensor shapes, and amplitudes are
  scaled as the published model was trained (largest = 1); or
* this package's format: ``{"format": FORMAT, "config": {...},
  "state_dict": {...}, "card": {...}}``, which records the sizes, the
  amplitude scaling and how the model was trained.

The default weights ship inside the package with their sha256 beside them and
are checked at load.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import os
import re

import torch

from phai_cctbx.errors import Sorry
from phai_cctbx.model import PhAIConfig, PhAINet

FORMAT = "phai_cctbx-weights-1"
DEFAULT_NAME = "phai_default.pt"


def default_weights_path() -> str:
  return str(importlib.resources.files("phai_cctbx").joinpath("weights", DEFAULT_NAME))


def default_weights_available() -> bool:
  return os.path.isfile(default_weights_path())


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _check_default_checksum(path: str) -> None:
  expected_file = path + ".sha256"
  if not os.path.isfile(expected_file):
    raise Sorry("The default weights have no checksum file %s: reinstall phai_cctbx." % expected_file)
  expected = open(expected_file).read().split()[0]
  if sha256_of(path) != expected:
    raise Sorry("The default weights %s fail their sha256 check (damaged install): "
                "reinstall phai_cctbx." % path)


def config_from_state_dict(state_dict: dict) -> PhAIConfig:
  """The network sizes of a published-layout state dict, read off its shapes."""
  try:
    conv = state_dict["net_a.1.weight"]
    proj = state_dict["net_projection_layer.1.weight"]
    out = state_dict["net_output.3.weight"]
    blocks = {int(m.group(1)) for k in state_dict
              for m in [re.match(r"net_convolution_layers\.(\d+)\.", k)] if m}
    mixers = {int(m.group(1)) for k in state_dict
              for m in [re.match(r"net_mixer_layers\.(\d+)\.0\.", k)] if m}
    token = state_dict["net_mixer_layers.0.0.layer1.weight"]
    channel = state_dict["net_mixer_layers.0.1.layer1.weight"]
  except KeyError as e:
    raise ValueError("not a PhAI state dict (no tensor %s)" % e)
  voxels = proj.shape[1]
  max_index = next((m for m in range(1, 64) if (2 * m + 1) * (m + 1) ** 2 == voxels), None)
  if max_index is None:
    raise ValueError("projection layer of %d inputs matches no index grid" % voxels)
  return PhAIConfig(max_index=max_index, filters=conv.shape[0], kernel_size=conv.shape[-1],
                    cnn_depth=len(blocks), dim=proj.shape[0], dim_exp=channel.shape[0],
                    dim_token_exp=token.shape[0], mlp_depth=len(mixers),
                    reflections=out.shape[0] // 2,
                    voxel_head="net_voxel_output.weight" in state_dict)


def read_weights(path: str):
  """(config, state_dict, amplitude_scaling, card) from a weights file; Sorry if unusable."""
  if not os.path.isfile(path):
    raise Sorry("Weights file not found: %s (give model.weights=PATH to an existing file)." % path)
  try:
    blob = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for damaged files
    raise Sorry("Cannot read weights file %s (%s): give a PhAI state dict or a phai_cctbx "
                "weights file." % (path, str(e).splitlines()[0][:120] if str(e) else type(e).__name__)) from None
  if isinstance(blob, dict) and blob.get("format") == FORMAT:
    config = PhAIConfig.from_dict(blob["config"])
    return config, blob["state_dict"], blob.get("amplitude_scaling", "mean"), blob.get("card", {})
  if isinstance(blob, dict) and all(isinstance(v, torch.Tensor) for v in blob.values()):
    try:
      config = config_from_state_dict(blob)
    except ValueError as e:
      raise Sorry("Weights file %s: %s; give a file in the PhAI layout." % (path, e)) from None
    return config, blob, "max", {}
  raise Sorry("Weights file %s holds no PhAI network: give a PhAI state dict or a phai_cctbx "
              "weights file." % path)


class LoadedModel(torch.nn.Module):
  """A PhAINet with what is needed to feed it: its amplitude scaling and card."""

  def __init__(self, net: PhAINet, amplitude_scaling: str, card: dict, source: str):
    super().__init__()
    self.net = net
    self.amplitude_scaling = amplitude_scaling
    self.card = card
    self.source = source

  @property
  def config(self) -> PhAIConfig:
    return self.net.config

  def forward(self, amplitudes, phases_deg):
    return self.net(amplitudes, phases_deg)


def load_model(path: str | None = None, device: str = "cpu") -> LoadedModel:
  """The network ready for phasing; ``path=None`` loads the shipped default weights."""
  if path is None:
    path = default_weights_path()
    if not os.path.isfile(path):
      raise Sorry("No trained default weights are installed with this phai_cctbx; "
                  "give model.weights=PATH (e.g. the published PhAI_model.pth).")
    _check_default_checksum(path)
  config, state_dict, scaling, card = read_weights(path)
  net = PhAINet(config)
  state_dict = {k: v.float() for k, v in state_dict.items()}
  try:
    net.load_state_dict(state_dict)
  except RuntimeError as e:
    first = str(e).splitlines()[0]
    raise Sorry("Weights file %s does not fit the PhAI network (%s): give a complete PhAI "
                "state dict." % (path, first[:160])) from None
  net.eval().to(device)
  return LoadedModel(net, scaling, card, path)


def save_weights(path: str, net: PhAINet, amplitude_scaling: str, card: dict, half: bool = True) -> str:
  """Write a phai_cctbx weights file (half precision by default) and its .sha256; returns the digest."""
  state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu()
           for k, v in net.state_dict().items()}
  blob = {"format": FORMAT, "config": net.config.as_dict(), "state_dict": state,
          "amplitude_scaling": amplitude_scaling, "card": card}
  tmp = path + ".tmp"
  torch.save(blob, tmp)
  os.replace(tmp, path)
  digest = sha256_of(path)
  with open(path + ".sha256", "w") as f:
    f.write("%s  %s\n" % (digest, os.path.basename(path)))
  return digest
