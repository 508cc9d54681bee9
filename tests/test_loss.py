"""The training loss and r: origin invariance, and agreement with the package's r."""
import numpy as np

import phai_cctbx  # noqa: F401
import torch

from phai_cctbx import reflection_set
from phai_cctbx.training.loss import OriginInvariantLoss, sign_correlation


def _example(seed=0):
  rng = np.random.default_rng(seed)
  amp = rng.exponential(size=1205) * ~reflection_set.systematic_absences()
  signs = rng.choice([-1.0, 1.0], size=1205)
  return amp, signs


def test_batched_r_agrees_with_reflection_set_r():
  amp, true = _example(1)
  pred = true.copy()
  pred[np.random.default_rng(2).random(1205) < 0.2] *= -1
  pred = pred * reflection_set.origin_sign_flips()[5]  # another origin
  weights = amp * reflection_set.unique_mask()
  ours = sign_correlation(torch.tensor(amp)[None], torch.tensor(true)[None],
                          torch.tensor(pred)[None])[0].item()
  assert abs(ours - reflection_set.sign_correlation(weights, true, pred)) < 1e-9
  assert 0.4 < ours < 0.9


def test_loss_is_origin_invariant_and_rewards_right_signs():
  amp, true = _example(3)
  loss = OriginInvariantLoss()
  w = torch.tensor(amp * reflection_set.unique_mask(), dtype=torch.float32)[None]
  t = torch.tensor(true, dtype=torch.float32)[None]

  def logits_for(signs):  # confident predictions of these signs
    s = torch.tensor(signs, dtype=torch.float32)
    return torch.stack([-2.0 * s, 2.0 * s])[None]

  right = loss(logits_for(true), t, w)
  shifted = loss(logits_for(true * reflection_set.origin_sign_flips()[3]), t, w)
  wrong = loss(logits_for(-true * np.where(np.arange(1205) % 2, 1, -1)), t, w)
  assert torch.allclose(right, shifted)
  assert right < 0.2 < wrong


def test_a_fixed_origin_scores_the_signs_at_that_origin_only():
  amp, true = _example(4)
  loss = OriginInvariantLoss()
  w = torch.tensor(amp * reflection_set.unique_mask(), dtype=torch.float32)[None].repeat(2, 1)
  t = torch.tensor(true, dtype=torch.float32)[None].repeat(2, 1)
  s = torch.tensor(true * reflection_set.origin_sign_flips()[3], dtype=torch.float32)
  logits = torch.stack([-2.0 * s, 2.0 * s])[None].repeat(2, 1, 1)
  best = loss(logits, t, w)
  assert torch.allclose(loss(logits, t, w, torch.tensor([-1, -1])), best)
  assert torch.allclose(loss(logits, t, w, torch.tensor([3, 3])), best)
  elsewhere = loss(logits, t, w, torch.tensor([3, 0]))
  assert elsewhere > best + 0.5
  # each example on its own: the mean of the two
  one = loss(logits[:1], t[:1], w[:1], torch.tensor([0]))
  assert torch.allclose(elsewhere, (best + one) / 2)
