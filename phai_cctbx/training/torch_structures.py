"""Random P2_1/c organic structures generated in batches in torch, on any device.

The CPU generator (``structures.StructureGenerator``) builds one structure at
a time in numpy in worker processes; on a GPU the trainer can consume more
examples per second than a machine's cores make structures.  This generator
makes thousands of candidate structures at once on the training device by
vectorised rejection sampling, with the contact rules of the CPU generator's
random insertion (``insertion_thresholds(contact_thresholds(scale))``, the
same element classes, hydrogen bonds allowed):

1. per candidate: the cell's beta as the CPU generator draws it; Z' = 1-3
   molecules from the conformer library within the heavy-atom budget of a
   10 Å cell (molecule sizes drawn flat half of the time, a molecule repeated
   30 % of the time), oriented as ``structures.orient`` does (mostly principal
   axes along the cell axes); a cell volume of 18-25.2 Å^3 per non-hydrogen
   atom and edges 3.5-10 Å;
2. random fractional centres; the four symmetry copies of each molecule;
   the contact test of every atom of the asymmetric unit against every atom
   of the cell at its nearest lattice image (and against a molecule's own
   images);
3. candidates that clash get new centres and orientations, up to ``tries``
   times (all tested in one round, the first clash-free one kept), then a
   cell 4 % larger, as the CPU insertion does;
4. a squeeze: each edge in turn shrinks by 1.5 % while no contact becomes too
   short (down to 14 Å^3 per non-hydrogen atom).

Not made here (the CPU generator makes them): units on inversion centres and
ionic structures.  ``python -m phai_cctbx.training.benchmark_throughput``
times this generator beside the trainer.
"""
from __future__ import annotations


import numpy as np
import torch

from phai_cctbx.training.structures import (
  METAL_NUMBERS, _element_class, contact_thresholds, insertion_thresholds)

OPS_ROT = torch.tensor([[1, 1, 1], [-1, 1, -1], [-1, -1, -1], [1, -1, 1]], dtype=torch.float32)
OPS_TRANS = torch.tensor([[0, 0, 0], [0, .5, .5], [0, 0, 0], [0, .5, .5]], dtype=torch.float32)
_PERMS = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
_AC = torch.tensor([(i, 0, k) for i in (-1, 0, 1) for k in (-1, 0, 1)], dtype=torch.float32)
_ALL = torch.tensor([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)],
                    dtype=torch.float32)


def orthogonalisation(edges, beta_deg):
  """(B, 3, 3) fractional -> Cartesian matrices (a along x, b along y)."""
  br = torch.deg2rad(beta_deg)
  b = edges.shape[0]
  m = torch.zeros((b, 3, 3), dtype=edges.dtype, device=edges.device)
  m[:, 0, 0] = edges[:, 0]
  m[:, 1, 1] = edges[:, 1]
  m[:, 0, 2] = edges[:, 2] * torch.cos(br)
  m[:, 2, 2] = edges[:, 2] * torch.sin(br)
  return m


def _rotation_from_quaternion(q):
  q = q / q.norm(dim=-1, keepdim=True)
  w, x, y, z = q.unbind(-1)
  return torch.stack([
    torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
    torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
    torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)


def _axis_angle(axis, angle):
  axis = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-12)
  x, y, z = axis.unbind(-1)
  zero = torch.zeros_like(x)
  k = torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                   torch.stack([-y, x, zero], -1)], -2)
  eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(k)
  s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
  return eye + s * k + (1 - c) * (k @ k)


