"""Training examples from structures: amplitudes as measured, and the true signs.

For each structure the conditions of a measurement are drawn on the fly:
an isotropic displacement parameter, a resolution limit, a fraction of
missing reflections (mostly 0-15 % as in the paper, sometimes much more) and
noise on the amplitudes.  Everything runs batched in torch on the training
device.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from phai_cctbx import reflection_set
from phai_cctbx.training.structure_factors import StructureFactorCalculator, d_star_sq


@dataclasses.dataclass
class ExampleOptions:
  u_iso_min: float = 0.005
  u_iso_max: float = 0.06
  d_min_min: float = 0.6
  d_min_max: float = 2.2
  missing_max: float = 0.15          # most examples lose 0..missing_max of the reflections
  low_completeness_fraction: float = 0.15
  low_completeness_max: float = 0.5  # ... and this share loses up to low_completeness_max
  drop_strongest_fraction: float = 0.05
  noise_relative_max: float = 0.05
  noise_absolute_max: float = 0.02
  unmeasured_weight: float = 0.5     # loss weight of reflections beyond d_min or missing


@dataclasses.dataclass
class ExampleBatch:
  amplitudes: torch.Tensor   # (B, n) as measured, 0 where not measured
  measured: torch.Tensor     # (B, n) bool
  true_amplitudes: torch.Tensor  # (B, n) noise-free |F|
  signs: torch.Tensor        # (B, n) true signs (+1 phase 0)
  weights: torch.Tensor      # (B, n) loss weights (0 for absences and duplicates)
  d_min: torch.Tensor        # (B,)


class ExampleMaker:

  def __init__(self, device="cpu", options: ExampleOptions | None = None):
    self.device = torch.device(device)
    self.options = options or ExampleOptions()
    self.calc = StructureFactorCalculator(device=self.device)
    self.hkl = self.calc.hkl
    self.mate = torch.as_tensor(np.array(reflection_set.unique_mate()), device=self.device)
    self.unique = torch.as_tensor(np.array(reflection_set.unique_mask()), device=self.device)
    self.present = torch.as_tensor(~reflection_set.systematic_absences(), device=self.device)

  def _uniform(self, n, lo, hi, gen):
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=self.device)

  def __call__(self, frac, numbers, cell, generator: torch.Generator,
               d_min: torch.Tensor | None = None, missing: torch.Tensor | None = None,
               noise: bool = True) -> ExampleBatch:
    o = self.options
    frac = torch.as_tensor(frac, device=self.device, dtype=torch.float32)
    numbers = torch.as_tensor(numbers, device=self.device).long()
    cell = torch.as_tensor(cell, device=self.device, dtype=torch.float32)
    b, n = frac.shape[0], self.hkl.shape[0]
    gen = generator
    u = self._uniform(b, o.u_iso_min, o.u_iso_max, gen)
    u_atoms = u[:, None] * self._uniform(b * numbers.shape[1], 0.8, 1.25, gen).view(numbers.shape)
    u_atoms = torch.where(numbers == 1, 1.2 * u_atoms, u_atoms)
    f = self.calc(frac, numbers, cell, u_atoms)
    f = f * self.present  # systematic absences exactly 0
    true_amp = f.abs()
    signs = torch.where(f < 0, -1.0, 1.0)

    if d_min is None:
      d_min = self._uniform(b, o.d_min_min, o.d_min_max, gen)
    d_min = torch.as_tensor(d_min, device=self.device, dtype=torch.float32).expand(b)
    dss = d_star_sq(cell, self.hkl)
    within = dss <= 1.0 / (d_min[:, None] ** 2)
    if missing is None:
      low = torch.rand(b, generator=gen, device=self.device) < o.low_completeness_fraction
      missing = torch.where(low, self._uniform(b, o.missing_max, o.low_completeness_max, gen),
                            self._uniform(b, 0.0, o.missing_max, gen))
    missing = torch.as_tensor(missing, device=self.device, dtype=torch.float32).expand(b)
    keep = torch.rand(b, n, generator=gen, device=self.device) >= missing[:, None]
    measured = within & keep & self.unique & (true_amp > 0)
    if noise and o.drop_strongest_fraction > 0:
      drop = torch.rand(b, generator=gen, device=self.device) < o.drop_strongest_fraction
      strongest = torch.where(measured, true_amp, torch.zeros_like(true_amp)).argmax(1)
      measured[drop, strongest[drop]] = False
    measured = measured[:, self.mate]  # duplicates follow their mates

    amp = true_amp
    if noise:
      rel = self._uniform(b, 0.0, o.noise_relative_max, gen)[:, None]
      absn = self._uniform(b, 0.0, o.noise_absolute_max, gen)[:, None]
      mean = (true_amp * measured).sum(1, keepdim=True) / measured.sum(1, keepdim=True).clamp(min=1)
      z1 = torch.randn(b, n, generator=gen, device=self.device)
      z2 = torch.randn(b, n, generator=gen, device=self.device)
      amp = (true_amp * (1.0 + rel * z1) + absn * mean * z2).clamp(min=0.0)
      amp = amp[:, self.mate]
    amp = amp * measured

    scale = true_amp.amax(1, keepdim=True).clamp(min=1e-12)
    weights = (true_amp / scale) * self.unique
    weights = torch.where(measured, weights, o.unmeasured_weight * weights)
    return ExampleBatch(amplitudes=amp, measured=measured, true_amplitudes=true_amp,
                        signs=signs, weights=weights, d_min=d_min)
