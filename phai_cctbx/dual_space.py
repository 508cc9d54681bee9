"""Dual-space phasing: charge flipping in P 1 from many starts, in one batch.

The engine works on all measured reflections of the data, whatever the
network's reflection list covers:

* :class:`P1Problem` expands the merged amplitudes to P 1, quasi-normalises
  them (E values) and lays them on a real-space grid; maps and structure
  factors of a whole batch of starts come from one numpy FFT each way;
* :func:`flip` runs charge flipping (Oszlanyi & Suto 2004) with the
  weak-reflection improvement (Oszlanyi & Suto 2005: the weakest 20 % keep
  |G| and get their phase shifted by pi/2), the threshold delta a multiple of
  each map's sigma, from any starting phases (random, the network's, a partial
  solution); a start stops when its R1(|E|, |G|) has not improved for
  ``patience`` cycles.  Then a few cycles on F rather than E and 200 of
  low-density elimination (Shiono & Woolfson 1992,
  :func:`low_density_elimination`) polish the map;
* :func:`symmetrise` brings a P 1 solution back to the data's space group:
  the origin from smtbx's correlation-map search (``f_calc_symmetrisations``,
  which also averages the symmetry equivalents), then the phases of centric
  reflections snapped to their allowed values.

:func:`run` does all three for a set of starts and returns one
:class:`DualSpaceCandidate` per start, phases in the data's group and
setting for every measured reflection.
"""
from __future__ import absolute_import, division, print_function

import dataclasses
import itertools
import math
import time

import numpy as np

from cctbx import maptbx, miller, sgtbx
from cctbx.array_family import flex

from phai_cctbx import reflection_set


#: Free reflections (unmeasured, left to take the values that flipping gives
#: them: "free lunch", Caliandro et al., Acta Cryst. A61, 556-565, 2005)
#: reach no further than this resolution (A).  On the development structures
#: they let more random starts reach the solution at 1.6 and 2.0 A; at
#: atomic resolution they only cost time.
EXTEND_LIMIT = 1.0


#: Low-density elimination cycles of :func:`held_out_cc` (see there for what
#: 3-100 cycles gave).
HELD_OUT_CYCLES = 5

#: Disjoint sets of :func:`held_out_cc` (each held out in turn).
HELD_OUT_FOLDS = 20

#: Iterations of :func:`omit_refinement`.
OMIT_ITERATIONS = 10

#: :func:`sign_combination_starts` run only for data whose d_min is above this
#: (A): at atomic resolution random starts reach the solution (all 41
#: development structures at 1.0 A), and there the 512 more starts only cost
#: time and, once, the solution (Bridgmanite, r 0.91 chosen over the right
#: answer of later random starts).
SIGN_COMBINATIONS_D_MIN = 1.2

#: At atomic resolution (d_min at most :data:`SIGN_COMBINATIONS_D_MIN`) the
#: flipping cycles and the patience of every start of the search are this
#: many times the settings' (:func:`at_atomic_resolution`).
ATOMIC_RESOLUTION_FACTOR = 5


@dataclasses.dataclass
class Settings:
  """Parameters of the dual-space search (PHIL ``phasing.dual_space``)."""
  cycles: int = 200              # flipping cycles per start at most
  min_cycles: int = 30           # before a start may stop
  patience: int = 30             # cycles without a better R1 before a start stops
  delta: float = 1.1             # flipping threshold, in sigma of the map
  weak_fraction: float = 0.2     # weakest reflections whose phase is shifted
  f_cycles: int = 5              # flipping cycles on F after those on E
  polish_cycles: int = 200       # low-density elimination cycles at most
  polish_tolerance: float = 0.001  # ... until the phases move less than this (rad)
  resolution_factor: float = 0.5  # grid spacing / d_min
  extend: float = 0.5            # free reflections to d_min / (1 + extend), not
                                 # beyond EXTEND_LIMIT; 0: none
  held_out_cycles: int = HELD_OUT_CYCLES  # low-density elimination cycles of held_out_cc
  snapshots: tuple = ()          # flipping cycles after which each start's map is
                                 # also polished and returned (see flip)
  pseudo_translation: tuple = None  # the data's (pseudo_translation): its two
                                    # origins compete (see symmetrise); None: none

  # Measured at 2.0 A, dual-space phasing alone, 64 random starts (seed 0), 41
  # development structures, calculated data (``python
  # regression/benchmark_solution_choice.py --structures DIR ... --d-min 2.0
  # --seeds 1`` with the option named): these defaults solved 18 and gave a
  # right candidate for 25; --cycles 1000 --patience 200: 16 and 20;
  # --delta 0.9: 17 and 24; --more-starts 112 (128 starts): 17 and 26, the
  # extra wrong candidates outranking right ones in the choice.