def reduced_ac_basis(m, rounds=8):
  """A Lagrange-Gauss reduced basis of the a-c lattice plane of cells m
  (B, 3, 3): (to_reduced (B, 2, 2), basis (B, 2, 3)) with the reduced
  basis vectors in Cartesian coordinates, and to_reduced taking an (x, z)
  pair of fractional coordinates to coordinates in that basis."""
  b = m.shape[0]
  a_vec, c_vec = m[:, :, 0], m[:, :, 2]
  u = torch.eye(2, dtype=m.dtype, device=m.device).expand(b, 2, 2).clone()  # columns: the basis in a, c
  for _ in range(rounds):
    v1 = u[:, 0, 0, None] * a_vec + u[:, 1, 0, None] * c_vec
    v2 = u[:, 0, 1, None] * a_vec + u[:, 1, 1, None] * c_vec
    swap = (v1 * v1).sum(-1) > (v2 * v2).sum(-1)
    u = torch.where(swap[:, None, None], u.flip(-1), u)
    v1, v2 = torch.where(swap[:, None], v2, v1), torch.where(swap[:, None], v1, v2)
    mu = torch.round((v1 * v2).sum(-1) / (v1 * v1).sum(-1))
    u = torch.stack([u[:, :, 0], u[:, :, 1] - mu[:, None] * u[:, :, 0]], -1)
  basis = torch.stack([u[:, 0, 0, None] * a_vec + u[:, 1, 0, None] * c_vec,
                       u[:, 0, 1, None] * a_vec + u[:, 1, 1, None] * c_vec], 1)
  return torch.linalg.inv(u), basis


def nearest_image_d2(first, every, m):
  """(B, n, k) squared distances from the atoms ``first`` (B, n, 3) to the
  nearest lattice image of each of ``every`` (B, k, 3), fractional, in the
  monoclinic cells m.  b is normal to the a-c plane, so the b part of the
  shortest vector is the rounded one whatever its a-c part; in the a-c plane,
  in a reduced basis, the nearest lattice point is a corner of the basis
  cell that holds the point: 4 images, where an unreduced basis needs 9 or
  more."""
  to_reduced, basis = reduced_ac_basis(m)
  corners = torch.stack([torch.zeros_like(basis[:, 0]), basis[:, 0], basis[:, 1],
                         basis[:, 0] + basis[:, 1]], 1)                     # (B, 4, 3)
  d = first[:, :, None, :] - every[:, None, :, :]
  dy = (d[..., 1] - torch.round(d[..., 1])) * m[:, 1, 1][:, None, None]
  ac = torch.stack([d[..., 0], d[..., 2]], -1) @ to_reduced.transpose(1, 2)[:, None]
  ac = ac - torch.floor(ac)
  cart = ac[..., :1] * basis[:, None, None, 0] + ac[..., 1:] * basis[:, None, None, 1]
  d2 = (cart * cart).sum(-1)[..., None] - 2.0 * torch.einsum("bijx,btx->bijt", cart, corners) \
    + (corners * corners).sum(-1)[:, None, None, :]
  return d2.min(-1).values + dy * dy


def own_image_d2(first, m):
  """(B, n, n) squared distances from each atom of ``first`` (B, n, 3) to the
  nearest image of each other atom under a lattice translation other than
  zero, in the cells m (an atom and its own translate included): the 9 a-c
  translations around the nearest; along b the nearest, or where the a-c
  translation is zero, the nearest other than zero."""
  dev = first.device
  d = first[:, :, None, :] - first[:, None, :, :]
  r = torch.round(d)
  e = d - r
  edge_b = m[:, 1, 1][:, None, None]
  mt = m.transpose(1, 2)
  cart = torch.stack([e[..., 0], torch.zeros_like(e[..., 1]), e[..., 2]], -1) @ mt[:, None]
  ac = _AC.to(dev)
  t = ac @ mt                                                           # (B, 9, 3)
  d2 = (cart * cart).sum(-1)[..., None] + 2.0 * torch.einsum("bijx,btx->bijt", cart, t) \
    + (t * t).sum(-1)[:, None, None, :]
  # the whole a-c translation is t - r: zero where t = r
  ac_zero = (ac[:, 0] == r[..., None, 0]) & (ac[:, 2] == r[..., None, 2])   # (B, n, n, 9)
  near_b = (e[..., 1] * edge_b) ** 2
  other_b = ((1.0 - e[..., 1].abs()) * edge_b) ** 2
  along_b = torch.where((r[..., 1] == 0)[..., None] & ac_zero, other_b[..., None], near_b[..., None])
  return (d2 + along_b).min(-1).values


def draw_beta(b, beta_range, gen, device):
  """(B,) monoclinic angles as the CPU generator draws them: 15 % within a
  degree above 90 (or at the range's lower end), the rest uniform."""
  lo, hi = beta_range
  rand = lambda *shape: torch.rand(shape, generator=gen, device=device)  # noqa: E731
  near90 = rand(b) < 0.15
  return torch.where(near90, 90.0 + rand(b) if lo <= 90 else torch.full((b,), lo, device=device),
                     lo + (hi - lo) * rand(b))


