"""What the network sees and what it says, as tensors.

Shared by phasing and training so that both build the inputs the same way:
amplitudes on the reflection list are scaled, the Laue-equivalent duplicates
(h < 0, l = 0) are filled from their mates, and both amplitudes and phases are
scattered into the (2m+1, m+1, m+1) grid; logits are turned into signs and
probabilities.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from phai_cctbx import reflection_set

# Amplitudes are divided by the mean of the measured ones and multiplied by
# this, unless the model was trained with the published max-scaling.
MEAN_TARGET = 0.2
SCALING_MODES = ("max", "mean")


@functools.lru_cache(maxsize=None)
def _grid_index(max_index: int) -> np.ndarray:
  ih, ik, il = reflection_set.grid_positions(max_index)
  ny, nz = max_index + 1, max_index + 1
  return (ih * ny + ik) * nz + il


def scale_amplitudes(amplitudes: torch.Tensor, measured: torch.Tensor, mode: str) -> torch.Tensor:
  """Scale (batch, n) amplitudes; unmeasured ones become 0.

  "max": the largest measured amplitude becomes 1 (the published recipe; it
  fails when the strongest reflection is missing).  "mean": the mean of the
  measured amplitudes becomes MEAN_TARGET, which one missing reflection barely
  changes.
  """
  a = torch.where(measured, amplitudes, torch.zeros_like(amplitudes))
  if mode == "max":
    ref = a.amax(dim=1, keepdim=True)
  elif mode == "mean":
    n = measured.sum(dim=1, keepdim=True).clamp(min=1)
    ref = a.sum(dim=1, keepdim=True) / n / MEAN_TARGET
  else:
    raise ValueError("unknown amplitude scaling %r (use one of %s)" % (mode, SCALING_MODES))
  return a / ref.clamp(min=1e-12)


def fill_duplicates(values: torch.Tensor, max_index: int = reflection_set.MAX_INDEX) -> torch.Tensor:
  """Copy each (h, k, 0) value to its Laue-equivalent duplicate (-h, k, 0)."""
  mate = torch.as_tensor(np.array(reflection_set.unique_mate(max_index)), device=values.device)
  return values[..., mate]


def to_grid(values: torch.Tensor, max_index: int = reflection_set.MAX_INDEX) -> torch.Tensor:
  """Scatter (batch, n) list values into (batch, 2m+1, m+1, m+1) grids."""
  shape = reflection_set.grid_shape(max_index)
  out = values.new_zeros((values.shape[0], int(np.prod(shape))))
  idx = torch.as_tensor(_grid_index(max_index), device=values.device)
  out[:, idx] = values
  return out.view((values.shape[0],) + shape)


def amplitude_grid(amplitudes, measured, mode, max_index=reflection_set.MAX_INDEX):
  """The network's amplitude input from (batch, n) amplitudes and measured flags."""
  measured = fill_duplicates(measured, max_index)
  amplitudes = fill_duplicates(amplitudes, max_index)
  return to_grid(scale_amplitudes(amplitudes, measured, mode), max_index)


def phase_grid(signs: torch.Tensor, max_index=reflection_set.MAX_INDEX) -> torch.Tensor:
  """The network's phase input: 0 degrees for sign +1, -180 for sign -1, 0 for 0."""
  return to_grid(torch.where(signs < 0, -180.0, 0.0).to(torch.float32) * (signs != 0), max_index)


def signs_and_probabilities(logits: torch.Tensor):
  """Signs (+1 for phase 0, -1 for phase pi) and the probability of each chosen sign.

  Class 0 of the logits means phase pi, class 1 phase 0.
  """
  p_zero = torch.softmax(logits.float(), dim=1)[:, 1]
  signs = torch.where(p_zero >= 0.5, 1.0, -1.0)
  return signs, torch.maximum(p_zero, 1.0 - p_zero)
