"""The fixed set of reflections the network phases, and its symmetry in P 1 21/c 1.

PhAI phases a fixed list of 1205 reflections: every (h, k, l) with
-10 <= h <= 10, 0 <= k <= 10, 0 <= l <= 10, h^2 + k^2 + l^2 <= 100, except (0, 0, 0),
ordered h, then k, then l ascending.  The network sees them as voxels of a
21 x 11 x 11 grid at [h + 10, k, l].

Everything here is plain numpy so that training (which runs without cctbx) and
phasing share one definition.
"""
from __future__ import annotations

import functools

import numpy as np

MAX_INDEX = 10

# The eight origins of P 1 21/c 1 that keep the inversion centre at the origin.
ORIGIN_SHIFTS = np.array(
  [(x, y, z) for x in (0.0, 0.5) for y in (0.0, 0.5) for z in (0.0, 0.5)])


@functools.lru_cache(maxsize=None)
def _index_set(max_index: int) -> np.ndarray:
  m = max_index
  rows = [(h, k, l)
          for h in range(-m, m + 1)
          for k in range(0, m + 1)
          for l in range(0, m + 1)
          if h * h + k * k + l * l <= m * m and (h, k, l) != (0, 0, 0)]
  out = np.array(rows, dtype=np.int64)
  out.setflags(write=False)
  return out


def indices(max_index: int = MAX_INDEX) -> np.ndarray:
  """(n, 3) int array of the reflection set in the published order."""
  return _index_set(max_index)


def grid_shape(max_index: int = MAX_INDEX) -> tuple:
  return (2 * max_index + 1, max_index + 1, max_index + 1)


def grid_positions(max_index: int = MAX_INDEX) -> tuple:
  """Index arrays (ih, ik, il) placing the reflection list into the grid."""
  hkl = indices(max_index)
  return (hkl[:, 0] + max_index, hkl[:, 1], hkl[:, 2])


def to_grid(values: np.ndarray, max_index: int = MAX_INDEX) -> np.ndarray:
  """Scatter (..., n) values of the reflection list into a (..., 21, 11, 11) grid."""
  values = np.asarray(values)
  out = np.zeros(values.shape[:-1] + grid_shape(max_index), dtype=values.dtype)
  ih, ik, il = grid_positions(max_index)
  out[..., ih, ik, il] = values
  return out


@functools.lru_cache(maxsize=None)
def _lookup(max_index: int) -> dict:
  return {tuple(int(x) for x in row): i for i, row in enumerate(indices(max_index))}


def position_of(hkl) -> int:
  """Position of one (h, k, l) in the list, or -1 if it is not in the set."""
  return _lookup(MAX_INDEX).get(tuple(int(x) for x in hkl), -1)


def systematic_absences(max_index: int = MAX_INDEX) -> np.ndarray:
  """Boolean mask of the reflections absent in P 1 21/c 1 (h0l, l odd; 0k0, k odd)."""
  hkl = indices(max_index)
  h, k, l = hkl.T
  h0l = (k == 0) & (l % 2 == 1)
  _0k0 = (h == 0) & (l == 0) & (k % 2 == 1)
  return h0l | _0k0


@functools.lru_cache(maxsize=None)
def _mates(max_index: int) -> np.ndarray:
  hkl = indices(max_index)
  lookup = _lookup(max_index)
  mate = np.arange(len(hkl))
  for i, (h, k, l) in enumerate(hkl):
    if l == 0 and h < 0:
      mate[i] = lookup[(-h, k, 0)]
  mate.setflags(write=False)
  return mate


def unique_mate(max_index: int = MAX_INDEX) -> np.ndarray:
  """For each reflection, the position of the one it is equivalent to in 2/m.

  (h, k, 0) and (-h, k, 0) are equivalent in Laue class 2/m; the mate of a
  reflection with l == 0 and h < 0 is (-h, k, 0); every other reflection is its
  own mate.
  """
  return _mates(max_index)


def unique_mask(max_index: int = MAX_INDEX) -> np.ndarray:
  """Reflections that are neither duplicates (l = 0, h < 0) nor systematically absent."""
  return (unique_mate(max_index) == np.arange(len(indices(max_index)))) & ~systematic_absences(max_index)