def draw_edges(volume, beta, min_edge, max_edge, gen):
  """(edges (B, 3), fits (B,)): for cells of ``volume`` and ``beta``, the
  first of 32 random pairs of edges whose third edge (from the volume) lies
  within the limits too, in a random order of the axes; ``fits`` is False
  where none does."""
  b, dev = volume.shape[0], volume.device
  sin_b = torch.sin(torch.deg2rad(beta))
  ab = min_edge + (max_edge - min_edge) * torch.rand((b, 32), generator=gen, device=dev)
  ab2 = min_edge + (max_edge - min_edge) * torch.rand((b, 32), generator=gen, device=dev)
  c = volume[:, None] / (ab * ab2 * sin_b[:, None])
  fits = (c >= min_edge) & (c <= max_edge)
  first = torch.argmax(fits.float(), 1)
  rows = torch.arange(b, device=dev)
  edges = torch.stack([ab[rows, first], ab2[rows, first], c[rows, first]], 1)
  perm = _PERMS.to(dev)[torch.randint(0, 6, (b,), generator=gen, device=dev)]
  return torch.gather(edges, 1, perm), fits.any(1)


def _select(draw, idx):
  """The candidates ``idx`` of a dict of per-candidate tensors (and dicts of them)."""
  return {k: (v[idx] if torch.is_tensor(v) else {kk: vv[idx] for kk, vv in v.items()})
          for k, v in draw.items()}


def pad_structures(f, slot, mask, z, edges, beta, max_atoms):
  """Padded arrays of structures: frac (B, max_atoms, 3) in [0, 1), numbers
  int8 (0: padding), cell (B, 6), body (B, max_atoms; 4 x slot + copy, -1:
  padding), from the fractional coordinates f (B, 4, N, 3) of the four
  copies of N atoms, their slots (the body they belong to), mask and atomic
  numbers (B, N); each body's four copies together, as the CPU generator."""
  b, _, n, _ = f.shape
  dev = f.device
  f = f - torch.floor(f)
  f = torch.where(f >= 1.0, torch.zeros_like(f), f)
  body = slot[:, None, :] * 4 + torch.arange(4, device=dev)[None, :, None]       # (B, 4, N)
  # order: slot, copy, atom
  key = (body * n + torch.arange(n, device=dev)).reshape(b, 4 * n)
  key = torch.where(mask.repeat(1, 4), key, torch.full_like(key, 10 ** 9))
  order = torch.argsort(key, 1)[:, :max_atoms]
  valid = torch.gather(mask.repeat(1, 4), 1, order)
  frac = torch.gather(f.reshape(b, 4 * n, 3), 1, order[..., None].expand(-1, -1, 3)) * valid[..., None]
  numbers = torch.gather(z.repeat(1, 4), 1, order) * valid
  bodies = torch.where(valid, torch.gather(body.reshape(b, 4 * n), 1, order), -1)
  pad = max_atoms - frac.shape[1]
  if pad > 0:
    frac = torch.nn.functional.pad(frac, (0, 0, 0, pad))
    numbers = torch.nn.functional.pad(numbers, (0, pad))
    bodies = torch.nn.functional.pad(bodies, (0, pad), value=-1)
  cell = torch.stack([edges[:, 0], edges[:, 1], edges[:, 2], torch.full_like(beta, 90.0), beta,
                      torch.full_like(beta, 90.0)], 1)
  return {"frac": frac, "numbers": numbers.to(torch.int8), "cell": cell, "body": bodies}


