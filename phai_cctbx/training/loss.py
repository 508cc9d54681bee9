"""The origin-invariant loss and the paper's r, for batches of sign predictions.

P 1 21/c 1 has eight permissible origins; a structure and its shifted copy
have signs that differ by a known factor per reflection, so the loss of each
example is the minimum over the eight choices of the target, and the
correlation r the maximum.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from phai_cctbx import reflection_set


class OriginInvariantLoss(torch.nn.Module):
  """Weighted cross-entropy over the two phase classes, minimum over origins.

  ``origin`` (B,) long, optional: examples with an index 0-7 are scored at
  that origin only (-1: the minimum).  A network given a partial solution
  should finish it where it stands.  Under the minimum, the gradient of such
  an example follows the origin the network's own guess is nearest, which
  for 7 of 8 random input origins agrees with the input on half the signs
  and contradicts it on the other half: a path that could carry the input's
  signs to the output (``model.voxel_head``) gets no consistent gradient.
  """

  def __init__(self):
    super().__init__()
    self.register_buffer("flips", torch.as_tensor(reflection_set.origin_sign_flips(),
                                                  dtype=torch.float32))

  def forward(self, logits, signs, weights, origin=None):
    # Class 1 is phase 0 (sign +1): the margin d favours sign +1.
    d = (logits[:, 1] - logits[:, 0]).float()                        # (B, n)
    targets = signs[:, None, :] * self.flips[None]                    # (B, 8, n)
    ce = F.softplus(-targets * d[:, None, :])                         # (B, 8, n)
    per_origin = (ce * weights[:, None, :]).sum(-1) / weights.sum(-1, keepdim=True).clamp(min=1e-12)
    best = per_origin.min(dim=1).values
    if origin is not None:
      fixed = torch.gather(per_origin, 1, origin.clamp(min=0)[:, None])[:, 0]
      best = torch.where(origin >= 0, fixed, best)
    return best.mean()


def sign_correlation(amplitudes, true_signs, predicted_signs, mask=None):
  """The paper's r per example (torch, batched): max over origins of
  sum |F|^2 s_true s_pred / sum |F|^2 over the masked reflections."""
  flips = torch.as_tensor(reflection_set.origin_sign_flips(), dtype=amplitudes.dtype,
                          device=amplitudes.device)
  w = amplitudes ** 2
  if mask is not None:
    w = w * mask
  w = w * torch.as_tensor(np.array(reflection_set.unique_mask()), device=w.device)
  prod = (true_signs * predicted_signs * w)[:, None, :] * flips[None]
  return prod.sum(-1).max(dim=1).values / w.sum(-1).clamp(min=1e-30)
