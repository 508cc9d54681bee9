"""Starting phases for training and validation: zero, random, and partial solutions.

The network is run from a phase input it then improves by recycling.  Beside
the starts of ab-initio phasing (all phases 0, or random signs), it learns to
finish partial solutions: the true signs with a given fraction of them wrong,
as a search (e.g. the hybrid search of phai.solve) hands it a phase set that
is right for most strong reflections, or such a set after a few cycles of
charge flipping (``ChargeFlipper``, batched FFTs in torch).  The wrong signs are drawn either
uniformly over the reflections or biased towards the weak ones (where the
errors of real partial solutions lie), and the result is shifted to a random
one of the 8 origins of P 1 21/c 1, which leaves the fraction wrong (counted
at that origin) unchanged.

The fraction wrong counts the unique reflections with a non-zero amplitude
(the signs that matter; systematic absences and Laue duplicates excluded):
exactly ``round(fraction * count)`` of them are flipped.  Duplicates
(-h, k, 0) follow their mates.  Everything is batched torch on any device.
"""
from __future__ import annotations

import numpy as np
import torch

from phai_cctbx import reflection_set

# Weak-biased draws pick a reflection with weight exp(-WEAK_BIAS * |F| / rms|F|).
WEAK_BIAS = 2.0


class StartMaker:
  """Starting signs for batches of examples on one device."""

  def __init__(self, device="cpu"):
    self.device = torch.device(device)
    self.unique = torch.as_tensor(np.array(reflection_set.unique_mask()), device=self.device)
    self.mate = torch.as_tensor(np.array(reflection_set.unique_mate()), device=self.device)
    self.flips = torch.as_tensor(reflection_set.origin_sign_flips(), dtype=torch.float32,
                                 device=self.device)

  def eligible(self, true_amplitudes):
    """(B, n) mask of the reflections whose signs count: unique, |F| > 0."""
    return self.unique[None] & (true_amplitudes > 0)

  def random(self, shape, generator):
    """Random signs (Laue duplicates following their mates)."""
    signs = torch.where(torch.rand(shape, generator=generator, device=self.device) < 0.5, -1.0, 1.0)
    return signs[:, self.mate]

  def partial(self, true_signs, true_amplitudes, wrong_fraction, weak, generator,
              origin_shift=True):
    """The true signs with ``wrong_fraction`` (B,) of the eligible ones flipped;
    where ``weak`` (B,) bool is set, the flipped ones are drawn with weights
    favouring weak reflections, else uniformly.  With ``origin_shift``, each
    example is moved to a random origin afterwards."""
    b, n = true_signs.shape
    dev = self.device
    amp = true_amplitudes.float()
    ok = self.eligible(amp)
    count = ok.sum(1)
    wrong_fraction = torch.as_tensor(wrong_fraction, dtype=torch.float32, device=dev).expand(b)
    k = torch.round(wrong_fraction * count).long()                    # (B,)
    weak = torch.as_tensor(weak, dtype=torch.bool, device=dev).expand(b)
    # Sampling k without replacement with weights w: the k largest of
    # log(w) + Gumbel noise (uniform draws: w = 1).
    u = torch.rand((b, n), generator=generator, device=dev).clamp(1e-12, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    rms = torch.sqrt((amp ** 2 * ok).sum(1, keepdim=True) / count[:, None].clamp(min=1)).clamp(min=1e-30)
    log_w = torch.where(weak[:, None], -WEAK_BIAS * amp / rms, torch.zeros_like(amp))
    key = torch.where(ok, log_w + gumbel, torch.full_like(amp, -float("inf")))
    order = torch.argsort(key, dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=dev).expand(b, n).contiguous())
    flip = (rank < k[:, None]) & ok
    signs = torch.where(flip, -true_signs, true_signs)
    signs = signs[:, self.mate]
    if origin_shift:
      origin = torch.randint(0, 8, (b,), generator=generator, device=dev)
      signs = signs * self.flips[origin]
    return signs

  def origin_of(self, true_signs, start_signs, true_amplitudes):
    """(B,) the origin (0-7) at which the start agrees best with the truth,
    its eligible signs weighted by |F|^2."""
    w = (true_amplitudes.float() ** 2) * self.eligible(true_amplitudes)
    agree = ((true_signs * start_signs * w)[:, None, :] * self.flips[None]).sum(-1)
    return agree.argmax(1)

  def wrong_fraction(self, true_signs, start_signs, true_amplitudes):
    """(B,) the fraction of eligible signs that are wrong at the best of the 8 origins."""
    ok = self.eligible(true_amplitudes)
    agree = (true_signs[:, None, :] * start_signs[:, None, :] * self.flips[None]) > 0
    wrong = ((~agree) & ok[:, None]).sum(-1).float()                  # (B, 8)
    return wrong.min(1).values / ok.sum(1).clamp(min=1).float()

  def training_starts(self, true_signs, true_amplitudes, generator, partial_fraction,
                      random_fraction, wrong_min, wrong_max, weak_fraction, cf_fraction=0.0,
                      flipper=None, amplitudes=None, measured=None, cf_max_cycles=5):
    """Starts for a training batch: each example partial with probability
    ``partial_fraction`` (wrong fraction uniform in wrong_min..wrong_max,
    weak-biased with probability ``weak_fraction``), or such a partial
    solution after 1..cf_max_cycles cycles of charge flipping (``flipper``,
    on the measured ``amplitudes``) with probability ``cf_fraction``, else
    random signs with probability ``random_fraction``, else all phases 0.
    Returns the signs and the (B,) kind of each start (0 zero, 1 random,
    2 partial, 3 charge-flipped partial)."""
    b = true_signs.shape[0]
    dev = self.device
    u = torch.rand(b, generator=generator, device=dev)
    is_partial = u < partial_fraction
    is_cf = ~is_partial & (u < partial_fraction + cf_fraction) if flipper is not None \
      else torch.zeros_like(is_partial)
    v = torch.rand(b, generator=generator, device=dev)
    is_random = ~is_partial & ~is_cf & (v < random_fraction)
    start = torch.ones_like(true_signs)
    start = torch.where(is_random[:, None], self.random(true_signs.shape, generator), start)
    if partial_fraction > 0 or bool(is_cf.any()):
      frac = wrong_min + (wrong_max - wrong_min) * torch.rand(b, generator=generator, device=dev)
      weak = torch.rand(b, generator=generator, device=dev) < weak_fraction
      part = self.partial(true_signs, true_amplitudes, frac, weak, generator)
      start = torch.where(is_partial[:, None], part, start)
      sel = torch.nonzero(is_cf).flatten()
      if len(sel):
        cycles = int(torch.randint(1, cf_max_cycles + 1, (1,), generator=generator, device=dev))
        start[sel] = flipper(amplitudes[sel], measured[sel], part[sel], cycles)
    kind = torch.where(is_partial, 2, torch.where(is_cf, 3, torch.where(is_random, 1, 0)))
    return start, kind