def at_atomic_resolution(settings):
  """``settings`` for the starts of a search at atomic resolution:
  :data:`ATOMIC_RESOLUTION_FACTOR` times the flipping cycles and the
  patience.

  Why: charge flipping in a larger cell wanders longer before it finds the
  structure, and a start that stops early ends nowhere.  MaterSim UHAWAD
  at 1.0 A (50 atoms in the asymmetric unit, 3208 reflections): with the
  patience of 30 cycles 1 start in 6 reached the solution and no candidate
  was called solved ("partial" after every stage, 44 s); with 150 (and up
  to 1000 cycles) 9 of the first 16 starts did, "solved" in 30 s.  Given
  only to the starts after the first 16 it ended "probably solved" in 62 s
  (the first starts' disagreement counts against the call).  The cost:
  converged starts run 150 cycles past their last gain, not 30; the
  median time of the other 35 cells of ``p21c_large`` at 1.0 A rose from
  2.5 to 4.5 s.  Below atomic resolution more patience did not help (the
  measurement beside :class:`Settings`)."""
  return dataclasses.replace(settings, cycles=settings.cycles * ATOMIC_RESOLUTION_FACTOR,
                             patience=settings.patience * ATOMIC_RESOLUTION_FACTOR)


def quasi_normalise(f_obs, reflections_per_bin=100):
  """|E| of amplitudes: F^2 / (epsilon <F^2/epsilon>) in shells of equal count.

  The shell means are interpolated linearly in d*^2 between shell centres
  (flat beyond the first and last), so that no reflection sits on a step.
  Returns a numpy array in the order of ``f_obs``.
  """
  f = f_obs.data().as_numpy_array().astype(float)
  eps = f_obs.epsilons().data().as_numpy_array().astype(float)
  s2 = f_obs.d_star_sq().data().as_numpy_array()
  n = len(f)
  if n == 0:
    return f
  order = np.argsort(s2)
  n_bins = max(1, min(20, n // max(1, reflections_per_bin)))
  centres, means = [], []
  for chunk in np.array_split(order, n_bins):
    centres.append(s2[chunk].mean())
    means.append(max((f[chunk] ** 2 / eps[chunk]).mean(), 1e-30))
  mean_at = np.interp(s2, centres, means)
  return np.sqrt(f ** 2 / (eps * np.maximum(mean_at, 1e-30)))


class P1Problem(object):
  """Merged amplitudes expanded to P 1 and laid on an FFT grid.

  Attributes:
    f_obs: the merged amplitudes (data's group and setting).
    p1: the P 1 miller set (one of each Friedel pair).
    f, e: (m,) amplitudes and quasi-normalised amplitudes in P 1.
    n_real: grid size.
    weak: (m,) bool, the reflections whose phases the weak-reflection
      improvement shifts.
    grid_points: grid points transformed so far by :meth:`density` and
      :meth:`structure_factors` (each map of a batch counted): the measure
      of the work done on this problem, the same on every machine and
      under any load (:func:`phai_cctbx.search.work_seconds`).
  """

  def __init__(self, f_obs, resolution_factor=0.5, weak_fraction=0.2,
               extend=0.5):
    self.f_obs = f_obs
    e_sym = f_obs.customized_copy(data=flex.double(quasi_normalise(f_obs)))
    p1_e = e_sym.expand_to_p1()
    p1_f = f_obs.expand_to_p1()
    assert p1_e.indices().all_eq(p1_f.indices())
    self.p1_set = miller.set(p1_f.crystal_symmetry(), p1_f.indices(),
                             anomalous_flag=False)
    self.f = p1_f.data().as_numpy_array().astype(float)
    self.e = p1_e.data().as_numpy_array().astype(float)
    d_grid = f_obs.d_min()
    free = flex.miller_index()
    if extend > 0 and f_obs.d_min() > EXTEND_LIMIT:
      d_grid = max(f_obs.d_min() / (1.0 + extend), EXTEND_LIMIT)
      full = miller.build_set(p1_f.crystal_symmetry(), anomalous_flag=False,
                              d_min=d_grid)
      free = full.lone_set(self.p1_set).indices()
    self.n_free = free.size()
    all_indices = p1_f.indices().deep_copy()
    all_indices.extend(free)
    gridding = maptbx.crystal_gridding(
      unit_cell=f_obs.unit_cell(), d_min=d_grid,
      resolution_factor=resolution_factor,
      space_group_info=sgtbx.space_group_info("P 1"), max_prime=5)
    n_real = list(gridding.n_real())
    hkl = np.array(all_indices, dtype=int).reshape(-1, 3)
    for axis in range(3):
      # Room for every index and its Friedel mate.
      while n_real[axis] < 2 * np.abs(hkl[:, axis]).max() + 1:
        n_real[axis] += 1
    self.n_real = tuple(n_real)
    self.hkl = hkl
    # Each reflection is stored at h (l >= 0) or at -h with its conjugate;
    # on the l = 0 plane both h and -h are set.
    flip = hkl[:, 2] < 0
    rep = np.where(flip[:, None], -hkl, hkl)
    self._conj = flip
    n1, n2, _ = self.n_real
    self._pos = (rep[:, 0] % n1, rep[:, 1] % n2, rep[:, 2])
    zero = rep[:, 2] == 0
    self._zero = np.nonzero(zero)[0]
    self._pos_mate = ((-rep[zero, 0]) % n1, (-rep[zero, 1]) % n2,
                      np.zeros(int(zero.sum()), dtype=int))
    order = np.argsort(self.e)
    self.weak = np.zeros(len(self.e), dtype=bool)
    self.weak[order[: int(weak_fraction * len(self.e))]] = True
    self.grid_points = 0

  @property
  def size(self):
    """Measured reflections (P 1)."""
    return len(self.f)

  def density(self, coefficients, f000=None):
    """(B, n1, n2, n3) maps of (B, m + n_free) complex coefficients (and F000)."""
    coefficients = np.atleast_2d(coefficients)
    b = coefficients.shape[0]
    n1, n2, n3 = self.n_real
    grid = np.zeros((b, n1, n2, n3 // 2 + 1), dtype=complex)
    c = np.where(self._conj, np.conj(coefficients), coefficients)
    grid[(slice(None),) + self._pos] = c
    if len(self._zero):
      grid[(slice(None),) + self._pos_mate] = np.conj(c[:, self._zero])
    if f000 is not None:
      grid[:, 0, 0, 0] = f000
    self.grid_points += b * n1 * n2 * n3
    return np.fft.irfftn(grid, s=self.n_real, axes=(1, 2, 3)) * (n1 * n2 * n3)

  def structure_factors(self, rho):
    """(B, m + n_free) coefficients and (B,) F000 of (B, n1, n2, n3) maps."""
    n1, n2, n3 = self.n_real
    self.grid_points += rho.size
    grid = np.fft.rfftn(rho, axes=(1, 2, 3)) / (n1 * n2 * n3)
    g = grid[(slice(None),) + self._pos]
    g = np.where(self._conj, np.conj(g), g)
    return g, grid[:, 0, 0, 0].real

  def with_measured_amplitudes(self, g):
    """(B, m + n_free) coefficients: |F_obs| with the phases of ``g`` for
    the measured reflections, ``g`` itself for the free ones."""
    m = self.size
    return np.concatenate([self.f[None, :] * np.exp(1j * np.angle(g[:, :m])), g[:, m:]], 1)

  def random_phases(self, n, rng):
    """(n, m) random phases (radians)."""
    return rng.uniform(0.0, 2 * math.pi, size=(n, self.size))

  def phases_from(self, phases_deg):
    """P 1 phases (radians, (m,)) of a phase array of the data's group.

    Reflections the array does not give get NaN (their start is random)."""
    return np.radians(self.values_from(phases_deg.expand_to_p1(phase_deg=True),
                                       mate=lambda phi: -phi, missing=np.nan))

  def values_from(self, p1_array, mate=lambda v: v, missing=0.0):
    """(m,) the values of a P 1 miller array on this problem's reflections:
    a reflection given as its Friedel mate takes ``mate(value)``, one not
    given takes ``missing``."""
    lookup = {}
    for h, v in zip(p1_array.indices(), p1_array.data()):
      lookup[h] = v
      lookup[(-h[0], -h[1], -h[2])] = mate(v)
    return np.array([lookup.get(h, missing) for h in self.p1_set.indices()], dtype=float)


def sign_combination_starts(problem, n_signs):
  """Starts from every combination of signs of the strongest reflections
  (the multisolution method of direct methods, MULTAN's idea), for
  centrosymmetric groups.

  The origin is fixed first: of the strongest centric reflections, those
  whose parities under the group's structure seminvariants
  (``sgtbx.structure_seminvariants``) are independent take their first
  allowed phase, one per seminvariant vector of modulus 2.  The next
  ``n_signs`` strongest centric reflections take every combination of
  their two allowed phases; all other reflections start with no phase (they
  enter the first map with no weight, as in :func:`flip`).

  Random starts at 1.6-2.0 A often all fall into a few wrong basins; a
  start from a few strong right signs lies in the right one.  Measured in
  phai.solve's search (dual-space alone, the verdict's early stop; the 41
  development structures, calculated data; ``python
  regression/benchmark_solution_choice.py --structures DIR DIR --d-min D
  --seeds 1 --first-seed S --sign-combinations 8``), 8 signs (512 more
  starts: each combination refined by low-density elimination alone and by
  charge flipping) solved 32 and 32 at 1.6 A (random seeds 0 and 1) where
  the search without them solved 30 and 28, and 21 and 22 at 2.0 A where it
  solved 21 and 18; the structures with a right candidate went from 25 to
  29 at 2.0 A.  Refinement alone (without the flipped runs) gave the same
  21 at 2.0 A (seed 0); 6 signs gave 20.

  Returns (2**n_signs, m) P 1 phases (radians, NaN: none), or an empty
  (0, m) array when the data have too few centric reflections.
  """
  f_obs = problem.f_obs
  sg = f_obs.space_group()
  vectors = [v.v for v in sgtbx.structure_seminvariants(sg).vectors_and_moduli()
             if v.m == 2]
  e = quasi_normalise(f_obs)
  indices = f_obs.indices()
  fixed, chosen, basis = [], [], []
  for i in np.argsort(-e, kind="stable"):
    h = indices[int(i)]
    restriction = sg.phase_restriction(h)
    if not restriction.is_centric() or e[i] <= 0:
      continue
    parity = np.array([sum(a * b for a, b in zip(h, v)) % 2 for v in vectors], dtype=int)
    if len(fixed) < len(vectors) and parity.any() and not _in_span(parity, basis):
      basis.append(parity)
      fixed.append((int(i), math.degrees(restriction.ht_angle())))
    elif len(chosen) < n_signs:
      chosen.append((int(i), math.degrees(restriction.ht_angle())))
    if len(chosen) == n_signs and len(fixed) == len(vectors):
      break
  if len(chosen) < n_signs:
    return np.zeros((0, problem.size))

  def p1_phases_of(i, phase):
    data = flex.double(f_obs.size(), float("nan"))
    data[i] = phase
    return problem.phases_from(f_obs.customized_copy(data=data, sigmas=None))

  base = np.full(problem.size, np.nan)
  for i, phase in fixed:
    p1 = p1_phases_of(i, phase)
    base = np.where(np.isnan(p1), base, p1)
  bits = (np.arange(2 ** n_signs)[:, None] >> np.arange(n_signs)[None, :]) & 1
  starts = np.repeat(base[None, :], len(bits), 0)
  for j, (i, phase) in enumerate(chosen):
    p1 = p1_phases_of(i, phase)
    on = ~np.isnan(p1)
    starts[:, on] = p1[None, on] + math.pi * bits[:, j:j + 1]
  return starts


def _in_span(v, basis):
  """Whether the 0/1 vector ``v`` is a sum (mod 2) of vectors of ``basis``."""
  for bits in range(1 << len(basis)):
    total = np.zeros_like(v)
    for j, b in enumerate(basis):
      if bits >> j & 1:
        total = (total + b) % 2
    if (total == v).all():
      return True
  return False


def r1_factor(obs, calc):
  """(B,) R1 of observed ((m,) or (B, m)) against (B, m) calculated
  amplitudes, after the least-squares scale."""
  k = (obs * calc).sum(1) / np.maximum((calc * calc).sum(1), 1e-30)
  return np.abs(obs - k[:, None] * calc).sum(1) / np.maximum(obs.sum(-1), 1e-30)


def flip_charges(rho, delta):
  """(B, n1, n2, n3) maps with the density below ``delta`` sigma of each map
  flipped in sign (charge flipping's real-space step)."""
  sigma = rho.reshape(rho.shape[0], -1).std(1)[:, None, None, None]
  return np.where(rho < delta * sigma, -rho, rho)


def low_density_elimination(problem, coefficients, cycles, tolerance=0.0, held_out=None):
  """Low-density elimination (Shiono & Woolfson 1992) on F, batched.

  Each cycle keeps the positive density, damped where it is low
  (rho (1 - exp(-rho^2 / 2 rho_c^2)), rho_c a fifth of the mean positive
  density), and gives the measured reflections the new phases with |F_obs|;
  free reflections take the new values.  A start stops once its phases
  move less than ``tolerance`` (radians, |F|^2-weighted mean change) in a
  cycle.

  Many cycles pay: on the 19 P2_1/c development structures (16 random starts
  each, calculated data; ``python regression/benchmark_dual_space_starts.py
  --structures DIR --d-min D [--polish-cycles 5 --polish-tolerance 0]``
  prints these figures) 200 cycles instead of 5 raised the starts ending at
  r > 0.95 from 97 to 122 at 1.6 A, from 52 to 78 at 2.0 A and from 267 to
  281 at 1.0 A, and the structures with at least one such start from 8 to 11
  at 1.6 A and 6 to 7 at 2.0 A; 500 cycles gained nothing more.  Stopping a
  start once R1(|F_obs|, |G|) stops improving loses most of the gain (the
  phases go on improving at a constant R1); stopping once the phases move
  less than 0.001 rad per cycle keeps it (120 and 77 starts) and halves the
  time on the shipped 0.5 A example.  Other real-space steps tried in its
  place (truncation at 1-2 sigma, squaring) did worse.

  Args:
    coefficients: (B, m + n_free) complex, measured reflections with |F_obs|.
    held_out: (m,) bool, measured reflections treated as free (their |F_obs|
      not imposed: :func:`held_out_cc`).
  Returns the (B, m + n_free) coefficients after the cycles.
  """
  coefficients = np.array(coefficients)
  m = problem.size
  f = problem.f
  w = f * f / max(float((f * f).sum()), 1e-30)
  active = np.arange(coefficients.shape[0])
  for _ in range(cycles):
    if not len(active):
      break
    rho = problem.density(coefficients[active])
    positive = np.where(rho > 0, rho, 0.0).reshape(rho.shape[0], -1)
    rho_c = 0.2 * positive.sum(1) / np.maximum((positive > 0).sum(1), 1)
    rc = np.maximum(rho_c, 1e-30)[:, None, None, None]
    rho = np.where(rho > 0, rho * (1.0 - np.exp(-0.5 * (rho / rc) ** 2)), 0.0)
    g, _ = problem.structure_factors(rho)
    new = problem.with_measured_amplitudes(g)
    if held_out is not None:
      new[:, :m][:, held_out] = g[:, :m][:, held_out]
    change = (w[None, :] * np.abs(np.angle(new[:, :m] * np.conj(coefficients[active, :m])))).sum(1)
    coefficients[active] = new
    active = active[change > tolerance]
  return coefficients


def held_out_cc(problem, p1_phases, folds=HELD_OUT_FOLDS, min_held_out=600,
                cycles=HELD_OUT_CYCLES,
                seed=0):
  """How well phases predict amplitudes they were not given: a free figure
  of merit of dual-space phasing, (B,) values from -1 to 1.

  The measured reflections (P 1) are split at random (fixed by ``seed``)
  into ``folds`` disjoint sets.  For one set at a time the map starts from
  |F_obs| with the given phases of the other reflections only, and
  ``cycles`` of :func:`low_density_elimination` impose |F_obs| on those
  while the held-out ones (and the free ones) take what the map gives them.
  The value is the correlation of the held-out |G| with their |F_obs|, over
  all the sets taken together; sets are taken until at least
  ``min_held_out`` reflections have been held out (all of them for small
  problems, a few sets of a twentieth at atomic resolution).  Right phases make a
  map whose atoms predict the missing amplitudes; a wrong map that flipping
  or low-density elimination made just as positive and peaky predicts them
  poorly.

  Every reflection counts at low resolution, where a data set has only 50-80
  of them in P 1 (41 development structures at 2.0 A): the mean over three
  sets of a tenth that came before scored 5-7 reflections per set and gave
  no value at all below 30 reflections; among phai.solve's candidates its
  best was right in 25 and 16 cases at 1.6 and 2.0 A, the pooled value over
  ten sets in 26 and 16 (17 with 60 cycles, at twice the time).  With the
  mean over three sets, among the development cases with right and wrong
  candidates, the best value was right in 27 of 33 at 1.6 and 2.0 A, the
  best figure of merit without it in 19.

  Few cycles choose better than many.  On the candidates of phai.solve's
  full search (method auto, random seed 0, every stage, no early stop; the
  41 development structures, calculated data), the best value picked a right
  candidate in 16 / 31 cases at 2.0 / 1.6 A with 30 cycles, 18 / 32 with
  10, 20 / 32 with 5, 19 / 31 with 3, 16 / 31 with 20 and 15 / 26 with 100;
  with another split of the folds (seed 1), 10 cycles gave 19 / 32 and 5
  gave 18 / 32.  Through phai.solve's own search (early stop included;
  ``python regression/benchmark_solution_choice.py --structures DIR ...
  --d-min D --seeds N --method auto --held-out-cycles C``), 5 cycles solved
  20 and 16 at 2.0 A (random seeds 0 and 1) where 30 solved 17 and 14; 32
  and 29 at 1.6 A where 30 solved 31 and 28; 39 of 41 at 1.0 A (seed 0),
  as did 30; one wrong "solved" call in each run with 5 cycles.  Hence the
  default of 5 (:data:`HELD_OUT_CYCLES`); the weights of
  :mod:`phai_cctbx.search`'s figure of merit were fitted with 30 and not
  refitted.  The mean over five splits, |F|^2 in place of |F|, E in place
  of F, flipping in place of low-density elimination and no free
  reflections did no better than 30 cycles.

  Twenty sets rather than ten (:data:`HELD_OUT_FOLDS`): each map keeps 95 %
  of its phases instead of 90 %, which counts where a data set has 45-60
  reflections in P 1.  On the saved candidates of auto's full search (every
  stage, no early stop; 41 development structures, calculated data, 5
  cycles, every set taken), the best value was right in 20 / 32 cases at
  2.0 / 1.6 A with 10 sets, 21 / 32 with 20, 20 / 32 with 15 and 19 / 32
  with 30 or with one reflection per set (random seed 0); with random seed
  1, 16 / 30 with 10, 17 / 30 with 15 or 20, 16 / 30 with 30.

  Args:
    p1_phases: (B, m) radians, NaN where a candidate gives no phase (such
      reflections start with no weight, as in :func:`flip`).
  Returns zeros when there are fewer than 6 reflections.
  """
  p1_phases = np.atleast_2d(p1_phases)
  predicted, used = _held_out_predictions(problem, p1_phases, folds, min_held_out, cycles, seed)
  if used is None:
    return np.zeros(p1_phases.shape[0])
  g = np.abs(predicted[:, used])
  g = g - g.mean(1, keepdims=True)
  f = problem.f[used] - problem.f[used].mean()
  return (g * f[None, :]).sum(1) / np.maximum(np.sqrt((g * g).sum(1) * (f * f).sum()), 1e-30)


def _held_out_predictions(problem, p1_phases, folds, min_held_out, cycles, seed):
  """The held-out structure factors of :func:`held_out_cc`: (B, m) complex
  (zero for reflections never held out) and the (m,) bool mask of those held
  out, or (None, None) for fewer than 6 reflections.  ``min_held_out=None``
  holds out every reflection once."""
  b, m = p1_phases.shape[0], problem.size
  folds = min(folds, m // 3)
  if folds < 2:
    return None, None
  known = ~np.isnan(p1_phases)
  order = np.random.default_rng(seed).permutation(m)
  predicted = np.zeros((b, m), complex)
  used = np.zeros(m, dtype=bool)
  for k in range(folds):
    if min_held_out is not None and used.sum() >= min_held_out:
      break
    test = np.zeros(m, dtype=bool)
    test[order[k::folds]] = True
    coefficients = np.zeros((b, m + problem.n_free), complex)
    coefficients[:, :m] = np.where(known & ~test[None, :], problem.f[None, :], 0.0) \
      * np.exp(1j * np.where(known, p1_phases, 0.0))
    out = low_density_elimination(problem, coefficients, cycles, held_out=test)
    predicted[:, test] = out[:, :m][:, test]
    used |= test
  return predicted, used


def omit_refinement(problem, p1_phases, iterations=OMIT_ITERATIONS, folds=HELD_OUT_FOLDS,
                    cycles=HELD_OUT_CYCLES, seed=0):
  """Phases refined by omit maps: (B, m) complex coefficients, |F_obs| with
  the new phases.

  Each iteration gives every reflection the phase that the map of all the
  others predicts for it: the measured reflections are split into
  ``folds`` sets as in :func:`held_out_cc` (the same sets for the same
  ``seed``), and for each set ``cycles`` of low-density elimination on the
  others (their |F_obs| imposed) predict the set's structure factors.  Unlike
  low-density elimination or flipping, no reflection's phase feeds back
  into its own estimate, so a near-solution whose wrong strong signs hold
  each other in place, a fixed point of both, can still move.

  From the true phases it keeps r > 0.95 for 35 and 17 of the 41
  development structures at 1.6 and 2.0 A (calculated data), between
  flipping (20, 13) and low-density elimination alone (40, 38): with 30-70
  reflections in P 1 at 2.0 A an omit map is poor.  What it adds is reach:
  in phai.solve's search at 1.6 A it took the best candidates of Scorzalite
  and Celadonite (r 0.93, fixed points of flipping and of low-density
  elimination) to r 0.96 (:func:`phai_cctbx.search._omit_candidates`).
  ``python regression/benchmark_dual_space_starts.py --structures DIR ...
  --d-min D --starts 0 --from-truth`` prints the figures from the truth.

  Args:
    p1_phases: (B, m) radians, NaN where a candidate gives no phase (no
      weight in the first maps).
  """
  p1_phases = np.array(np.atleast_2d(p1_phases), dtype=float)
  for _ in range(iterations):
    predicted, used = _held_out_predictions(problem, p1_phases, folds, None, cycles, seed)
    if used is None:
      break
    p1_phases = np.where(used[None, :], np.angle(predicted), p1_phases)
  p1_phases = np.where(np.isnan(p1_phases), 0.0, p1_phases)
  return problem.f[None, :] * np.exp(1j * p1_phases)


@dataclasses.dataclass
class FlipResult:
  """Charge flipping of a batch of starts, in P 1."""
  coefficients: np.ndarray   # (B, m) final complex F (|F_obs| with the found phases)
  r1: np.ndarray             # (B,) R1(|E|, |G|) at the end of flipping on E; without
                             # flipping cycles, R1(|F|, |G|) of one flip of the final map
  skewness: np.ndarray       # (B,) skewness of the final map
  cycles_run: np.ndarray     # (B,) flipping cycles on E
  seconds: float
  snapshots: list = dataclasses.field(default_factory=list)
                             # (cycles, FlipResult) of each of settings.snapshots


def flip(problem, start_phases, settings=None):
  """Charge flipping from (B, m) starting phases (radians; NaN: none yet).

  Returns a :class:`FlipResult`; the final coefficients carry |F_obs| (not
  |E|) with the phases of the polished map."""
  s = settings or Settings()
  t0 = time.time()
  start = np.atleast_2d(np.array(start_phases, dtype=float))
  b = start.shape[0]
  # Reflections without a starting phase (beyond a seed's reach) enter the
  # first map with no weight: the seed's map alone starts the search, and
  # flipping gives them their first phases.
  missing = np.isnan(start)
  start[missing] = 0.0
  e = problem.e
  strong = ~problem.weak
  m = problem.size
  nf = problem.n_free
  coefficients = np.zeros((b, m + nf), dtype=complex)
  coefficients[:, :m] = np.where(missing, 0.0, e[None, :]) * np.exp(1j * start)
  f000 = np.zeros(b)
  best_r1 = np.full(b, np.inf)
  since_best = np.zeros(b, dtype=int)
  cycles_run = np.zeros(b, dtype=int)
  last_r1 = np.full(b, np.inf)
  active = np.arange(b)
  snap_at = sorted(set(int(n) for n in s.snapshots if 0 < n < s.cycles))
  taken = {}
  for cycle in range(s.cycles):
    rho = flip_charges(problem.density(coefficients[active], f000[active]), s.delta)
    g_all, g000 = problem.structure_factors(rho)
    g = g_all[:, :m]
    amp_g = np.abs(g)
    r1 = r1_factor(e, amp_g)
    phase = np.angle(g)
    new = np.where(strong[None, :], e[None, :] * np.exp(1j * phase),
                   amp_g * np.exp(1j * (phase + math.pi / 2)))
    coefficients[active, :m] = new
    if nf:
      coefficients[active, m:] = g_all[:, m:]
    f000[active] = g000
    cycles_run[active] += 1
    last_r1[active] = r1
    better = r1 < best_r1[active] - 1e-3
    best_r1[active] = np.where(better, r1, best_r1[active])
    since_best[active] = np.where(better, 0, since_best[active] + 1)
    if cycle + 1 in snap_at:
      taken[cycle + 1] = (coefficients.copy(), last_r1.copy(), cycles_run.copy())
    if cycle + 1 >= s.min_cycles:
      keep = since_best[active] < s.patience
      active = active[keep]
      if not len(active):
        break
  coefficients, skew, last_r1 = _polish(problem, coefficients, missing, last_r1, s)
  snapshots = []
  for n in snap_at:
    # A snapshot after the last cycle any start ran is the end result itself.
    c, r1, ran = taken.get(n, (None, None, None))
    if c is None:
      continue
    c, sk, r1 = _polish(problem, c, missing, r1, s)
    snapshots.append((n, FlipResult(coefficients=c[:, :m], r1=r1, skewness=sk,
                                    cycles_run=ran, seconds=0.0)))
  return FlipResult(coefficients=coefficients[:, :m], r1=last_r1, skewness=skew,
                    cycles_run=cycles_run, seconds=time.time() - t0, snapshots=snapshots)


def _polish(problem, coefficients, missing, r1, s):
  """Flipping's polish of (B, m + n_free) E coefficients: strong reflections
  take |E| phases so far; now flip on F, then low-density elimination on F.
  Without flipping cycles (a refinement of the start alone), reflections
  without a starting phase keep no weight in the first map.  Returns the
  coefficients (|F_obs|), the maps' skewness and R1 (for a refinement alone,
  R1(|F|, |G|) of one flip of the final map)."""
  m, nf, b = problem.size, problem.n_free, coefficients.shape[0]
  coefficients = problem.with_measured_amplitudes(
    np.concatenate([coefficients[:, :m], np.zeros((b, nf), complex)], 1))
  if s.cycles == 0:
    coefficients[:, :m] = np.where(missing, 0.0, coefficients[:, :m])
  f000 = np.zeros(b)
  for _ in range(s.f_cycles if s.cycles else 0):
    g, f000 = problem.structure_factors(
      flip_charges(problem.density(coefficients, f000), s.delta))
    coefficients = problem.with_measured_amplitudes(g)
  coefficients = low_density_elimination(problem, coefficients, s.polish_cycles,
                                         s.polish_tolerance)
  rho = problem.density(coefficients)
  skew = reflection_set.skewness(rho)
  if s.cycles == 0:
    g, _ = problem.structure_factors(flip_charges(rho, s.delta))
    r1 = r1_factor(problem.f, np.abs(g[:, :m]))
  return coefficients, skew, r1


def snap_centric(phases_deg, space_group):
  """Phases (flex.double, degrees) of a miller set snapped to the allowed
  values of centric reflections."""
  out = flex.double(phases_deg.size())
  for i, (h, phi) in enumerate(zip(phases_deg.indices(), phases_deg.data())):
    restriction = space_group.phase_restriction(h)
    out[i] = restriction.nearest_valid_phase(phi, deg=True) \
      if restriction.is_centric() else phi
  return phases_deg.customized_copy(data=out)


@dataclasses.dataclass
class Symmetrised:
  phases: object          # miller array of phases (degrees), f_obs's indices
  origin_shift: tuple     # fractional shift applied to the P 1 map
  cc_peak: float          # correlation of the shifted P 1 map with its symmetrised self


#: A pseudo-translation t (half a cell edge, or of a face or body diagonal)
#: shows in the amplitudes as the reflections with h.t not whole being far
#: weaker than the others: the mean E^2 of that class below this.
PSEUDO_WEAK = 0.15

#: Where the data show a pseudo-translation, the peaks of the origin search
#: (smtbx's fast correlation map) whose refined shifts are compared
#: (:func:`symmetrise`).  The substructure that repeats under t has
#: inversion centres t / 2 apart; the coarse map ranks them about equally
#: and its first peak is often the false one (Vauquelinite,
#: Pb2Cu(CrO4)(PO4)(OH), at 1.6 A: every random start's first peak gave
#: r 0.10, its second r 1.00, refined correlations 0.9982 and 0.9995).
PSEUDO_ORIGIN_PEAKS = 4

#: A later peak of the origin search is taken only where its refined
#: shift's misfit (1 - correlation) is below this share of the one taken
#: so far.  Where the map repeats under the pseudo-translation as the
#: substructure does (Vauquelinite at 2.0 A: the light atoms not yet
#: seen), the two origins fit equally, and which is right is not in the
#: map: the first peak is kept.
ORIGIN_MISFIT = 0.8


def pseudo_translation(f_obs, weak=PSEUDO_WEAK):
  """The pseudo-translation (3,) of halves of cell vectors that ``f_obs``
  shows, the one whose class (h.t not whole) is weakest, or None.  A class
  of fewer than a tenth of the reflections does not count (a centred
  lattice's translations leave none)."""
  e2 = quasi_normalise(f_obs, reflections_per_bin=20) ** 2
  h = np.array(f_obs.indices(), dtype=float)
  best = None
  for t in itertools.product((0.0, 0.5), repeat=3):
    frac = (h @ np.array(t)) % 1.0
    off = (frac > 0.25) & (frac < 0.75)
    if not any(t) or off.sum() < 0.1 * len(h):
      continue
    mean = float(e2[off].mean())
    if mean < weak and (best is None or mean < best[0]):
      best = (mean, np.array(t))
  return None if best is None else best[1]


def _apart_by(shift, other, step):
  """Whether ``shift`` - ``other`` is ``step`` plus whole halves of cell
  edges (the permissible origin shifts of the centrosymmetric groups here,
  or more)."""
  d = 2.0 * (np.array(shift) - np.array(other) - np.array(step))
  return bool(np.all(np.abs(d - np.round(d)) < 0.05))


def symmetrise(f_obs, p1_set, coefficients, pseudo=None):
  """Origin and symmetry of a P 1 solution: phases of ``f_obs``'s reflections.

  Args:
    f_obs: merged amplitudes (data's group and setting).
    p1_set: the P 1 miller set of ``coefficients``.
    coefficients: (m,) complex structure factors in P 1.
    pseudo: the data's pseudo-translation t (:func:`pseudo_translation`) or
      None.  Given, the origin search's first :data:`PSEUDO_ORIGIN_PEAKS`
      peaks are refined, and one t / 2 from the first is taken where it
      fits clearly better (:data:`ORIGIN_MISFIT`).
  """
  from smtbx.ab_initio import charge_flipping as _cf
  f_p1 = miller.array(p1_set, data=flex.complex_double(
    flex.double(np.ascontiguousarray(coefficients.real)),
    flex.double(np.ascontiguousarray(coefficients.imag))))
  if f_obs.space_group().order_z() == 1:
    phases = f_obs.common_sets(f_p1)[1].phases(deg=True)
    return Symmetrised(phases, (0.0, 0.0, 0.0), 1.0)
  best = None
  try:
    peaks = 1 if pseudo is None else PSEUDO_ORIGIN_PEAKS
    for k, (f_calc, shift, cc) in enumerate(_cf.f_calc_symmetrisations(f_obs, f_p1, -1.0)):
      if k >= peaks:
        break
      if best is None:
        best = first = (f_calc, shift, cc)
      elif _apart_by(shift, first[1], np.array(pseudo) / 2.0) and \
           1.0 - cc < ORIGIN_MISFIT * (1.0 - best[2]):
        best = (f_calc, shift, cc)
  except (AssertionError, RuntimeError, ValueError):
    pass
  if best is None:
    f_calc = f_p1.customized_copy(crystal_symmetry=f_obs.crystal_symmetry()) \
      .merge_equivalents().array()
    shift, cc = (0.0, 0.0, 0.0), 0.0
  else:
    f_calc, shift, cc = best
  f_calc = f_calc.map_to_asu()
  f_a, f_c = f_obs.map_to_asu().common_sets(f_calc)
  phases = snap_centric(f_c.phases(deg=True), f_obs.space_group())
  return Symmetrised(phases, tuple(float(x) for x in shift), float(cc))


@dataclasses.dataclass
class DualSpaceCandidate:
  """One start of the dual-space search, brought back to the data's group."""
  start: str              # "random" or what seeded it
  phases: object          # miller array of phases (degrees) for f_obs's reflections
  r1: float
  skewness: float
  cycles: int
  origin_cc: float
  origin_shift: tuple
  snapshot: int = 0       # flipping cycles of a snapshot (Settings.snapshots); 0: the end


def run(f_obs, starts, settings=None, problem=None, labels=None):
  """Charge flipping from each start, symmetrised.

  Args:
    f_obs: merged amplitudes in the data's group and setting.
    starts: (B, m) P 1 phases (radians, NaN where none is known), or an
      int: that many random starts.
    labels: a name per start for the candidates.

  Returns a list of :class:`DualSpaceCandidate`: one per start, then, for
  each of ``settings.snapshots`` that the flipping reached, one per start
  of that snapshot.
  """
  s = settings or Settings()
  if problem is None:
    problem = P1Problem(f_obs, s.resolution_factor, s.weak_fraction, s.extend)
  if isinstance(starts, int):
    starts = problem.random_phases(starts, np.random.default_rng(0))
  starts = np.atleast_2d(starts)
  labels = labels or ["random"] * starts.shape[0]
  result = flip(problem, starts, s)
  out = []
  for snapshot, res in [(0, result)] + result.snapshots:
    for i in range(starts.shape[0]):
      sym = symmetrise(f_obs, problem.p1_set, res.coefficients[i], s.pseudo_translation)
      out.append(DualSpaceCandidate(
        start=labels[i], phases=sym.phases, r1=float(res.r1[i]),
        skewness=float(res.skewness[i]), cycles=int(res.cycles_run[i]),
        origin_cc=sym.cc_peak, origin_shift=sym.origin_shift, snapshot=snapshot))
  return out
