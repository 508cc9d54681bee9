"""Structure factors of P 1 21/c 1 structures on the reflection list, batched in torch.

The generated structures list every atom of the unit cell and contain the
inversion centre at the origin, so F(h) = sum_j f_j(s) T_j(s) cos(2 pi h.x_j)
is real.  Form factors are the International Tables (1992) four-Gaussian
fits, the same table cctbx uses with ``table="it1992"``; the coefficients
were read from cctbx once and ship in ``phai_cctbx/data``.

Only numpy and torch are needed, so this runs on a training machine without
cctbx.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
import math

import numpy as np
import torch

from phai_cctbx import reflection_set


@functools.lru_cache(maxsize=None)
def form_factor_table() -> dict:
  """{"a": (100, 4), "b": (100, 4), "c": (100,)} numpy arrays indexed by atomic number."""
  text = importlib.resources.files("phai_cctbx").joinpath(
    "data/form_factors_it1992.json").read_text()
  elements = json.loads(text)["elements"]
  a = np.zeros((100, 4))
  b = np.ones((100, 4))
  c = np.zeros(100)
  for entry in elements.values():
    z = entry["Z"]
    a[z], b[z], c[z] = entry["a"], entry["b"], entry["c"]
  return {"a": a, "b": b, "c": c}


def reciprocal_metric(cell: torch.Tensor) -> torch.Tensor:
  """(batch, 3, 3) reciprocal metric tensors G* from (batch, 6) cells (Å, degrees)."""
  a, b, c = cell[:, 0], cell[:, 1], cell[:, 2]
  al, be, ga = (torch.deg2rad(cell[:, i]) for i in (3, 4, 5))
  ca, cb, cg = torch.cos(al), torch.cos(be), torch.cos(ga)
  g = torch.stack([
    torch.stack([a * a, a * b * cg, a * c * cb], -1),
    torch.stack([a * b * cg, b * b, b * c * ca], -1),
    torch.stack([a * c * cb, b * c * ca, c * c], -1)], -2)
  return torch.linalg.inv(g)


def d_star_sq(cell: torch.Tensor, hkl: torch.Tensor) -> torch.Tensor:
  """(batch, n) values of 1/d^2 for the (n, 3) indices in each cell."""
  gs = reciprocal_metric(cell)
  h = hkl.to(cell.dtype)
  return torch.einsum("ni,bij,nj->bn", h, gs, h)


class StructureFactorCalculator:
  """Computes F on a fixed list of indices for batches of padded structures."""

  def __init__(self, hkl=None, device="cpu", dtype=torch.float32):
    if hkl is None:
      hkl = reflection_set.indices()
    self.device = torch.device(device)
    self.dtype = dtype
    self.hkl = torch.as_tensor(np.array(hkl), dtype=dtype, device=self.device)
    table = form_factor_table()
    self.ff_a = torch.as_tensor(table["a"], dtype=dtype, device=self.device)
    self.ff_b = torch.as_tensor(table["b"], dtype=dtype, device=self.device)
    self.ff_c = torch.as_tensor(table["c"], dtype=dtype, device=self.device)

  def __call__(self, frac, numbers, cell, u_iso, chunk: int = 256):
    """F (batch, n) for fractional coordinates (batch, atoms, 3), atomic numbers
    (batch, atoms) with 0 for padding, cells (batch, 6) and U_iso (batch,) or
    (batch, atoms) in Å^2."""
    frac = torch.as_tensor(frac, device=self.device, dtype=self.dtype)
    numbers = torch.as_tensor(numbers, device=self.device).long()
    cell = torch.as_tensor(cell, device=self.device, dtype=self.dtype)
    u_iso = torch.as_tensor(u_iso, device=self.device, dtype=self.dtype)
    if u_iso.dim() == 1:
      u_iso = u_iso[:, None].expand(numbers.shape)
    stol_sq = d_star_sq(cell, self.hkl) / 4.0                         # (B, n)
    out = []
    for start in range(0, self.hkl.shape[0], chunk):
      sl = slice(start, start + chunk)
      s2 = stol_sq[:, sl]                                             # (B, m)
      # Form factors per element present: gather coefficients per atom.
      a = self.ff_a[numbers]                                          # (B, N, 4)
      b = self.ff_b[numbers]
      c = self.ff_c[numbers]                                          # (B, N)
      f = (a[..., None] * torch.exp(-b[..., None] * s2[:, None, None, :])).sum(2) \
        + c[..., None]                                                # (B, N, m)
      f = f * torch.exp(-8.0 * math.pi ** 2 * u_iso[..., None] * s2[:, None, :])
      f = f * (numbers > 0)[..., None]
      phase = 2.0 * math.pi * frac @ self.hkl[sl].T                   # (B, N, m)
      out.append((f * torch.cos(phase)).sum(1))
    return torch.cat(out, dim=1)
