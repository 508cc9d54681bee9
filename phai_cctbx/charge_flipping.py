"""Charge flipping (smtbx.ab_initio.charge_flipping) as the benchmark's baseline.

This wraps cctbx's own charge flipping, the method users already run (e.g.
through Olex2), so that the benchmark phases the same amplitudes with it:

* :func:`run` drives ``weak_reflection_improved_iterator`` through
  ``solving_iterator`` and ``loop``, times it, and keeps the best of the
  solutions it reports (the one with the highest correlation-map peak).
  When it reports none, the last map it reached is still placed on the
  data's symmetry the same way (``f_calc_symmetrisations`` with no peak-height
  cut), so that every run gets an r: the paper counts a structure as solved
  by r alone, whatever the method says of itself;
* :func:`signs_on_reflection_set` puts that solution on the network's
  reflection list with the same ``Standardisation.map_to_reflection_set`` the
  network's side uses, so that both are scored by the same
  :func:`phai_cctbx.reflection_set.sign_correlation`.

A solution is f_calc in the data's space group with the origin shift that the
correlation-map search found already applied, so its phases are comparable
with the true ones up to the permissible origin shifts, which the paper's r
maximises over.
"""
from __future__ import absolute_import, division, print_function

import dataclasses
import io
import itertools
import time

import numpy as np

from cctbx.array_family import flex
from smtbx.ab_initio import charge_flipping as _cf


class _IterationCount(int):
  """An int that stays an int when multiplied.

  ``solving_iterator`` multiplies ``max_solving_iterations`` by 1.5 after two
  attempts without a phase transition; under Python 3 a plain int becomes a
  float there and ``itertools.islice`` raises ValueError, so that every
  unsolvable run crashes instead of ending without a solution.
  """

  def __mul__(self, other):
    return _IterationCount(int(int(self) * other))


@dataclasses.dataclass
class ChargeFlippingResult:
  """The outcome of one charge-flipping run.

  Attributes:
    f_calc: the best solution, complex f_calc in the data's space group and
      setting with its origin shift applied; None when none was found.
    origin_shift: the shift (fractional) applied to that solution.
    cc_peak_height: its correlation-map peak height (charge flipping's own
      figure of merit for the solution).
    n_solutions: how many solutions charge flipping reported (0 when
      ``f_calc`` comes from the last map of a run that found none).
    had_phase_transition: whether a phase transition was seen.
    seconds: wall time of the run.
    error: a one-line message if charge flipping raised an error.
  """
  f_calc: object = None
  origin_shift: tuple = None
  cc_peak_height: float = None
  n_solutions: int = 0
  had_phase_transition: bool = False
  seconds: float = 0.0
  error: str = None

  @property
  def found_solution(self):
    """Whether charge flipping itself reported a solution."""
    return self.n_solutions > 0


def run(f_obs, max_solving_iterations=500, max_attempts=5,
        normalise=False, random_seed=None, last_map=True, log=None):
  """Phase amplitudes by charge flipping.

  Args:
    f_obs: real miller array of amplitudes (with crystal symmetry).
    max_solving_iterations: flipping cycles per attempt before a restart.
    max_attempts: random restarts allowed to reach a phase transition.
    normalise: work on quasi-normalised amplitudes (quasi-E) instead of F.
    random_seed: seed of cctbx's random generator for the starting phases
      (None leaves it alone).
    last_map: when no solution is reported, place the last map on the
      data's symmetry anyway (not timed: it only serves the scoring).
    log: file-like for charge flipping's own progress report (discarded
      when None).

  Returns a :class:`ChargeFlippingResult`.
  """
  if random_seed is not None:
    flex.set_random_seed(int(random_seed))
  out = log if log is not None else io.StringIO()
  if f_obs.is_complex_array():
    f_obs = f_obs.as_amplitude_array()
  elif f_obs.is_xray_intensity_array():
    f_obs = f_obs.f_sq_as_f()
  elif not f_obs.is_xray_amplitude_array():
    # The correlation-map search insists on the observation type.
    f_obs = f_obs.customized_copy().set_observation_type_xray_amplitude()
  f_obs = f_obs.eliminate_sys_absent().as_non_anomalous_array() \
               .merge_equivalents().array()
  kwds = {}
  if normalise:
    kwds["normalisations_for"] = _cf.amplitude_quasi_normalisations
  result = ChargeFlippingResult()
  t0 = time.time()
  solving = None
  try:
    flipping = _cf.weak_reflection_improved_iterator(delta=None)
    solving = _cf.solving_iterator(
      flipping, f_obs,
      max_solving_iterations=_IterationCount(max_solving_iterations),
      max_attempts_to_get_phase_transition=int(max_attempts),
      **kwds)
    _cf.loop(solving, verbose=log is not None, out=out)
  except (ValueError, AssertionError, RuntimeError) as e:
    result.error = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
  result.seconds = time.time() - t0
  if solving is None:
    return result
  solutions = list(solving.f_calc_solutions)
  result.n_solutions = len(solutions)
  result.had_phase_transition = bool(solving.had_phase_transition)
  if not solutions and last_map:
    solutions = _place_last_map(f_obs, solving)
  if solutions:
    f_calc, shift, cc = max(solutions, key=lambda s: s[2])
    result.f_calc = f_calc
    result.origin_shift = tuple(float(x) for x in shift)
    result.cc_peak_height = float(cc)
  return result


def _place_last_map(f_obs, solving):
  """The last map of a run, shifted and symmetrised as a solution would be."""
  flipping = solving.flipping_iterator
  f_in_p1 = getattr(flipping, "f_calc", None)
  if f_in_p1 is None:
    return []
  try:
    return list(itertools.islice(
      _cf.f_calc_symmetrisations(f_obs, f_in_p1, min_cc_peak_height=-1.0), 1))
  except (ValueError, AssertionError, RuntimeError):
    return []


def signs_on_reflection_set(f_calc, standardisation):
  """Centric signs of a solution on the reflection list.

  Args:
    f_calc: complex miller array in the original group and setting.
    standardisation: the data's :class:`phai_cctbx.symmetry.Standardisation`.

  Returns:
    (signs, present): (1205,) arrays; signs +1/-1 from the sign of the real
    part in the P 1 21/c 1 frame (0 where the solution has no value),
    present True where the solution gives a phase.
  """
  values, present = standardisation.map_to_reflection_set(f_calc, fill_absent=False)
  values = np.asarray(values)
  real = values.real if np.iscomplexobj(values) else values
  signs = np.where(real < 0, -1.0, 1.0)
  signs[~present] = 0.0
  return signs, present