class TorchStructureGenerator:
  """Batches of P2_1/c organic structures on ``device`` from a ConformerLibrary."""

  def __init__(self, library, device="cpu", max_atoms=400, max_asym=100, max_edge=10.0,
               min_edge=3.5, volume_per_atom=(18.0, 30.0), beta_range=(90.0, 120.0),
               z_prime_weights=(0.82, 0.14, 0.04), flat_sizes=0.5, repeat_fraction=0.3,
               aligned_fraction=0.75, tries=10, grows=12, squeeze_floor=14.0, squeeze_rounds=30,
               squeeze_step=0.985, chunk=None, heavy_first=None, pair_budget=None,
               random_atom_fraction=0.0):
    self.device = torch.device(device)
    dev = self.device
    self.max_atoms, self.max_asym = int(max_atoms), int(max_asym)
    self.max_edge, self.min_edge = float(max_edge), float(min_edge)
    self.volume_per_atom = volume_per_atom
    self.beta_range = beta_range
    w = torch.as_tensor(z_prime_weights, dtype=torch.float32)
    self.z_weights = (w / w.sum()).to(dev)
    self.flat_sizes, self.repeat_fraction = float(flat_sizes), float(repeat_fraction)
    self.aligned_fraction = float(aligned_fraction)
    self.tries, self.grows = int(tries), int(grows)
    self.squeeze_floor, self.squeeze_rounds = float(squeeze_floor), int(squeeze_rounds)
    self.squeeze_step = float(squeeze_step)
    # Candidates per contact test: as many as keep its table of pairs x
    # images within pair_budget elements (about 16 bytes each at the peak),
    # at most chunk; few large chunks on a GPU, where each test's launches
    # and waits cost more than its arithmetic.
    if pair_budget is None:
      pair_budget = 2 ** 28 if self.device.type == "cuda" else 2 ** 24
    self.pair_budget = int(pair_budget)
    self.chunk = int(chunk) if chunk else (16384 if self.device.type == "cuda" else 512)
    self.random_atom_fraction = float(random_atom_fraction)   # of each batch: random_atoms
    # Heavy atoms first pays on the CPU (42 against 13 structures/s on one
    # thread) and not on a GPU, where the second pass costs more than the
    # tests it saves (an H200: 555 against 669 structures/s,
    # benchmark_throughput); None picks by the device.
    if heavy_first is None:
      heavy_first = self.device.type == "cpu"
    self.heavy_first = bool(heavy_first)
    # the library, padded, on the device
    n_mol = len(library)
    sizes = np.diff(library.offsets)
    a_max = int(sizes.max())
    coords = np.zeros((n_mol, a_max, 3), np.float32)
    numbers = np.zeros((n_mol, a_max), np.int64)
    classes = np.zeros((n_mol, a_max), np.int64)
    frames = np.zeros((n_mol, 3, 3), np.float32)
    for i in range(n_mol):
      xyz, z, parents = library.molecule(i)
      rel = xyz.astype(np.float64) - xyz.astype(np.float64).mean(0)
      n = len(z)
      # Heavy atoms first: the first heavy_counts of a molecule are the
      # atoms of the heavy-atom pre-test (clashes()).
      first = np.argsort(z == 1, kind="stable")
      coords[i, :n] = rel[first]
      numbers[i, :n] = z[first]
      classes[i, :n] = _element_class(z, parents)[first]
      frames[i] = np.linalg.eigh(rel.T @ rel)[1]
    self.coords = torch.as_tensor(coords, device=dev)
    self.numbers = torch.as_tensor(numbers, device=dev)
    self.classes = torch.as_tensor(classes, device=dev)
    self.frames = torch.as_tensor(frames, device=dev)
    self.atoms = torch.as_tensor(sizes, device=dev)
    heavy = library.heavy_counts()
    self.heavy = torch.as_tensor(heavy, device=dev)
    self.metal = torch.as_tensor(np.isin(numbers, METAL_NUMBERS).any(1), device=dev)
    order = np.argsort(heavy, kind="stable")
    self.by_heavy = torch.as_tensor(order, device=dev)
    self.heavy_sorted = torch.as_tensor(heavy[order], device=dev)
    self.sizes_present = torch.as_tensor(np.unique(heavy), device=dev)
    self.a_max = a_max
    self.candidates = 0
    self.accepted = 0

  # ------------------------------------------------------------ drawing
  def _rand(self, *shape, gen):
    return torch.rand(shape, generator=gen, device=self.device)

  def _beta(self, b, gen):
    return draw_beta(b, self.beta_range, gen, self.device)

  def _pick(self, left, gen):
    """(B,) molecule indices with at most ``left`` heavy atoms (-1: none)."""
    b = left.shape[0]
    k = torch.searchsorted(self.heavy_sorted, left, right=True)
    idx = torch.floor(self._rand(b, gen=gen) * k).long().clamp(max=len(self.by_heavy) - 1)
    pick = self.by_heavy[idx]
    ks = torch.searchsorted(self.sizes_present, left, right=True)
    size = self.sizes_present[torch.floor(self._rand(b, gen=gen) * ks).long().clamp(
      min=0, max=len(self.sizes_present) - 1)]
    lo = torch.searchsorted(self.heavy_sorted, size, right=False)
    hi = torch.searchsorted(self.heavy_sorted, size, right=True)
    flat_idx = (lo + torch.floor(self._rand(b, gen=gen) * (hi - lo)).long()).clamp(max=len(self.by_heavy) - 1)
    flat = (self._rand(b, gen=gen) < self.flat_sizes) & (ks > 0)
    pick = torch.where(flat, self.by_heavy[flat_idx], pick)
    return torch.where(k > 0, pick, torch.full_like(pick, -1))

  def _orientations(self, mol, gen):
    """(B, S, 3, 3) rotations R (rel @ R) as structures.orient draws them."""
    shape = mol.shape
    n = mol.numel()
    dev = self.device
    q = torch.randn((n, 4), generator=gen, device=dev)
    uniform = _rotation_from_quaternion(q).transpose(-1, -2)
    frame = self.frames[mol.clamp(min=0).reshape(-1)]
    perm = _PERMS.to(dev)[torch.randint(0, 6, (n,), generator=gen, device=dev)]
    frame = torch.gather(frame, 2, perm[:, None, :].expand(n, 3, 3))
    signs = torch.where(self._rand(n, 3, gen=gen) < 0.5, -1.0, 1.0)
    frame = frame * signs[:, None, :]
    det = torch.linalg.det(frame)
    frame[:, :, 0] = frame[:, :, 0] * torch.sign(det)[:, None]
    angle = torch.deg2rad(torch.abs(torch.randn(n, generator=gen, device=dev) * 20.0))
    tilt = _axis_angle(torch.randn((n, 3), generator=gen, device=dev), angle)
    aligned = frame @ tilt.transpose(-1, -2)
    use = (self._rand(n, gen=gen) < self.aligned_fraction)[:, None, None]
    return torch.where(use, aligned, uniform).reshape(shape + (3, 3))

  def _draw(self, b, gen):
    """Molecules, orientations, cell and thresholds of b candidates."""
    dev = self.device
    beta = self._beta(b, gen)
    scale = 1.0 + 0.06 * self._rand(b, gen=gen)
    vol_max = self.max_edge ** 3 * torch.sin(torch.deg2rad(beta))
    budget = torch.floor(vol_max / (4 * self.volume_per_atom[0] * 1.1)).long()
    z_prime = 1 + torch.multinomial(self.z_weights, b, replacement=True, generator=gen)
    mol = torch.full((b, 3), -1, dtype=torch.long, device=dev)
    used = torch.zeros(b, dtype=torch.long, device=dev)
    for s in range(3):
      left = budget - used
      pick = self._pick(left, gen)
      if s > 0:
        prev = mol[:, s - 1]
        repeat = (prev >= 0) & (self._rand(b, gen=gen) < self.repeat_fraction) \
          & (self.heavy[prev.clamp(min=0)] <= left)
        pick = torch.where(repeat, prev, pick)
      active = (z_prime > s) & (left >= 1) & (pick >= 0)
      mol[:, s] = torch.where(active, pick, torch.full_like(pick, -1))
      used = used + torch.where(active, self.heavy[pick.clamp(min=0)], torch.zeros_like(used))
    present = mol >= 0
    atoms = torch.where(present, self.atoms[mol.clamp(min=0)], torch.zeros_like(mol)).sum(1)
    ok = present[:, 0] & (4 * atoms <= self.max_atoms) & (atoms <= self.max_asym)
    n_heavy = 4 * used
    lo, hi = self.volume_per_atom
    volume = n_heavy * (lo + 0.6 * (hi - lo) * self._rand(b, gen=gen))
    edges, fits = draw_edges(volume, beta, self.min_edge, self.max_edge, gen)
    ok = ok & fits
    return {"mol": mol, "beta": beta, "scale": scale, "edges": edges, "ok": ok,
            "n_heavy": n_heavy}

  # ------------------------------------------------------------ geometry
  def _compact(self, mol, heavy=False):
    """The atoms of each candidate's asymmetric unit, front-packed: slot and
    atom index (B, N) and a mask, N the largest count of the batch (with
    ``heavy``, the non-hydrogen atoms only)."""
    b, s = mol.shape
    dev = self.device
    table = self.heavy if heavy else self.atoms
    counts = torch.where(mol >= 0, table[mol.clamp(min=0)], torch.zeros_like(mol))
    ends = torch.cumsum(counts, 1)
    total = ends[:, -1]
    n = max(1, int(total.max()))
    j = torch.arange(n, device=dev).expand(b, n)
    slot = torch.searchsorted(ends, j.contiguous(), right=True).clamp(max=s - 1)
    starts = ends - counts
    atom = (j - torch.gather(starts, 1, slot)).clamp(min=0, max=self.a_max - 1)
    mask = j < total[:, None]
    return {"slot": slot, "atom": atom, "mask": mask, "total": total}

  def _atoms(self, mol, rot, centre, m, comp):
    """Fractional coordinates (B, 4, N, 3) of all copies of the compact atoms
    (not wrapped) for cells m."""
    b = mol.shape[0]
    rows = torch.arange(b, device=self.device)[:, None]
    slot, atom = comp["slot"], comp["atom"]
    molecule = mol[rows, slot].clamp(min=0)
    rel = (self.coords[molecule, atom][..., None, :] @ rot[rows, slot]).squeeze(-2)   # (B, N, 3)
    m_inv = torch.linalg.inv(m)
    f0 = centre[rows, slot] + rel @ m_inv.transpose(1, 2)
    ops_r, ops_t = OPS_ROT.to(self.device), OPS_TRANS.to(self.device)
    return ops_r[None, :, None, :] * f0[:, None] + ops_t[None, :, None, :]

  def compact_classes(self, mol, comp):
    rows = torch.arange(mol.shape[0], device=self.device)[:, None]
    molecule = mol[rows, comp["slot"]].clamp(min=0)
    return self.classes[molecule, comp["atom"]], self.numbers[molecule, comp["atom"]]

  def clashes(self, f, cls, slot, mask, m, thr2):
    """(B,) whether any contact between different bodies (or a body and its
    own lattice images) is shorter than its threshold.  f: (B, 4, N, 3)
    fractional coordinates of the symmetry copies (copy 0 = the asymmetric
    unit), cls/slot/mask (B, N), m the cells, thr2 (B, 6, 6) squared
    thresholds.  Copy 0 against everything covers every contact: the atoms
    of the cell are closed under the space group."""
    b, _, n, _ = f.shape
    dev = self.device
    first = f[:, 0]
    every = f.reshape(b, 4 * n, 3)
    c_every = cls.repeat(1, 4)
    m_every = mask.repeat(1, 4)
    body_first = slot * 4
    body_every = (slot[:, None, :] * 4 + torch.arange(4, device=dev)[None, :, None]).reshape(b, 4 * n)
    thr_flat = thr2.reshape(b, 36)
    d2 = nearest_image_d2(first, every, m)
    need = torch.gather(thr_flat, 1, (cls[:, :, None] * 6 + c_every[:, None, :]).reshape(b, -1)) \
      .reshape(b, n, 4 * n)
    bad = (d2 < need) & (body_first[:, :, None] != body_every[:, None, :]) \
      & mask[:, :, None] & m_every[:, None, :]
    clash = bad.flatten(1).any(1)
    d2 = own_image_d2(first, m)
    need = torch.gather(thr_flat, 1, (cls[:, :, None] * 6 + cls[:, None, :]).reshape(b, -1)) \
      .reshape(b, n, n)
    bad = (d2 < need) & (slot[:, :, None] == slot[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    return clash | bad.flatten(1).any(1)

  def _test_many(self, draw, rot, centre, edges, todo):
    """Clash flags of the candidates ``todo`` (indices).

    With ``heavy_first`` the non-hydrogen atoms are tested first, and only
    the candidates without a clash among them get the test of every atom:
    the flags are the same (a clash between heavy atoms is a clash), and
    most candidates of the rejection sampling clash already there, at about
    a third of the cost of a test with the hydrogens (half the atoms)."""
    if not self.heavy_first:
      return self._test_chunks(draw, rot, centre, edges, todo, draw["comp"], draw["cls"])
    bad = self._test_chunks(draw, rot, centre, edges, todo, draw["comp_heavy"], draw["cls_heavy"])
    rest = torch.nonzero(~bad).flatten()
    if len(rest):
      bad[rest] = self._test_chunks(draw, rot, centre, edges, todo[rest], draw["comp"], draw["cls"])
    return bad

  def _test_chunks(self, draw, rot, centre, edges, todo, comp, cls):
    """Clash flags of the candidates ``todo`` for the atoms of ``comp``, in
    chunks of similar size."""
    order = torch.argsort(comp["total"][todo])
    todo_sorted = todo[order]
    bad = torch.zeros(len(todo), dtype=torch.bool, device=self.device)
    for start, stop, n in self._chunks(comp["total"][todo_sorted].tolist()):
      sel = todo_sorted[start:stop]
      sub = {k: v[sel][:, :n] for k, v in comp.items() if k != "total"}
      m = orthogonalisation(edges[sel], draw["beta"][sel])
      f = self._atoms(draw["mol"][sel], rot[sel], centre[sel], m, sub)
      bad[order[start:stop]] = self.clashes(f, cls[sel][:, :n], sub["slot"], sub["mask"], m,
                                            draw["thr2"][sel])
    return bad

  def _chunks(self, counts):
    """(start, stop, atoms) of consecutive chunks of candidates with the
    ascending atom ``counts``: each at most ``chunk`` candidates and, where
    more than one, within ``pair_budget`` elements of the contact test's
    largest table (n x 4n atom pairs x 9 images, n the chunk's largest count)."""
    start, total = 0, len(counts)
    while start < total:
      stop = min(total, start + self.chunk)
      while stop - start > 1 and 36 * (stop - start) * max(1, counts[stop - 1]) ** 2 > self.pair_budget:
        stop = start + max(1, (stop - start) // 2)
      yield start, stop, max(1, counts[stop - 1])
      start = stop

  # ------------------------------------------------------------ the batch
  def _candidates(self, b, gen):
    """Accepted structures out of b candidates: dict of tensors."""
    dev = self.device
    draw = self._draw(b, gen)
    thr = torch.as_tensor(insertion_thresholds(contact_thresholds()), dtype=torch.float32,
                          device=dev)
    # insertion_thresholds is linear in the scale of contact_thresholds
    draw["thr2"] = (thr[None] * draw["scale"][:, None, None]) ** 2
    mol = draw["mol"]
    draw["comp"] = self._compact(mol)
    draw["cls"], draw["z"] = self.compact_classes(mol, draw["comp"])
    if self.heavy_first:
      draw["comp_heavy"] = self._compact(mol, heavy=True)
      draw["cls_heavy"], _ = self.compact_classes(mol, draw["comp_heavy"])
    s = mol.shape[1]
    rot = self._orientations(mol, gen)
    centre = self._rand(b, s, 3, gen=gen)
    edges = draw["edges"].clone()
    base = draw["edges"].clone()
    sin_b = torch.sin(torch.deg2rad(draw["beta"]))
    hi = self.volume_per_atom[1]
    placed = torch.zeros(b, dtype=torch.bool, device=dev)
    alive = draw["ok"].clone()
    for grow in range(self.grows):
      if grow:
        grown = torch.minimum(base * (1.0 + 0.04 * grow), torch.tensor(self.max_edge, device=dev))
        too_big = grown.prod(1) * sin_b > hi * draw["n_heavy"]
        stuck = torch.isclose(grown, edges).all(1)
        alive = alive & ~((too_big | stuck) & ~placed)
        edges = torch.where(placed[:, None], edges, grown)
      todo = torch.nonzero(alive & ~placed).flatten()
      if len(todo) == 0:
        break
      # all ``tries`` placements of a cell at once, the first clash-free one
      # kept: the same choice as trying them in turn (most cells need them
      # all), in one round of tests instead of ``tries``
      k, t = len(todo), self.tries
      rep = todo.repeat_interleave(t)
      tried = _select(draw, rep)
      rot_t = self._orientations(mol[rep], gen)
      centre_t = self._rand(k * t, s, 3, gen=gen)
      good = ~self._test_many(tried, rot_t, centre_t, edges[rep],
                              torch.arange(k * t, device=dev)).reshape(k, t)
      ok = good.any(1)
      pick = torch.arange(k, device=dev) * t + torch.argmax(good.to(torch.int8), 1)
      rot[todo] = torch.where(ok[:, None, None, None], rot_t[pick], rot[todo])
      centre[todo] = torch.where(ok[:, None, None], centre_t[pick], centre[todo])
      placed[todo] = ok
      if bool(ok.all()):
        break
    keep = torch.nonzero(placed & alive).flatten()
    self.candidates += b
    self.accepted += len(keep)
    if len(keep) == 0:
      return None
    edges = edges[keep]
    rot, centre = rot[keep], centre[keep]
    draw = _select(draw, keep)
    n_keep = len(keep)
    every = torch.arange(n_keep, device=dev)
    # squeeze: each edge in turn by squeeze_step while no contact is too short
    floor = self.squeeze_floor * draw["n_heavy"]
    sin_b = torch.sin(torch.deg2rad(draw["beta"]))
    active = torch.ones(n_keep, dtype=torch.bool, device=dev)
    for _ in range(self.squeeze_rounds):
      moved = torch.zeros(n_keep, dtype=torch.bool, device=dev)
      axes = torch.argsort(torch.rand((n_keep, 3), generator=gen, device=dev), 1)
      for k in range(3):
        axis = axes[:, k]
        trial = edges.clone()
        trial[every, axis] = trial[every, axis] * self.squeeze_step
        ok = active & (trial[every, axis] >= self.min_edge) & (trial.prod(1) * sin_b >= floor)
        todo = torch.nonzero(ok).flatten()
        if len(todo) == 0:
          continue
        bad = self._test_many(draw, rot, centre, trial, todo)
        good = todo[~bad]
        edges[good] = trial[good]
        moved[good] = True
      active = moved
      if not bool(active.any()):
        break
    m = orthogonalisation(edges, draw["beta"])
    comp = draw["comp"]
    f = self._atoms(draw["mol"], rot, centre, m, comp)
    return self._pad(f, comp, draw["z"], edges, draw["beta"])

  def _pad(self, f, comp, z, edges, beta):
    return pad_structures(f, comp["slot"], comp["mask"], z, edges, beta, self.max_atoms)

  def sample_batch(self, n, generator, candidates=None):
    """n structures (dict of tensors on the device: frac, numbers, cell, body);
    about ``random_atom_fraction`` of them cells of random atoms
    (random_atoms), the rest organic, in random order."""
    if self.random_atom_fraction <= 0:
      return self._organic_batch(n, generator, candidates)
    n_random = int((torch.rand(n, generator=generator, device=self.device)
                    < self.random_atom_fraction).sum())
    parts, got = [], 0
    if n_random:
      from phai_cctbx.training.random_atoms import random_atom_structures
      while got < n_random:
        out = random_atom_structures(max(8, 2 * (n_random - got)), generator, self.device,
                                     max_atoms=self.max_atoms, max_edge=self.max_edge,
                                     min_edge=self.min_edge, beta_range=self.beta_range)
        parts.append(out)
        got += out["cell"].shape[0]
      parts = [{k: torch.cat([p[k] for p in parts])[:n_random] for k in parts[0]}]
    if n > n_random:
      parts.append(self._organic_batch(n - n_random, generator, candidates))
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    order = torch.randperm(n, generator=generator, device=self.device)
    return {k: v[order] for k, v in out.items()}

  def _organic_batch(self, n, generator, candidates=None):
    parts, got = [], 0
    while got < n:
      rate = self.accepted / self.candidates if self.candidates else 0.5
      b = candidates or max(8, int(1.3 * (n - got) / max(rate, 0.05)))
      out = self._candidates(b, generator)
      if out is None:
        continue
      parts.append(out)
      got += out["cell"].shape[0]
    return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}
