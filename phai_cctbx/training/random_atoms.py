"""P2_1/c cells filled with random atoms, in batches in torch, on any device.

Melgalvis & Rekis (Acta Cryst. A82, 2026) trained PhAI on cells filled with
random atoms or molecule-like fragments and found it transferred better to
larger experimental cells than training on molecules alone.  A structure
here: a cell volume first (250-950 A^3), then the atoms of the asymmetric
unit (3-25, at 16-24 A^3 per atom), then the edges (3.5-10 A, beta as the molecular generators draw it),
then atoms placed one at a time at the first of ``proposals`` random sites
that keeps every atom at least ``min_distance`` from every other atom of the
cell and their lattice images (its own symmetry copies included), with
elements drawn from about the frequencies of small-molecule crystal
structures (no hydrogen).  A cell that takes fewer than 80 % of its atoms is
dropped.  Each structure costs a few dozen small tensor operations for the
whole batch, so these are the cheapest structures the trainer gets.

Used by both generators: ``TorchStructureGenerator(random_atom_fraction=)``
on the training device and ``StructureGenerator(random_atom_fraction=)`` in
the CPU worker processes (one structure at a time, on the CPU).
"""
from __future__ import annotations

import torch

from phai_cctbx.training.torch_structures import (
  OPS_ROT, OPS_TRANS, draw_beta, draw_edges, nearest_image_d2, orthogonalisation, pad_structures)

#: Elements and their weights (C, N, O first; halogens, S and P; a few metals).
ELEMENTS = (6, 7, 8, 9, 15, 16, 17, 35, 11, 20, 26, 29, 30, 53)
WEIGHTS = (0.50, 0.14, 0.20, 0.02, 0.02, 0.04, 0.03, 0.01, 0.008, 0.008, 0.006, 0.006, 0.006, 0.006)
MIN_DISTANCE = 1.3          # A between any two atoms
VOLUME_PER_ATOM = (16.0, 24.0)
CELL_VOLUME = (250.0, 950.0)    # A^3, drawn first
ATOMS_PER_ASYM = (3, 25)
KEEP_FRACTION = 0.8         # of the atoms asked for, or the cell is dropped


def _copies(f):
  """(..., 4, 3) the four P2_1/c copies of fractional sites f (..., 3)."""
  return OPS_ROT.to(f.device) * f[..., None, :] + OPS_TRANS.to(f.device)


def random_atom_structures(n, generator, device="cpu", max_atoms=400, max_edge=10.0, min_edge=3.5,
                           beta_range=(90.0, 120.0), proposals=16, min_distance=MIN_DISTANCE):
  """Up to n structures (fewer where cells did not take their atoms): dict of
  tensors on ``device`` as TorchStructureGenerator.sample_batch gives them:
  frac (m, max_atoms, 3) in [0, 1), numbers int8 (0: padding), cell (m, 6),
  body (m, max_atoms): each atom its own body, 4 x atom + copy (-1: padding)."""
  device = torch.device(device)
  lo_n, hi_n = ATOMS_PER_ASYM
  hi_n = min(hi_n, max_atoms // 4)
  rand = lambda *shape: torch.rand(shape, generator=generator, device=device)  # noqa: E731
  volume = CELL_VOLUME[0] + (CELL_VOLUME[1] - CELL_VOLUME[0]) * rand(n)
  lo_v, hi_v = VOLUME_PER_ATOM
  target = torch.round(volume / (4 * (lo_v + (hi_v - lo_v) * rand(n)))).long().clamp(lo_n, hi_n)
  beta = draw_beta(n, beta_range, generator, device)
  edges, ok = draw_edges(volume, beta, min_edge, max_edge, generator)
  m = orthogonalisation(edges, beta)
  sites = torch.zeros((n, hi_n, 3), device=device)
  count = torch.zeros(n, dtype=torch.long, device=device)
  need = min_distance ** 2
  slots = torch.arange(hi_n, device=device)
  for k in range(hi_n):
    trial = torch.rand((n, proposals, 3), generator=generator, device=device)
    placed = _copies(sites).reshape(n, 4 * hi_n, 3)
    d2 = nearest_image_d2(trial, placed, m)                                # (n, P, 4 hi_n)
    taken = (slots < count[:, None]).repeat_interleave(4, 1)
    d2 = torch.where(taken[:, None, :], d2, torch.full_like(d2, float("inf"))).amin(-1)
    # each site against its own copies 1-3 (its lattice images are >= 3.5 A away)
    own = nearest_image_d2(trial, _copies(trial)[:, :, 1:].reshape(n, 3 * proposals, 3), m)
    own = torch.diagonal(own.reshape(n, proposals, proposals, 3), dim1=1, dim2=2).amin(1)
    good = (d2 >= need) & (own >= need)
    first = torch.argmax(good.float(), 1)
    add = good.any(1) & (count < target)
    pick = trial[torch.arange(n, device=device), first]
    # into slot ``count``: after a site that found no place, the next atom takes its slot
    sites = torch.where((slots[None, :, None] == count[:, None, None]) & add[:, None, None],
                        pick[:, None, :], sites)
    count = count + add.long()
  keep = ok & (count.float() >= KEEP_FRACTION * target.float())
  idx = torch.nonzero(keep).flatten()
  sites, count, edges, beta = sites[idx], count[idx], edges[idx], beta[idx]
  b = len(idx)
  elements = torch.as_tensor(ELEMENTS, device=device)
  weights = torch.as_tensor(WEIGHTS, dtype=torch.float32, device=device)
  draws = torch.multinomial(weights, max(1, b * hi_n), replacement=True, generator=generator)
  z = elements[draws[:b * hi_n]].reshape(b, hi_n)
  slot = slots.expand(b, -1)
  return pad_structures(_copies(sites).transpose(1, 2), slot, slot < count[:, None], z, edges, beta,
                        max_atoms)