def origin_sign_flips(max_index: int = MAX_INDEX) -> np.ndarray:
  """(8, n) array of +1/-1: the factor each origin shift applies to a centric phase sign.

  A shift T changes a phase by -2 pi h.T; with T made of 0 and 1/2 that is 0 or pi.
  """
  hkl = indices(max_index)
  parity = np.rint(2.0 * ORIGIN_SHIFTS @ hkl.T).astype(np.int64) % 2
  return np.where(parity == 1, -1.0, 1.0)


def sign_correlation(amplitudes, signs_a, signs_b, max_index: int = MAX_INDEX) -> float:
  """The paper's r for two sets of centric signs on the reflection list.

  r = max over the 8 origins of sum |F|^2 s_a s_b(T) / sum |F|^2.
  """
  w = np.asarray(amplitudes, dtype=float) ** 2
  denom = w.sum()
  if denom <= 0:
    return 0.0
  flips = origin_sign_flips(max_index)
  prod = np.asarray(signs_a, dtype=float) * np.asarray(signs_b, dtype=float)
  return float(((flips * prod) * w).sum(axis=1).max() / denom)


# The rotation parts of P 1 21/c 1 acting on indices, with the translation
# whose phase shift they carry: F(hR) = F(h) exp(-2 pi i h.t).
_P21C_INDEX_OPS = (
  (np.diag([1, 1, 1]), np.array([0.0, 0.0, 0.0])),
  (np.diag([-1, 1, -1]), np.array([0.0, 0.5, 0.5])),
  (np.diag([-1, -1, -1]), np.array([0.0, 0.0, 0.0])),
  (np.diag([1, -1, 1]), np.array([0.0, 0.5, 0.5])),
)


@functools.lru_cache(maxsize=None)
def _p1_expansion(max_index: int):
  hkl = indices(max_index)
  seen = {}
  for i, h in enumerate(hkl):
    for r, t in _P21C_INDEX_OPS:
      for friedel in (1, -1):
        hr = tuple(int(x) for x in friedel * (h @ r))
        if hr in seen:
          continue
        shift = int(round(2.0 * float(h @ t))) % 2
        seen[hr] = (i, -1.0 if shift else 1.0)
  keys = np.array(list(seen.keys()), dtype=np.int64)
  src = np.array([v[0] for v in seen.values()], dtype=np.int64)
  fac = np.array([v[1] for v in seen.values()])
  for a in (keys, src, fac):
    a.setflags(write=False)
  return keys, src, fac


def p1_expansion(max_index: int = MAX_INDEX):
  """The reflection list expanded by the symmetry of P 1 21/c 1 and Friedel's law.

  Returns (hkl (M, 3), source (M,), factor (M,)): the sign of reflection
  hkl[j] is factor[j] times the sign of list reflection source[j].
  """
  return _p1_expansion(max_index)


def density_map(amplitudes, signs, grid=(24, 24, 24), max_index: int = MAX_INDEX) -> np.ndarray:
  """Electron density (up to scale) over the unit cell in fractional coordinates.

  amplitudes and signs are (..., n) on the list; the map is (..., *grid).
  """
  hkl, src, fac = p1_expansion(max_index)
  amplitudes = np.asarray(amplitudes, dtype=float)
  signs = np.asarray(signs, dtype=float)
  coeffs = amplitudes[..., src] * signs[..., src] * fac
  lead = coeffs.shape[:-1]
  spectrum = np.zeros(lead + tuple(grid), dtype=complex)
  idx = tuple(hkl[:, i] % grid[i] for i in range(3))
  spectrum[(Ellipsis,) + idx] = coeffs
  return np.fft.fftn(spectrum, axes=(-3, -2, -1)).real


def skewness(rho: np.ndarray) -> np.ndarray:
  """Skewness of each map of (..., n1, n2, n3) maps (atomic maps are strongly
  skewed; charge flipping and the figures of merit use it)."""
  x = rho.reshape(rho.shape[:-3] + (-1,))
  x = x - x.mean(-1, keepdims=True)
  var = (x ** 2).mean(-1)
  return (x ** 3).mean(-1) / np.maximum(var, 1e-30) ** 1.5