class ChargeFlipper:
  """A few cycles of charge flipping on a batch, in torch (any device): the
  phase sets a dual-space search hands the network.

  The 1205 reflections and their P2_1/c mates (-h,k,-l) and (h,-k,l), sign
  times (-1)^(k+l), and Friedel mates (-h,-k,-l) fill a 24^3 grid; each cycle
  takes the density, flips it below delta = ``delta`` x its r.m.s., and takes
  the signs of the transform at the reflections; measured reflections keep
  their amplitudes, unmeasured ones take the transform's values."""

  GRID = 24

  def __init__(self, device="cpu"):
    self.device = torch.device(device)
    hkl = torch.as_tensor(np.array(reflection_set.indices()), device=self.device)
    h, k, l = hkl.unbind(1)
    n = self.GRID
    mates = [(h, k, l, 1.0), (-h, k, -l, None), (h, -k, l, None), (-h, -k, -l, 1.0)]
    parity = torch.where((k + l) % 2 == 0, 1.0, -1.0)
    self.index = torch.stack([((a % n) * n + (b % n)) * n + (c % n) for a, b, c, _ in mates])  # (4, R)
    self.factor = torch.stack([torch.ones_like(parity) if f is not None else parity
                               for _, _, _, f in mates]).to(torch.float32)
    self.unique = torch.as_tensor(np.array(reflection_set.unique_mask()), device=self.device)
    self.mate = torch.as_tensor(np.array(reflection_set.unique_mate()), device=self.device)

  def to_grid(self, values):
    """(B, R) values on the list -> (B, 24^3) grid with all their mates."""
    b = values.shape[0]
    grid = torch.zeros((b, self.GRID ** 3), dtype=values.dtype, device=self.device)
    v = values[:, self.unique]               # absences and Laue duplicates left out
    rows = torch.arange(b, device=self.device)[:, None]
    for m in range(4):
      idx = self.index[m][self.unique]
      grid.index_put_((rows, idx[None].expand(b, -1)), v * self.factor[m][self.unique])
    return grid

  def __call__(self, amplitudes, measured, signs, cycles, delta=1.1):
    """Signs (B, R) after ``cycles`` cycles from ``signs``."""
    b = amplitudes.shape[0]
    n = self.GRID
    amp = amplitudes.float()
    f = amp * signs
    for _ in range(int(cycles)):
      rho = torch.fft.ifftn(self.to_grid(f).view(b, n, n, n).to(torch.complex64), dim=(1, 2, 3)).real
      sigma = rho.flatten(1).std(1).clamp(min=1e-30)[:, None, None, None]
      rho = torch.where(rho < delta * sigma, -rho, rho)
      g = torch.fft.fftn(rho, dim=(1, 2, 3)).real.flatten(1)
      g = g[:, self.index[0]]
      s = torch.where(g < 0, -1.0, 1.0)
      f = torch.where(measured, amp * s, g)
    out = torch.where(f < 0, -1.0, 1.0)
    return out[:, self.mate]
