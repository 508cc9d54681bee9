"""The hybrid search of phai.solve: network trials, dual-space starts, recycling.

Every way of phasing the data gives *candidates*: phases of the measured
reflections in the data's own group and setting.  ``method="auto"`` runs,
in stages, stopping after the first whose best candidate reaches
``stop_fom`` (or once ``time_limit`` has passed), except that with
``network_check``, below atomic resolution, the network's trials (stage 2)
run as soon as a stage calls a solution, and where one of them then picks
the solution with a figure of merit below ``stop_fom`` the call is void and
the search goes on with the stages after that one:

1. dual-space runs (:mod:`phai_cctbx.dual_space`) from random phases;
1'. below atomic resolution, where another of those runs ended in the map
   of the one that picks the solution so far: the composition (given, or
   the completions of heavy atoms of unknown element) placed from that
   map's peaks (:func:`_first_map_candidates`), so that a decisive model
   ends the search before the atom searches of 1a; this runs also where
   stage 1 called a solution, whose phases a decisive model of other
   phases then replaces;
1a. given the composition (``composition``, atoms per cell) of an asymmetric
   unit of at most :func:`phai_cctbx.atom_search.atom_limit` atoms heavier
   than hydrogen (12, or 20 in a molecular crystal, 16 of a guessed one): the atom search
   (:mod:`phai_cctbx.atom_search`), point atoms placed to fit |F_obs|; a model that stands out
   (:func:`phai_cctbx.atom_search.decisive`) is the solution, called solved
   (:data:`DECISIVE_ATOM_FOM`) when its cross-validated R1 confirms it,
   else probably solved; a guessed composition (``composition_guessed``)
   whose models do not stand out is followed by the ``alternatives`` (a few
   atoms heavier), as is a formula given without Z (its other plausible
   numbers of formula units), the best-fitting kept
   (:func:`_alternative_atom_candidates`);
1a'. given a composition beyond that limit but within the search from map
   peaks (:func:`peak_search_atoms`) whose heavy atoms are few and scatter a
   good share (:func:`phai_cctbx.atom_search.heavy_counts`): the heavy atoms
   alone placed as in 1a, then the whole asymmetric unit from the peaks of
   the best heavy-atom models' E-maps (:func:`_heavy_atom_candidates`);
   with a guessed composition, or a given one beyond the search from map
   peaks too without heavy atoms to search for by element
   (:func:`heavy_unknown_for_given`), and no decisive model of 1a, the
   same for one, then two heavy atoms of unknown element
   (``heavy_guesses``, :func:`_heavy_unknown_candidates`);
1b. with ``sign_combinations`` > 0 and data below atomic resolution
   (d_min above :data:`~phai_cctbx.dual_space.SIGN_COMBINATIONS_D_MIN`),
   dual-space runs from every combination of the signs of the strongest
   reflections
   (:func:`phai_cctbx.dual_space.sign_combination_starts`);
2. the network's trials (:mod:`phai_cctbx.phasing`);
3. dual-space runs started from each distinct network trial (the network's
   phases on its reflection list, nothing beyond it: this also completes the
   phases of cells larger than the list), with charge flipping and, with
   ``refine_network``, beside them refined by low-density elimination alone;
4. the network again, started from the signs of the best distinct
   dual-space results (recycling through both engines);
5. more random dual-space starts, in rounds;
6. below atomic resolution, the best distinct candidates refined by omit
   maps (:func:`phai_cctbx.dual_space.omit_refinement`);
7. below atomic resolution, where the atom search has atoms to place (1a,
   even if the time limit skipped its stage), the atoms placed
   again from the E-map peaks of the best distinct candidates
   (:func:`_peak_candidates`), and while still nothing is solved, again
   from the maps of the best models of the round before
   (``peak_rounds``).

Stages 6 and 7 end the search while nothing is called solved, after the
time limit too.

All candidates are judged by one figure of merit that needs no true phases
(:func:`assess`), whatever made them, and the best is the solution; its
phases are the consensus of the dual-space runs that reached it
(:func:`choose`).  The figure of merit's terms:

* ``r1``: R1 between |E_obs| and |G|, G the structure factors of the
  E-map after one charge flip (delta = 1.1 sigma).  Correct phases are nearly
  a fixed point of flipping; wrong ones are not;
* ``agreement``: the fraction of the random-start dual-space runs, other
  than the candidate itself, whose phases agree with it (sign correlation
  over the reflection list > 0.9, the best over the permissible origins).
  Independent starts that end in one place are the strongest sign of a
  solution.  The network's trials do not count as independent: they often
  all end in the same wrong signs, whatever their start;
* ``skewness``: of the E-map (atomic maps are strongly skewed);
* ``network_fom``: a network candidate's own figure of merit
  (:mod:`phai_cctbx.phasing`);
* ``held_out_cc``: how well the candidate's phases predict amplitudes they
  were not given (:func:`phai_cctbx.dual_space.held_out_cc`), a free
  figure of merit.

The figure of merit combines them as a logistic model of the chance that a
candidate is right (:func:`figure_of_merit`, :data:`FOM_WEIGHTS`).  The
solution is the candidate that predicts held-out amplitudes best (within
one data set the strongest sign of the right answer; see :func:`choose`),
and its figure of merit gives the verdict.
"""
from __future__ import absolute_import, division, print_function

import dataclasses
import math
import time

import numpy as np

from cctbx.array_family import flex

from phai_cctbx import atom_search as atom_search_engine
from phai_cctbx import charge_flipping
from phai_cctbx import dual_space as dual_space_engine
from phai_cctbx import reflection_set
from phai_cctbx import symmetry

#: The measure of ``time_limit``: the dual-space work of the search, grid
#: points transformed (:attr:`phai_cctbx.dual_space.P1Problem.grid_points`),
#: in seconds of a core that does this many a second, the runs' other work
#: included (one core of a 2-core development machine: the stages that
#: count took 1.5-2.7e7 grid points a processor second on COD 1010879,
#: ACBNZA01 and WICZUF at 2.0 A).  Not a clock, so that which stages run,
#: and the answer, are the same on every machine and under any load: a
#: clock, even the processor seconds of the search's own thread, stretched
#: beside other jobs on the two cores and ended stages early (COD 1010879
#: at 2.0 A, run beside two other jobs: r 0.72, called probably solved,
#: against r 0.66, not solved, on its own).  The atom searches are bounded
#: by numbers of placements of their own
#: (:data:`phai_cctbx.atom_search.MAX_WORK`) and do not count.
GRID_POINTS_PER_SECOND = 2.0e7


def work_seconds(problem):
  """The dual-space work done on ``problem`` so far, in seconds of the
  reference core (:data:`GRID_POINTS_PER_SECOND`)."""
  return problem.grid_points / GRID_POINTS_PER_SECOND


#: Two phase sets are the same solution when their sign correlation over the
#: network's list (best permissible origin) exceeds this.
AGREEMENT_R = 0.9
#: Candidates whose list signs agree more than this share one held-out
#: correlation (computed for the first of them).
SAME_SOLUTION_R = 0.98


@dataclasses.dataclass
class Candidate:
  """One phase set proposed for the data."""
  label: str                 # e.g. "network trial 3", "dual-space random 2"
  method: str                # "network" or "dual_space"
  start: str                 # what it started from
  phases: object             # miller array of phases (degrees), data's group and setting
  signs: np.ndarray = None   # (1205,) signs on the network's list (0: none)
  weights: np.ndarray = None # (1205,) confidence of the signs (network), else None
  back: object = None        # network: the symmetry.BackTransform of its signs
                             # (phases and per-reflection figures of merit)
  terms: dict = dataclasses.field(default_factory=dict)
  fom: float = 0.0
  count: int = 1             # starts that ended in exactly these phases
  independent: bool = False  # a random-start dual-space run
  snapshot_of: object = None # a snapshot of a random start: that start's end point
  model: object = None       # an atom model's atom_search.AtomModel (its F_calc's phases)

  def summary(self):
    out = {"label": self.label, "method": self.method, "start": self.start,
           "fom": round(float(self.fom), 4), "n_phased": int(self.phases.size()),
           "count": int(self.count)}
    out.update({k: round(float(v), 4) for k, v in sorted(self.terms.items())})
    return out


def list_signs(standardisation, f_obs, phases):
  """(1205,) signs of phases (degrees, data's group) on the network's list
  (0 where they give none)."""
  f, p = f_obs.common_sets(phases)
  signs, _ = charge_flipping.signs_on_reflection_set(
    f.phase_transfer(p, deg=True), standardisation)
  return signs


def flip_terms(problem, p1_phases, delta=1.1):
  """R1(|E|, |G|) after one charge flip, and the E-map's skewness.

  ``p1_phases``: (B, m) radians, NaN for reflections a candidate does not
  phase (left out of the map and of R1)."""
  p1_phases = np.atleast_2d(p1_phases)
  known = ~np.isnan(p1_phases)
  e = np.where(known, problem.e[None, :], 0.0)
  coefficients = e * np.exp(1j * np.where(known, p1_phases, 0.0))
  if problem.n_free:
    coefficients = np.concatenate(
      [coefficients, np.zeros((coefficients.shape[0], problem.n_free), complex)], 1)
  rho = problem.density(coefficients)
  g, _ = problem.structure_factors(dual_space_engine.flip_charges(rho, delta))
  g = np.abs(g[:, :problem.size]) * known
  return dual_space_engine.r1_factor(e, g), reflection_set.skewness(rho)


def map_terms(problem, phases, held_out_cycles=dual_space_engine.HELD_OUT_CYCLES):
  """A phase set's own map terms: ``r1`` and ``skewness`` (:func:`flip_terms`)
  and ``held_out_cc`` (:func:`phai_cctbx.dual_space.held_out_cc`), for a
  candidate made after the others were assessed (a consensus)."""
  p1_phases = problem.phases_from(phases)[None]
  r1, skew = flip_terms(problem, p1_phases)
  return {"r1": float(r1[0]), "skewness": float(skew[0]),
          "held_out_cc": float(dual_space_engine.held_out_cc(
            problem, p1_phases, cycles=held_out_cycles)[0])}


def agreement(a, b, amplitudes):
  """Sign correlation (best origin) of two candidates' list signs, weighted
  by ``amplitudes`` (1205,) where both give a sign."""
  w = np.where((a.signs != 0) & (b.signs != 0), amplitudes, 0.0)
  return reflection_set.sign_correlation(w, a.signs, b.signs) if w.sum() > 0 else 0.0


def assess(candidates, problem, amplitudes, agreement_r=AGREEMENT_R,
           held_out_cycles=dual_space_engine.HELD_OUT_CYCLES):
  """Fill each candidate's terms and figure of merit (in place).

  The map terms of a candidate assessed before (an earlier stage) are kept;
  its agreement is counted again, over the independent starts there are now.
  """
  new = [c for c in candidates if "r1" not in c.terms]
  if new:
    p1_phases = np.stack([problem.phases_from(c.phases) for c in new])
    r1, skew = flip_terms(problem, p1_phases)
    for c, r, k in zip(new, r1, skew):
      c.terms["r1"] = float(r)
      c.terms["skewness"] = float(k)
    # The held-out correlation once per solution: a candidate whose list
    # signs agree with one already assessed (> SAME_SOLUTION_R) takes its
    # value.  Most random starts at atomic resolution end in one solution.
    owners = [c for c in candidates if "held_out_cc" in c.terms]
    owner_of, todo = [], []
    for i, c in enumerate(new):
      owner = next((o for o in owners if agreement(c, o, amplitudes) > SAME_SOLUTION_R), None)
      if owner is None:
        owner = c
        owners.append(c)
        todo.append(i)
      owner_of.append(owner)
    if todo:
      for i, h in zip(todo, dual_space_engine.held_out_cc(problem, p1_phases[todo],
                                                          cycles=held_out_cycles)):
        new[i].terms["held_out_cc"] = float(h)
    for c, owner in zip(new, owner_of):
      c.terms["held_out_cc"] = owner.terms["held_out_cc"]
  independent = [c for c in candidates if c.independent]
  total = sum(c.count for c in independent)
  for c in candidates:
    # Independent starts other than this one that ended at the same solution
    # (duplicates of this one included).
    # A snapshot's own start does not count (the same run, seen earlier).
    own = c if c.independent else c.snapshot_of
    agreeing = sum(o.count for o in independent
                   if o is not own and agreement(c, o, amplitudes) > agreement_r)
    if c.independent:
      agreeing += c.count - 1
    others = total - (1 if own is not None else 0)
    c.terms["agreement"] = float(agreeing / others) if others > 0 else 0.0
    c.fom = figure_of_merit(c.terms)
    if c.terms.get("decisive"):
      c.fom = max(c.fom, DECISIVE_ATOM_FOM if atom_search_engine.confirmed(
        c.terms["model_r1"], c.terms["model_free_r1"]) else PROBABLE_ATOM_FOM)
    elif c.terms.get("stands_out") or c.terms.get("clear"):  # confirmed
      c.fom = max(c.fom, PROBABLE_ATOM_FOM)


#: Weights of the figure of merit (a logistic model of "r > 0.95"): bias,
#: r1, skewness / 5, agreement, the network's own figure of merit (0 for
#: dual-space candidates), held_out_cc.  Fitted to the 3 305 candidates of
#: 123 cases (the 41 development structures at 1.0, 1.6 and 2.0 A,
#: calculated data, every stage of the search run).  What the fit found:
#: agreement between independent starts and a low R1 after one flip are the
#: strongest signs of a right answer, then the held-out correlation and a
#: skewed map.  Left out one structure at a time, of the solutions chosen
#: by held_out_cc with FOM >= 0.8, 59 of 61 had r > 0.95 (FOM 0.5-0.8: 9 of
#: 9; 0.3-0.5: 3 of 8; below 0.3: 10 of 45).
FOM_WEIGHTS = (-0.903, -8.559, 2.12, 5.084, 0.755, 2.977)


def figure_of_merit(terms, weights=FOM_WEIGHTS):
  """The figure of merit of a candidate's terms: an estimate of the chance
  that its phases are right (r > 0.95), from 0 to 1."""
  x = (1.0, terms["r1"], terms["skewness"] / 5.0, terms["agreement"],
       terms.get("network_fom", 0.0), terms.get("held_out_cc", 0.0))
  z = sum(w * v for w, v in zip(weights, x))
  return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


@dataclasses.dataclass
class SearchSettings:
  """Budget of the hybrid search (PHIL ``phasing`` and ``phasing.dual_space``)."""
  method: str = "auto"            # auto, network or dual_space
  trials: int = 8                 # network trials
  cycles: int = 16                # network recycling cycles
  random_seed: int = 0
  starts: int = 16                # random dual-space starts
  more_starts: int = 48           # then, while nothing is solved, up to this many
                                  # more, in rounds of ``starts`` (0: none)
  refine_network: bool = False    # auto: also refine each network trial without flipping
  network_seeds: tuple = ()       # auto: fractions of each network trial's most
                                  # confident strong signs that seed partial starts
  sign_combinations: int = 8      # signs of the strongest reflections whose every
                                  # combination starts dual-space runs (0: none)
  sign_modes: tuple = ("refine", "flip")  # ... each refined by low-density
                                  # elimination alone, and/or by charge flipping
  recycle: int = 4                # auto: the network again on this many distinct
                                  # dual-space results (0: never)
  network_check: bool = True      # auto: the network's trials run even when the
                                  # dual-space stages before them called a solution
  network_frames: int = 1         # the network's trials in this many of the
                                  # crystal's P2_1/c frames (symmetry.frames)
  omit_refinement: int = 4        # below atomic resolution, while nothing is
                                  # solved: this many of the best distinct
                                  # candidates refined by omit maps (0: none)
  atom_search: bool = True        # given the composition, while nothing is solved:
                                  # point atoms placed to fit |F_obs| (atom_search)
  composition_guessed: bool = False  # the atom search's composition a guess: a model
                                  # that stands out counts only when confirmed
                                  # (up to GUESSED_R1: probably solved)
  atom_restarts: int = 2048       # ... from this many random placements
  atom_retry: bool = True         # ... and a second search where no model of a
                                  # given composition (or a guess of atoms of unknown
                                  # element) is decisive (retries_atom_search)
  heavy_atoms: bool = True        # a given composition beyond the random search:
                                  # its heavy atoms alone, then the whole asymmetric
                                  # unit from their maps' peaks (heavy_search_counts)
  peak_maps: int = 4              # below atomic resolution, while nothing is
                                  # solved, after the atom search: atom searches
                                  # from the peaks of this many of the best
                                  # distinct maps (0: none)
  first_map: bool = True          # below atomic resolution, where first random
                                  # starts agree on a map: the composition placed
                                  # from its peaks before the atom search
                                  # (first_map_compositions)
  peak_rounds: int = 4            # ... and again from the maps of the best
                                  # models of the round before, this many
                                  # rounds in all while nothing is solved
  time_limit: float = 120.0       # seconds of dual-space work (work_seconds);
                                  # no new stage starts after it
  snapshots: tuple = ()           # random dual-space starts: the map after this
                                  # many flipping cycles is also polished into a
                                  # candidate (dual_space.Settings.snapshots)
  stop_fom: float = None          # stop after a stage whose best reaches this
  choice: str = "held_out"        # which candidate and phases: see choose()
  dual_space: dual_space_engine.Settings = dataclasses.field(
    default_factory=dual_space_engine.Settings)

  def retries_atom_search(self, counts):
    """Whether a second atom search of ``counts`` (element -> atoms per
    cell) runs where no model of the first is decisive: for a given
    composition, and for a guessed one of atoms of unknown element
    (:func:`phai_cctbx.composition_guess.unknown_alternatives`); not for
    the other guesses, whose heavier alternatives already add searches.

    Why the atoms of unknown element: their search reaches the right
    layout of atoms on special positions only at times.  Cryolite at
    1.6 A without its composition (X21 per cell, 57 reflections;
    ``atom_search.run``, 2048 placements): the right model (R1 0.04,
    r 1.00) from 10 of 13 seeds, a wrong one (R1 0.12-0.155) from the
    other three, among them the benchmark's (1028234880), whose second
    search (seed + :data:`ATOM_RETRY_SEED`) gives the right model."""
    return self.atom_retry and (not self.composition_guessed or
                                atom_search_engine.UNKNOWN in counts)


@dataclasses.dataclass
class SearchResult:
  candidates: list
  best: int
  network: object                 # the first phasing.PhasingResult, or None
  problem: object                 # the dual_space.P1Problem
  stages: list                    # names of the stages run
  seconds: float

  @property
  def chosen(self):
    return self.candidates[self.best]


def distinct(candidates, amplitudes, n, same_r=0.95, key=lambda c: c.fom):
  """Up to ``n`` candidates, the highest ``key`` (figure of merit) first,
  none of which is the same solution as one before it (sign correlation >
  ``same_r``)."""
  out = []
  for c in sorted(candidates, key=key, reverse=True):
    if len(out) == n:
      break
    if all(agreement(c, o, amplitudes) <= same_r for o in out):
      out.append(c)
  return out


#: In a consensus a member counts exp(-(1 - origin_cc) / SYMMETRY_SCALE)
#: times the starts that ended in it: a run whose P 1 map fits the group's
#: symmetry 0.05 worse than another counts e^-5 as much.
SYMMETRY_SCALE = 0.01


def _member_weight(candidate):
  return candidate.count * math.exp(
    -(1.0 - candidate.terms.get("origin_cc", 1.0)) / SYMMETRY_SCALE)


def consensus(members, amplitudes):
  """Phases (degrees, data's group) on which ``members`` (candidates of one
  solution, the first the reference) agree.

  Each member is moved to the reference's origin (of the shifts by half
  cell edges, the one with the best |F|^2-weighted agreement), and each
  reflection takes the phase of the weighted sum of the members' unit
  phasors, snapped to its allowed values; where they cancel it keeps the
  reference's.  A member's weight is the number of starts that ended in it
  times a factor for how well its P 1 map fits the group's symmetry
  (:data:`SYMMETRY_SCALE`).

  Args:
    members: candidates whose phases cover the reference's reflections.
    amplitudes: miller array of |F| (any reflections; the weights of the
      origin choice).
  """
  ref = members[0].phases
  hkl = np.array(ref.indices(), dtype=float).reshape(-1, 3)
  f, _ = amplitudes.common_sets(ref)
  lookup_f = dict(zip(f.indices(), f.data()))
  w = np.array([lookup_f.get(h, 0.0) for h in ref.indices()]) ** 2
  ref_rad = np.radians(ref.data().as_numpy_array())
  shifts = 2.0 * math.pi * hkl @ reflection_set.ORIGIN_SHIFTS.T   # (n, 8)
  total = np.zeros(len(ref_rad), dtype=complex)
  for m in members:
    lookup = dict(zip(m.phases.indices(), m.phases.data()))
    phi = np.radians(np.array([lookup.get(h, np.nan) for h in ref.indices()]))
    known = ~np.isnan(phi)
    moved = np.where(known[:, None], phi[:, None] + shifts, 0.0)
    fit = (w[:, None] * known[:, None] * np.cos(moved - ref_rad[:, None])).sum(0)
    total += _member_weight(m) * np.where(known, np.exp(1j * moved[:, int(np.argmax(fit))]), 0.0)
  phases = np.where(np.abs(total) > 1e-6, np.degrees(np.angle(total)),
                    np.degrees(ref_rad))
  return dual_space_engine.snap_centric(
    ref.customized_copy(data=flex.double(phases)), ref.space_group())


#: The rules of :func:`choose`.
CHOICE_RULES = ("held_out", "consensus", "most_symmetric", "best_fom")


def skewed(candidate):
  """Whether a candidate's E-map is skewed towards positive density, as a
  map of atoms is (candidates not yet assessed count as skewed)."""
  return candidate.terms.get("skewness", 1.0) > 0.0


def top_candidate(candidates, rule="held_out"):
  """Index of the candidate that picks the solution: the best held-out
  correlation (ties: the better figure of merit) for ``rule="held_out"``,
  else the best figure of merit.  An atom model that stands out (term
  ``decisive``, :func:`phai_cctbx.atom_search.decisive`) comes first: at
  2.0 A the held-out correlation of the true phases of inorganic cells can
  be below that of wrong maps (NaHCO3: 0.19 against 0.49), while a model of
  the right atoms fits |F_obs| with R1 0.01.  Next comes a model that is
  clearly the solution (term ``clear``, :func:`phai_cctbx.atom_search.clear`),
  unless another candidate is called solved.

  A candidate whose E-map has negative skewness (:func:`skewed`) is not a
  map of atoms, and picks the solution only when every candidate's map is
  like it.  Such maps come from low-density elimination of a sign
  combination, which can end in a map whose large, flat negative regions
  still predict held-out amplitudes well: on the saved candidates of auto's
  full search (41 development structures, calculated data, both the shipped
  and the run-4 weights) the best held-out correlation was such a map, and
  wrong, for Strontianite and CaCO3 at 2.0 A (r 0.23 and 0.16, skewness
  -1.05 and -0.76), where random starts had reached the answer (r 1.00 and
  0.99, skewness 1.42 and 0.51).  Leaving them out chose right in 21 / 22
  cases at 2.0 A instead of 19 / 20, and changed nothing at 1.0 and 1.6 A;
  adding skewness or R1 to the held-out correlation as a score did worse.
  """
  if rule == "held_out":
    solved = any(c.fom >= DECISIVE_ATOM_FOM for c in candidates if not c.terms.get("clear"))
    return max(range(len(candidates)), key=lambda i: (
      bool(candidates[i].terms.get("decisive")),
      bool(candidates[i].terms.get("clear")) and not solved, skewed(candidates[i]),
      candidates[i].terms.get("held_out_cc", -1.0), candidates[i].fom))
  return int(np.argmax([c.fom for c in candidates]))


def choose(candidates, amplitudes, f_obs=None, standardisation=None,
           rule="held_out", same_r=AGREEMENT_R, problem=None,
           held_out_cycles=dual_space_engine.HELD_OUT_CYCLES):
  """Index of the candidate that stands for the solution (appended to
  ``candidates`` when it is a new, consensus candidate).

  The candidate that predicts held-out amplitudes best (``held_out_cc``,
  for ``rule="held_out"``) or the best figure of merit (every other rule)
  picks the solution.  Its phases:

  * ``"held_out"`` and ``"consensus"`` (need ``f_obs`` and
    ``standardisation``): the :func:`consensus` of the dual-space
    candidates that are the same solution (agreement > ``same_r`` with the
    one that picked it); one such: itself;
  * ``"most_symmetric"``: of those, the one whose P 1 map fits the group's
    symmetry best (``origin_cc``);
  * ``"best_fom"``: the best candidate itself.

  The network's candidates are kept only when no dual-space one agrees.
  The candidate chosen takes the figure of merit of the one that picked it.
  Given the ``problem`` (:class:`phai_cctbx.dual_space.P1Problem`), a
  consensus of the ``"held_out"`` rule gets its own map terms and is kept
  only if it predicts held-out amplitudes at least as well as the candidate
  that picked it; else that candidate stands alone.  Runs that end a few
  signs apart can share wrong signs and outvote the best run: on the 41
  development structures the consensus had r 0.93, 0.88 and 0.90 where the
  run that picked it had 0.98, 0.99 and 0.98 (two cases at 1.6 A, one at
  2.0 A), each with the lower held-out correlation.

  Why: at 1.6-2.0 A many random starts often end in one wrong answer,
  whose agreement then outweighs a right answer that one start found; the
  held-out correlation tells them apart within a data set better than any
  other term (among the development cases with right and wrong candidates,
  its best is right in 27 of 33, the best figure of merit in 19).  Near a
  solution, starts end a few strong signs apart: the consensus of them is
  nearer the truth than any one.  Measured on the 41 development structures
  (calculated data; the number solved, r > 0.95, mean over random seeds 0
  and 1; ``python regression/benchmark_solution_choice.py --structures DIR
  ... --d-min 1.0 1.6 2.0 --seeds 2 --more-starts 0``, dual-space phasing
  alone, 16 random starts and no more, the default then):

  ====== ========= ============== ========= ========
  d_min  best_fom  most_symmetric consensus held_out
  ====== ========= ============== ========= ========
  1.0 A  37.5      37.5           37.5      39.5
  1.6 A  19.5      20.5           20.0      25.5
  2.0 A  15.0      12.0           14.0      15.0
  ====== ========= ============== ========= ========

  Each rule is applied to the candidates of one search (which stops by
  the held_out rule); best_fom uses the figure of merit refitted with the
  held-out term.  Wrong "solved" calls over the two seeds: held_out 0 / 2 /
  1 at 1.0 / 1.6 / 2.0 A, consensus 2 / 2 / 1.  The held_out rule's two
  seeds differ by at most 2 (40 / 39, 26 / 25, 16 / 14).  With the
  held-out correlation as a mean over three sets of a tenth and the
  consensus always kept, held_out solved 38.5 / 21.5 / 14.5.
  """
  if rule not in CHOICE_RULES:
    raise ValueError("unknown rule %r" % rule)
  top = top_candidate(candidates, rule)
  best = candidates[top]
  if best.terms.get("decisive") or best.terms.get("clear"):
    return top
  same = [i for i, c in enumerate(candidates)
          if "origin_cc" in c.terms
          and (i == top or agreement(c, best, amplitudes) > same_r)]
  if not same or rule == "best_fom":
    return top
  if rule == "most_symmetric" or len(same) == 1:
    chosen = max(same, key=lambda i: candidates[i].terms["origin_cc"])
    if rule == "held_out" and best.method == "atom_search" and \
       candidates[chosen].terms.get("held_out_cc", -1.0) < best.terms.get("held_out_cc", -1.0):
      # An atom model's phases are complete; a run that agrees with it but
      # predicts held-out amplitudes worse does not stand for it.
      return top
    candidates[chosen].fom = max(candidates[chosen].fom, best.fom)
    return chosen
  members = sorted((candidates[i] for i in same), key=lambda c: (c is not best, -c.fom))
  phases = consensus(members, f_obs)
  ref = members[0]
  cand = Candidate(
    label="consensus of %d dual-space runs" % sum(m.count for m in members),
    method="dual_space", start=ref.label, phases=phases,
    signs=list_signs(standardisation, f_obs, phases),
    terms={"agreement": best.terms.get("agreement", 0.0),
           "origin_cc": ref.terms["origin_cc"]},
    count=sum(m.count for m in members))
  cand.fom = best.fom
  if problem is not None and rule == "held_out":
    # The consensus has to predict held-out amplitudes at least as well as
    # the candidate that picked it; else that candidate stands alone.
    cand.terms.update(map_terms(problem, phases, held_out_cycles))
    if cand.terms["held_out_cc"] < best.terms.get("held_out_cc", -1.0):
      return top
  candidates.append(cand)
  return len(candidates) - 1


def _network_candidates(result, standardisation, f_obs, label, start_of):
  out = []
  seen = {}
  for t in range(result.signs.shape[0]):
    signs = result.signs[t]
    key = signs.tobytes()
    if key in seen:
      seen[key].count += 1
      continue
    conf = np.clip(2.0 * result.probabilities[t] - 1.0, 0.0, 1.0)
    back = standardisation.from_reflection_set(signs, f_obs, weights=conf)
    cand = Candidate(label="%s %d" % (label, t + 1), method="network",
                     start=start_of(t), phases=back.phases,
                     signs=np.asarray(signs, dtype=float), weights=conf, back=back)
    cand.terms["network_fom"] = float(result.fom[t])
    seen[key] = cand
    out.append(cand)
  return out


def other_frames(standardisation, count):
  """Up to ``count`` frames of the crystal other than ``standardisation``'s
  (:func:`phai_cctbx.symmetry.frames`, preferred first) whose longest cell
  edge is no longer than 10.5 A or the standardisation's own (so that the
  reflection list covers the data as well)."""
  if count <= 0:
    return []
  longest = lambda std: max(std.p21c_symmetry.unit_cell().parameters()[:3])
  limit = max(10.5, longest(standardisation)) + 1e-6
  own = standardisation.cb_op.as_xyz()
  out = []
  for frame in symmetry.frames(standardisation.original_symmetry):
    if frame.cb_op.as_xyz() == own or longest(frame) > limit:
      continue
    out.append(frame)
    if len(out) == count:
      break
  return out


def _frame_candidates(frame, number, standardisation, f_obs, model, s):
  """The network's trials on the data laid out in another frame, as
  candidates whose signs are given on ``standardisation``'s list."""
  from phai_cctbx import phasing  # torch: only when the network runs
  values, present = frame.map_to_reflection_set(f_obs)
  result = phasing.phase_reflection_set(
    np.maximum(np.asarray(values).real, 0.0), np.asarray(present, dtype=bool),
    model, trials=s.trials, cycles=s.cycles, random_seed=s.random_seed + number - 1)
  out = _network_candidates(result, frame, f_obs, "network frame %d trial" % number,
                            lambda t: "frame %d, %s" % (number, "zero phases" if t == 0
                                                         else "random signs"))
  for c in out:
    c.signs = list_signs(standardisation, f_obs, c.phases)
    c.weights = (c.signs != 0).astype(float)
  return out


def p1_confidence(problem, back):
  """(m,) the network's confidence of each P 1 reflection of ``problem``
  (0 where its back-transform ``back`` gives no phase)."""
  return problem.values_from(back.fom.expand_to_p1())


def partial_seeds(problem, network_candidates, fractions, rng):
  """Dual-space starts from the most trusted part of each network trial:
  for each fraction f, the phases of the f most confident and strong
  reflections it phases (ranked by confidence times |E|), the others given
  no phase (one start) or random ones (another).  Returns (B, m) P 1 phases
  (radians, NaN: none), a label per start and what each started from.

  A start from a few right strong phases can reach a solution that neither
  the whole trial (whose wrong signs charge flipping keeps) nor a random
  start reaches: at 2.0 A, on the 41 development structures (calculated
  data, fractions 0.2, 0.4 and 0.7 of the 8 trials), such starts reached
  r > 0.95 for two structures that no random start of phai.solve's search
  (64) and no start from a whole trial reached (25 structures reached by
  those, 27 with these).  In phai.solve's search (fractions 0.2 and 0.4,
  after the starts from the whole trials) the structures with a right
  candidate stayed 25 and those solved went from 17 to 16 (the held-out
  correlation preferred other candidates); at 1.6 A 31 were solved with
  and without it (33 with a right candidate), so the stage is off by default
  (``SearchSettings.network_seeds``, PHIL ``phasing.dual_space.network_seeds``).
  """
  starts, labels, origins = [], [], []
  for c in network_candidates:
    p1 = problem.phases_from(c.phases)
    known = ~np.isnan(p1)
    rank = np.argsort(-np.where(known, p1_confidence(problem, c.back) * problem.e, -1.0))
    for f in fractions:
      keep = np.zeros(problem.size, dtype=bool)
      keep[rank[:int(f * known.sum())]] = True
      starts.append(np.where(keep, p1, np.nan))
      starts.append(np.where(keep, p1, rng.uniform(0.0, 2 * math.pi, problem.size)))
      labels += ["dual-space from %d %% of %s" % (round(100 * f), c.label),
                 "dual-space from %d %% of %s, others random" % (round(100 * f), c.label)]
      origins += [c.label, "%s, others random" % c.label]
  return np.stack(starts), labels, origins


def below_atomic_resolution(f_obs):
  """Whether ``f_obs`` stops short of atomic resolution
  (:data:`phai_cctbx.dual_space.SIGN_COMBINATIONS_D_MIN`), where the sign
  combinations and the network check of the search run."""
  return f_obs.d_min() > dual_space_engine.SIGN_COMBINATIONS_D_MIN


def runs_sign_combinations(settings, f_obs):
  """Whether the search with ``settings`` has the sign-combination stage for
  ``f_obs`` (only :func:`below_atomic_resolution`)."""
  return settings.method in ("auto", "dual_space") and settings.sign_combinations > 0 \
    and below_atomic_resolution(f_obs)


def best_distinct(candidates, amplitudes, n, same_r=AGREEMENT_R):
  """Up to ``n`` assessed candidates, the best held-out correlation first
  (skewed maps before the others, as :func:`top_candidate` ranks them), none
  of which is the same solution as one before it (sign correlation >
  ``same_r``)."""
  return distinct([c for c in candidates if "held_out_cc" in c.terms], amplitudes, n, same_r,
                  key=lambda c: (skewed(c), c.terms["held_out_cc"], c.fom))


def _omit_candidates(f_obs, problem, sources, standardisation, pseudo=None):
  """Candidates made by :func:`phai_cctbx.dual_space.omit_refinement` of
  ``sources`` (one each, labelled after its source), brought back to the
  data's group.

  Why: below atomic resolution the best candidates of the search are
  sometimes a few strong signs from the answer, at a fixed point of both
  flipping and low-density elimination; omit maps move them, and the
  held-out correlation decides whether the result is better.  Measured with
  ``phai.benchmark`` (41 development structures, calculated data, auto, the
  4 best distinct candidates refined): at 1.6 A 34 solved instead of 32
  (Scorzalite r 0.72 -> 0.96, Celadonite 0.90 -> 0.96), none lost; at 2.0 A
  23 as before (there the refined candidates predict held-out amplitudes
  worse than those they came from, and are seldom chosen); no wrong
  "solved" call at either.  On the six measured data sets it solved CpNa
  at 2.0 A (r 0.93 -> 0.967), and no other set changed sides.
  """
  p1 = np.stack([problem.phases_from(c.phases) for c in sources])
  refined = dual_space_engine.omit_refinement(problem, p1)
  out = []
  for c, coefficients in zip(sources, refined):
    sym = dual_space_engine.symmetrise(f_obs, problem.p1_set, coefficients, pseudo)
    cand = Candidate(label="omit-refined %s" % c.label, method="dual_space", start=c.label,
                     phases=sym.phases, signs=list_signs(standardisation, f_obs, sym.phases))
    cand.terms["origin_cc"] = sym.cc_peak
    out.append(cand)
  return out


#: Figure of merit at least of an atom model that stands out
#: (:func:`phai_cctbx.atom_search.decisive`): "solved" when its
#: cross-validated R1 confirms it (:func:`phai_cctbx.atom_search.confirmed`),
#: else "probably solved" (it is chosen either way).
DECISIVE_ATOM_FOM = 0.8
PROBABLE_ATOM_FOM = 0.5
#: Best atom models turned into candidates (then one per distinct solution).
ATOM_MODELS = 32
#: Distinct solutions of the atom search that become candidates.
ATOM_CANDIDATES = 4


def atom_search_atoms(settings, f_obs, composition, limit=None):
  """The atoms the atom search would place ((elements, occupancies), see
  :func:`phai_cctbx.atom_search.asymmetric_unit_atoms`), or None when it does
  not run: method network, switched off, no composition per cell, or more
  than ``limit`` atoms (None: :func:`phai_cctbx.atom_search.atom_limit`, that
  of a guessed composition where it is one)."""
  if settings.method not in ("auto", "dual_space") or not settings.atom_search \
     or not composition or settings.atom_restarts <= 0:
    return None
  return atom_search_engine.asymmetric_unit_atoms(
    composition, f_obs.space_group(),
    limit or atom_search_engine.atom_limit(composition, settings.composition_guessed))


def peak_search_atoms(settings, f_obs, composition):
  """The atoms the atom search from map peaks would place, as
  :func:`atom_search_atoms`, but for a given (not guessed) ``composition``,
  or a guessed one of heavy atoms of unknown element beside carbon
  (:func:`phai_cctbx.composition_guess.heavy_unknown_guesses`), up to
  :func:`phai_cctbx.atom_search.peak_atom_limit` atoms: more than the
  random search places, where the data allow it."""
  limit = None
  if composition and (not settings.composition_guessed or
                      atom_search_engine.heavy_unknown(composition)):
    limit = atom_search_engine.peak_atom_limit(composition, f_obs.size(),
                                               f_obs.space_group())
  return atom_search_atoms(settings, f_obs, composition, limit)


def heavy_search_counts(settings, f_obs, composition):
  """The heavy atoms per cell to search for first
  (:func:`phai_cctbx.atom_search.heavy_counts`) where a given (not guessed)
  ``composition`` is beyond the random atom search
  (:func:`atom_search_atoms` None) but not beyond the search from map peaks
  (:func:`peak_search_atoms`); else None."""
  # No peak search: no composition, the atom search off, or too many atoms.
  if settings.composition_guessed or not settings.heavy_atoms or \
     peak_search_atoms(settings, f_obs, composition) is None or \
     atom_search_atoms(settings, f_obs, composition) is not None:
    return None
  return atom_search_engine.heavy_counts(composition, f_obs.space_group())


def runs_heavy_unknown(settings, f_obs, composition):
  """Whether the search gets heavy atoms of unknown element
  (:func:`phai_cctbx.composition_guess.heavy_unknown_guesses`) where no
  model is decisive: only :func:`below_atomic_resolution`, for a guessed
  composition (``settings.heavy_atoms``) or a given one
  (:func:`heavy_unknown_for_given`).

  Why not at atomic resolution: there dual-space phasing is the tool (it
  solved every development structure at 1.0 A, and the 36 cells of
  ``p21c_large`` outside development), while these searches cost most:
  MaterSim UHAWAD at 1.0 A (50 atoms in the asymmetric unit, 3208
  reflections, its composition given) spent 720 of its 772 s in them,
  for a best model of R1 0.48, and the dual-space runs after them gave
  the answer (r 0.997)."""
  if not below_atomic_resolution(f_obs):
    return False
  if settings.composition_guessed:
    return bool(settings.heavy_atoms)
  return heavy_unknown_for_given(settings, f_obs, composition)


def heavy_unknown_for_given(settings, f_obs, composition):
  """Whether a given (not guessed) ``composition`` gets the search of one,
  then two heavy atoms of unknown element
  (:func:`phai_cctbx.composition_guess.heavy_unknown_guesses`) where no
  model is decisive: the atom search is on, but neither its random search
  nor the search from map peaks can place the composition
  (:func:`peak_search_atoms` None, so :func:`heavy_search_counts` gives no
  heavy atoms to search for by element either), or it is a molecular one
  beyond :data:`phai_cctbx.atom_search.SURE_MOLECULAR_ATOMS` that the
  search from map peaks places only because the random search now reaches
  that far (fewer than :data:`phai_cctbx.atom_search.PEAK_REFLECTIONS_PER_ATOM`
  reflections per atom), whose random search reaches the model only at
  times (WICZUF at 2.0 A: C17 X1 from these searches, r 1.00, where its
  random search ended at r 0.86).  Not in a cell that the atom search
  covers surely: there such atoms' fitted scattering lets wrong models fit
  (COD 1010879 at 2.0 A, C3 X2 beside its given composition, R1 0.023,
  r 0.60)."""
  if not composition or settings.composition_guessed or not settings.heavy_atoms or \
     not settings.atom_search or settings.method not in ("auto", "dual_space"):
    return False
  if peak_search_atoms(settings, f_obs, composition) is None:
    return True
  atoms = atom_search_engine.asymmetric_unit_atoms(composition, f_obs.space_group())
  return atom_search_engine.molecular(composition) and atoms is not None and \
    len(atoms[0]) > atom_search_engine.peak_atom_limit(composition, f_obs.size(),
                                                       guessed=True)


#: A second atom search from other random placements where the first ends
#: without a decisive model (:func:`_atom_candidates`): its seed is the
#: search's plus this.
ATOM_RETRY_SEED = 101


def _atom_candidates(f_obs, composition, standardisation, weights, s, guess="", retry=False):
  """Candidates of the atom search (:func:`_model_candidates`) from random
  placements.  ``guess``: the guessed composition, for the labels.
  ``retry``: where no model is decisive, a second search of as many
  placements (seed :data:`ATOM_RETRY_SEED` on), its models and the first's
  judged together, so that a search that missed the deepest minimum by
  chance gets a second draw.

  Why: whether one search of 2048 placements reaches the right model of a
  small cell depends on its random numbers.  On calculated data at 2.0 A
  (``atom_search.run``, seeds 0-3) BlueObelisk 1000193 (C2/m, 30
  reflections) got its right model (R1 0.058) from one seed of four, the
  others a wrong one of R1 0.181; Cryolite got a wrong model (R1 0.073, r
  0.68) that counted as clearly the solution from one seed, the right one
  (R1 0.01) from the others.  Where every search ends at the same model
  (XULDUD01, R1 0.08-0.09, right but not decisive) the second search
  changes nothing but the time.  Returns (candidates, searches run)."""
  models = atom_search_engine.run(f_obs, composition, restarts=s.atom_restarts,
                                  seed=s.random_seed, keep=ATOM_MODELS)
  kept = _model_candidates(f_obs, models, standardisation, weights, s, "atom model", guess,
                           "random atoms")
  if not retry or not kept or kept[0].terms.get("decisive"):
    return kept, 1
  more = atom_search_engine.run(f_obs, composition, restarts=s.atom_restarts,
                                seed=s.random_seed + ATOM_RETRY_SEED, keep=ATOM_MODELS)
  models = sorted(models + more, key=lambda m: m.r1)[:ATOM_MODELS]
  return _model_candidates(f_obs, models, standardisation, weights, s, "atom model", guess,
                           "random atoms"), 2


def _distinct_models(f_obs, models, standardisation, weights, start):
  """Unlabelled candidates of atom ``models`` (lowest R1 first), the best
  model of each of up to :data:`ATOM_CANDIDATES` distinct solutions."""
  candidates = [Candidate(label="", method="atom_search", start=start,
                          phases=m.phases,
                          signs=list_signs(standardisation, f_obs, m.phases),
                          terms={"model_r1": m.r1}, model=m)
                for m in models]
  return distinct(candidates, weights, ATOM_CANDIDATES, same_r=AGREEMENT_R,
                  key=lambda c: -c.terms["model_r1"])


def _heavy_atom_candidates(f_obs, composition, heavy, standardisation, weights, s):
  """Candidates of a search of the ``heavy`` atoms alone
  (:func:`heavy_search_counts`; random placements as
  :func:`_atom_candidates`), then of the whole ``composition`` placed from
  the peaks of the best distinct heavy-atom models' E-maps
  (:func:`_peak_candidates`; as many placements in all as from
  ``peak_maps`` maps).  A heavy-atom model is a partial structure:
  its candidates are never marked as standing out, and carry no model of
  the whole cell.  Where the best heavy-atom model's atoms repeat under a
  half translation of the cell
  (:func:`phai_cctbx.atom_search.pseudo_translation`), no model placed from
  its maps' peaks stands out either: they compete by the held-out
  correlation.  Returns (candidates, heavy atoms in the asymmetric unit,
  that translation or None)."""
  models = atom_search_engine.run(f_obs, heavy, restarts=s.atom_restarts,
                                  seed=s.random_seed, keep=ATOM_MODELS, complete=False)
  kept = _distinct_models(f_obs, models, standardisation, weights, "random heavy atoms")
  if not kept:
    return [], 0, None
  pseudo = atom_search_engine.pseudo_translation(kept[0].model, f_obs.unit_cell(),
                                                 f_obs.space_group())
  guess = ""
  if s.composition_guessed or atom_search_engine.UNKNOWN in heavy:
    from phai_cctbx.composition_guess import describe
    guess = describe(heavy, f_obs.space_group()) + ", "
  for i, c in enumerate(kept):
    c.label = "heavy-atom model %d (%sR1 %.3f)" % (i + 1, guess, c.terms["model_r1"])
  # The placements of peak_maps maps, from as many distinct models as there
  # are (one, where every placement of a few heavy atoms found the same).
  sources = kept[:max(1, s.peak_maps)]
  found = _peak_candidates(
    f_obs, composition, sources, standardisation, weights, s, name="heavy-atom map",
    placements=atom_search_engine.PEAK_PLACEMENTS * max(1, s.peak_maps) // len(sources),
    marks=pseudo is None)
  for c in kept:
    c.model = None   # a partial structure: no starting model of the cell
  return kept + found, sum(models[0].occupancies), pseudo


def _heavy_unknown_candidates(f_obs, guesses, standardisation, weights, s):
  """The searches of :func:`_heavy_atom_candidates` for each of ``guesses``
  in turn (:func:`phai_cctbx.composition_guess.heavy_unknown_guesses`:
  heavy atoms of unknown element, then the asymmetric unit from their
  maps' peaks), until one gives a decisive model.  Like the other guesses
  they run whatever ``time_limit`` says.  Returns (candidates, the completion
  whose model fits best or None, that model's R1)."""
  found, best, best_r1 = [], None, None
  for heavy, completion in guesses:
    more, _, _ = _heavy_atom_candidates(f_obs, completion, heavy, standardisation, weights, s)
    found += more
    models = [c for c in more if c.model is not None]   # the completions, lowest R1 first
    if models and (best_r1 is None or models[0].terms["model_r1"] < best_r1):
      best, best_r1 = completion, models[0].terms["model_r1"]
    if any(c.terms.get("decisive") for c in more):
      break
  return found, best, best_r1


def _model_candidates(f_obs, models, standardisation, weights, s, name, guess, start,
                      confirm=False):
  """Candidates of atom models (lowest R1 first): the best model of each of
  up to :data:`ATOM_CANDIDATES` distinct solutions, labelled ``name`` with
  its rank, ``guess`` and R1; the first marked ``decisive`` when it stands
  out (:func:`phai_cctbx.atom_search.decisive`), with a guessed composition
  or ``confirm`` only when its cross-validated R1 confirms it."""
  kept = _distinct_models(f_obs, models, standardisation, weights, start)
  for i, c in enumerate(kept):
    c.label = "%s %d (%sR1 %.3f)" % (name, i + 1, guess and guess + ", ",
                                      c.terms["model_r1"])
  r1 = [c.terms["model_r1"] for c in kept]
  # Atoms of unknown element fit more: models mostly of them stand out only
  # below UNKNOWN_R1 (a few heavy ones among carbon atoms: as any guess).
  unknown = bool(kept) and atom_search_engine.mostly_unknown(kept[0].model.elements)
  most = atom_search_engine.UNKNOWN_R1 if unknown else atom_search_engine.GUESSED_R1
  decisive = atom_search_engine.decisive(r1, limit=min(most, atom_search_engine.DECISIVE_R1))
  if decisive or (s.composition_guessed and atom_search_engine.decisive(r1, limit=most)):
    best = kept[0]
    free = best.terms["model_free_r1"] = atom_search_engine.model_free_r1(
      f_obs, best.model)
    if not s.composition_guessed and not confirm:
      best.terms["decisive"] = 1.0
    elif atom_search_engine.confirmed(r1[0], free):
      # A guessed composition is only a guess: its model stands for the
      # solution only when the cross-validated R1 confirms it (Bridgmanite at
      # 2.0 A, two carbon atoms for MgSiO3: a wrong model of R1 0.057 stood
      # out, unconfirmed, and was chosen as probably solved).
      best.terms["decisive" if decisive else "stands_out"] = 1.0
  elif len(kept) > 1 and r1[0] < atom_search_engine.CLEAR_GAP * r1[1] and \
      (not unknown or r1[0] < most):
    free = [atom_search_engine.model_free_r1(f_obs, c.model)
            for c in kept]
    if atom_search_engine.clear(r1, free):
      kept[0].terms["model_free_r1"] = free[0]
      kept[0].terms["clear"] = 1.0
  if kept and not s.composition_guessed and not unknown and \
      not any(kept[0].terms.get(m) for m in ("decisive", "stands_out", "clear")) and \
      atom_search_engine.molecular(dict.fromkeys(kept[0].model.elements, 1)) and \
      atom_search_engine.decisive(r1, limit=most):
    # A given molecular composition's model leaves its hydrogen atoms out,
    # as a guess's does: standing out up to GUESSED_R1 and confirmed, it is
    # probably the solution (biphenyl at 1.6 A: the right model, R1 0.108,
    # the only solution of every search, was called not solved).
    free = kept[0].terms["model_free_r1"] = atom_search_engine.model_free_r1(
      f_obs, kept[0].model)
    if atom_search_engine.confirmed(r1[0], free):
      kept[0].terms["stands_out"] = 1.0
  return kept


def _marked(candidates):
  return any(c.terms.get("decisive") or c.terms.get("stands_out") for c in candidates)


def _alternative_atom_candidates(f_obs, compositions, standardisation, weights, s):
  """The atom search for a composition and its alternatives
  (``compositions``: the first, then the others, tried in turn): the first
  composition's candidates (with a second search where
  :meth:`SearchSettings.retries_atom_search`); where none of them stands
  out, each further composition in turn (until one's model is decisive),
  and beside the first's candidates those of every one whose model stands
  out and of the one whose best model fits best (lowest R1).

  The alternatives are either guessed compositions
  (:func:`phai_cctbx.composition_guess.heavier_alternatives`, where
  ``s.composition_guessed``: a model stands for the solution only when
  confirmed) or, for a formula given without Z, its other plausible numbers
  of formula units per cell
  (:func:`phai_cctbx.composition_guess.formula_unit_choices`).  They are at
  most a few, each search bounded in placements
  (:data:`phai_cctbx.atom_search.MAX_WORK`), and all of them run whatever
  ``time_limit`` says.  Labels name the composition (atoms per asymmetric
  unit) where there are alternatives or it is a guess.  Returns
  (candidates, the compositions tried, the best one (the best-fitting of
  those whose model stands out, else the best-fitting), searches run)."""
  from phai_cctbx.composition_guess import describe
  group = f_obs.space_group()
  named = s.composition_guessed or len(compositions) > 1
  label = lambda counts: describe(counts, group) if named else ""
  first, searches = _atom_candidates(f_obs, compositions[0], standardisation, weights, s,
                                     label(compositions[0]),
                                     retry=s.retries_atom_search(compositions[0]))
  tried, best, best_counts = [compositions[0]], first, compositions[0]
  marked = []   # (candidates, composition) of the further ones whose model stands out
  if not _marked(first):
    for counts in compositions[1:]:
      if atom_search_atoms(s, f_obs, counts) is None:
        continue
      kept, runs = _atom_candidates(f_obs, counts, standardisation, weights, s, label(counts),
                                    retry=s.retries_atom_search(counts))
      tried.append(counts)
      searches += runs
      if not kept:
        continue
      if _marked(kept):
        marked.append((kept, counts))
      if not best or kept[0].terms["model_r1"] < best[0].terms["model_r1"]:
        best, best_counts = kept, counts
      if kept[0].terms.get("decisive"):   # R1 below DECISIVE_R1 (confirmed if a guess)
        break
  found = first + [c for kept, _ in marked for c in kept]
  if best is not first and all(best is not kept for kept, _ in marked):
    found += best
  if marked:
    # A composition whose model stands out (confirmed, if a guess) outranks
    # one that only fits better: atoms of unknown element fit most data.
    best_counts = min(marked, key=lambda m: m[0][0].terms["model_r1"])[1]
  return found, tried, best_counts, searches


#: Rounds of the search from map peaks at most where the atoms it places
#: are mostly of unknown element (:func:`phai_cctbx.atom_search.mostly_unknown`,
#: the models held to its R1 limit): Cryolite at 2.0 A without its
#: composition (31 reflections, X5.25 per asymmetric unit) got a wrong
#: model of R1 0.019 (r 0.31) in the fourth round, clear enough to be
#: called probably solved; with two rounds it stays not solved.
UNKNOWN_PEAK_ROUNDS = 2


def runs_omit_refinement(settings, f_obs):
  """Whether the search with ``settings`` ends, while nothing is called
  solved, with omit-map refinement for ``f_obs`` (only
  :func:`below_atomic_resolution`)."""
  return settings.method in ("auto", "dual_space") and settings.omit_refinement > 0 \
    and below_atomic_resolution(f_obs)


def runs_peak_search(settings, f_obs):
  """Whether the search with ``settings`` ends, while nothing is called
  solved and the atom search has atoms to place (even where the time limit
  skipped its stage), with atom searches from the peaks of the
  best maps (:func:`_peak_candidates`; only :func:`below_atomic_resolution`)."""
  return settings.method in ("auto", "dual_space") and settings.peak_maps > 0 \
    and below_atomic_resolution(f_obs)


def peak_sites(f_obs, phases, n):
  """Fractional sites (P, 3) of up to ``n`` peaks of the E-map of ``phases``
  (``f_obs``'s group and setting), highest first, one per symmetry-unique
  site, 0.8 A apart at least (at 2.0 A bonded atoms merge at 1.0 A)."""
  from phai_cctbx import model_building
  coeffs, _ = model_building.map_coefficients(f_obs, phases, "E")
  peaks = model_building.find_peaks(coeffs, min_distance=0.8, max_peaks=n)
  return np.array([p[0] for p in peaks], dtype=float).reshape(-1, 3)


#: The most compositions :func:`_first_map_candidates` places.
FIRST_MAP_COMPOSITIONS = 2


def first_map_compositions(settings, f_obs, composition, heavy_guesses=()):
  """The compositions (counts per cell) placed from the peaks of the first
  stage's best map (:func:`_first_map_candidates`), at most
  :data:`FIRST_MAP_COMPOSITIONS`: below atomic resolution (where the search
  from map peaks runs, :func:`runs_peak_search`), a given composition the
  search from map peaks can place, and the completions of the heavy atoms
  of unknown element (``heavy_guesses``:
  :func:`phai_cctbx.composition_guess.heavy_unknown_guesses`); for a
  guessed composition those completions, else the guess itself.  Their
  heavy atoms' scattering is fitted, so that one model of a few atoms of
  unknown element beside carbon fits a molecule with S, Cl or a metal as
  well as one of light atoms only.  Empty where the search from map peaks
  does not run, or with ``first_map`` off."""
  if not settings.first_map or not runs_peak_search(settings, f_obs) or not composition:
    return []
  completions = [c for _, c in heavy_guesses]
  if settings.composition_guessed:
    out = completions or [composition]
  else:
    out = [composition] + completions
  return [c for c in out if peak_search_atoms(settings, f_obs, c) is not None][
    :FIRST_MAP_COMPOSITIONS]


def _first_map_candidates(f_obs, compositions, source, standardisation, weights, s):
  """Candidates of atom searches of each of ``compositions`` in turn from
  the peaks of one map, ``source``'s (:func:`_peak_candidates`), until one
  gives a decisive model (confirmed by its cross-validated R1, as every
  model placed from map peaks).  Run where two or more of the first random
  dual-space starts ended in that map, before the atom searches from random
  placements: a decisive model then ends the search at once (its figure of
  merit, :data:`DECISIVE_ATOM_FOM`, is that of "solved").

  Why: below atomic resolution random starts often reach the right map
  early without a figure of merit that calls it solved, and the random
  atom searches of a guessed composition then took minutes: MERQIM
  (C8 S2, no composition, 1.6 A) took 348 s to reach the model C9 X2 of
  R1 0.071 that the peaks of its first right map give in seconds.
  Only a decisive model is kept: the others, placed from one map, would
  compete for the choice by their held-out correlation before the later
  stages had run (XULDUD01 at 2.0 A with its composition: a wrong model of
  R1 0.111 from the first map was chosen, r 0.44, where the search had
  found the right one, r 0.995).  So where no model is decisive the search
  goes on as without this stage.  Returns (the candidates of the
  composition whose model is decisive, or none)."""
  for counts in compositions:
    found = _peak_candidates(f_obs, counts, [source], standardisation, weights, s,
                             name="first map")
    if any(c.terms.get("decisive") for c in found):
      return found
  return []


def _peak_candidates(f_obs, counts, sources, standardisation, weights, s, round_no=1,
                     name="map", placements=atom_search_engine.PEAK_PLACEMENTS, marks=True):
  """Candidates of atom searches of ``counts`` started at the peaks of each
  of ``sources``' E-maps (:func:`phai_cctbx.atom_search.from_peaks`, twice
  as many peaks as atoms kept), marked as those of the random search
  (:func:`_model_candidates`), confirmed by the cross-validated R1 in
  any case.  Measured on calculated data at 2.0 A (the
  composition given): aspirin ACSALA20 and ACSALA04, whose random searches
  ended at r 0.91 and 0.76 and stood unsolved, gave models of R1 0.112 and
  0.167, r 1.00 and 0.98.  ``marks``: False where no model may stand
  out (the heavy atoms repeat under a pseudo-translation:
  :func:`_heavy_atom_candidates`).  ``round_no``: the round of the search (in the
  labels after the first); ``name``: what the sources are, for the labels
  ("peak atom model" from a "map"); ``placements``: from each map."""
  atoms = peak_search_atoms(s, f_obs, counts)
  if atoms is None or not sources:
    return []
  peaks = [peak_sites(f_obs, c.phases, 2 * len(atoms[0])) for c in sources]
  models = atom_search_engine.from_peaks(f_obs, counts, [p for p in peaks if len(p)],
                                         restarts=placements, seed=s.random_seed,
                                         keep=ATOM_MODELS,
                                         max_atoms=len(atoms[0]))
  guess = ""
  if s.composition_guessed or atom_search_engine.heavy_unknown(counts):
    from phai_cctbx.composition_guess import describe
    guess = describe(counts, f_obs.space_group())
  if round_no > 1:
    guess = "round %d" % round_no + (guess and ", " + guess)
  # Placements that start at one map's peaks agree with each other whether
  # right or wrong, so that their agreement says less than that of random
  # placements: a model that stands out counts only when confirmed.
  kept = _model_candidates(f_obs, models, standardisation, weights, s, "peak atom model",
                           guess, name + " peaks", confirm=True)
  if not marks:
    for c in kept:
      for mark in ("decisive", "clear", "stands_out"):
        c.terms.pop(mark, None)
  return kept


def _dual_space_candidates(f_obs, problem, starts, labels, start_names, settings, standardisation):
  """Candidates of dual-space runs, the snapshots of a run (labelled with
  their flipping cycles) after all the runs' end points.  Only the end
  point of a random start is independent: its snapshots would count its
  own answer again as agreement."""
  runs = dual_space_engine.run(f_obs, starts, settings, problem=problem, labels=start_names)
  out = []
  for k, r in enumerate(runs):
    label = labels[k % len(labels)]
    if r.snapshot:
      label += " after %d cycles" % r.snapshot
    cand = Candidate(label=label, method="dual_space", start=r.start, phases=r.phases,
                     signs=list_signs(standardisation, f_obs, r.phases),
                     independent=r.start == "random" and not r.snapshot)
    if r.snapshot and r.start == "random":
      cand.snapshot_of = out[k % len(labels)]
    cand.terms["flip_r1"] = r.r1
    cand.terms["origin_cc"] = r.origin_cc
    out.append(cand)
  return out


def run(f_obs, standardisation, set_amplitudes, set_measured, model, settings=None,
        log_stage=None, composition=None, alternatives=(), heavy_guesses=()):
  """The hybrid search; returns a :class:`SearchResult`.

  Args:
    f_obs: merged amplitudes (data's group and setting).
    standardisation: its symmetry.Standardisation.
    set_amplitudes, set_measured: the network's input on its list.
    model: a loaded network, or a callable that returns one when first
      needed (unused for method="dual_space").
    log_stage: callable(str) told of each stage as it ends.
    composition: element -> atoms per unit cell of ``f_obs``'s cell, for
      the atom search (None: no atom search).
    alternatives: further compositions tried when the first gives no model
      that stands out (:func:`_alternative_atom_candidates`): guessed ones
      where ``settings.composition_guessed``, else the formula's other
      numbers of formula units per cell.
    heavy_guesses: (heavy atoms, the whole asymmetric unit) of heavy atoms
      of unknown element searched for alone, the rest placed from their
      maps' peaks, where no model of the atom search is decisive: with a
      guessed composition, or a given one beyond the random atom search
      and the search from map peaks without heavy atoms to search for by
      element
      (:func:`phai_cctbx.composition_guess.heavy_unknown_guesses`).
  """
  s = settings or SearchSettings()
  t0 = time.time()
  pseudo = dual_space_engine.pseudo_translation(f_obs)
  if pseudo is not None:
    s = dataclasses.replace(s, dual_space=dataclasses.replace(
      s.dual_space, pseudo_translation=tuple(float(x) for x in pseudo)))
  if not below_atomic_resolution(f_obs):
    s = dataclasses.replace(s, dual_space=dual_space_engine.at_atomic_resolution(s.dual_space))
  problem = dual_space_engine.P1Problem(f_obs, s.dual_space.resolution_factor,
                                 s.dual_space.weak_fraction, s.dual_space.extend)
  weights = np.where(set_measured, set_amplitudes, 0.0)
  candidates, stages, network = [], [], None
  random_engine = dataclasses.replace(s.dual_space, snapshots=tuple(s.snapshots))
  rng = np.random.default_rng(s.random_seed)

  reached = [False]  # a stage's best candidate reached stop_fom
  net = []            # the network's candidates, once its trials ran

  def assessed():
    assess(candidates, problem, weights, held_out_cycles=s.dual_space.held_out_cycles)
    if log_stage is not None:
      log_stage(stages[-1], candidates)
    return candidates[top_candidate(candidates, s.choice)].fom

  def done():
    best = assessed()
    calls = s.stop_fom is not None and best >= s.stop_fom
    if calls and not reached[0] and checks_network():
      # The call stands only if it still picks the solution beside the
      # network's trials; else the search goes on.
      network_stage()
      best = assessed()
      calls = best >= s.stop_fom
    reached[0] = reached[0] or calls
    return reached[0] or timed_out()

  def timed_out():
    return work_seconds(problem) > s.time_limit

  def checks_network():
    # Below atomic resolution dual-space runs can agree on a near-solution
    # (with few reflections, all random starts end at the same few wrong
    # signs) and call it solved; the network's trials, a second or so, then
    # still compete for the choice.  At atomic resolution they are not needed
    # and can only take the choice from a right dual-space solution.
    return (s.method == "auto" and s.network_check and not net and not timed_out()
            and below_atomic_resolution(f_obs))

  def network_stage():
    nonlocal model, network
    from phai_cctbx import phasing  # torch: only when the network runs
    if callable(model) and not hasattr(model, "amplitude_scaling"):
      model = model()
    network = phasing.phase_reflection_set(
      set_amplitudes, set_measured, model, trials=s.trials, cycles=s.cycles,
      random_seed=s.random_seed)
    net[:] = _network_candidates(network, standardisation, f_obs, "network trial",
                                 lambda t: "zero phases" if t == 0 else "random signs")
    for k, frame in enumerate(other_frames(standardisation, s.network_frames - 1)):
      net.extend(_frame_candidates(frame, k + 2, standardisation, f_obs, model, s))
    candidates.extend(net)
    stages.append("network")

  stop = False
  if s.method in ("auto", "dual_space") and s.starts > 0:
    starts = problem.random_phases(s.starts, rng)
    candidates += _dual_space_candidates(
      f_obs, problem, starts,
      ["dual-space random %d" % (i + 1) for i in range(s.starts)],
      ["random"] * s.starts, random_engine, standardisation)
    stages.append("dual-space from random phases" + (
      "" if pseudo is None else ", of the two origins half a pseudo-translation "
      "(%g, %g, %g) apart the one that fits clearly better" % tuple(pseudo)))
    stop = done()
  # Also after a call: its map's peaks confirm it or, where they give a
  # decisive model of other phases, void it.  A near-solution of few wrong
  # signs that all random starts reach is called solved as readily as the
  # solution (2.0 A, the epoxide of the development structures: 15 of 16
  # starts, r 0.89, FOM 0.82); the atoms of its map's peaks are right
  # (R1 0.063, decisive, r 1.00), in seconds.
  first_map = first_map_compositions(s, f_obs, composition, heavy_guesses) \
    if pseudo is None else []
  lead = candidates[top_candidate(candidates, s.choice)] if candidates else None
  if first_map and lead is not None and lead.terms.get("agreement", 0.0) > 0.0:
    from phai_cctbx.composition_guess import describe
    found = _first_map_candidates(f_obs, first_map, lead, standardisation, weights, s)
    candidates += found
    stages.append("atoms from the peaks of the first map (%s)%s" % (", ".join(
      describe(c, f_obs.space_group()) for c in first_map), "" if found else ": none decisive"))
    stop = done()
  atoms = atom_search_atoms(s, f_obs, composition)
  peak_counts = composition if peak_search_atoms(s, f_obs, composition) is not None else None
  if atoms is not None and not stop:
    from phai_cctbx.composition_guess import describe
    # Atom searches do not count against time_limit (a bounded amount of
    # work), so that the stages after them still run where they do not decide.
    found, tried, best_counts, searches = _alternative_atom_candidates(
      f_obs, [composition] + list(alternatives), standardisation, weights, s)
    candidates += found
    if peak_counts is not None or s.composition_guessed:
      peak_counts = best_counts
    if len(tried) > 1 or s.composition_guessed:
      stages.append("atom search (%d atoms: %s)" % (len(atoms[0]), ", ".join(
        describe(c, f_obs.space_group()) for c in tried)))
    else:
      stages.append("atom search (%d atoms%s)" % (
        len(atoms[0]), ", a second search: none decisive" if searches > 1 else ""))
    stop = done()
  # Like the guesses of the atom search, whatever time_limit says (a bounded
  # amount of work), so that the answer does not depend on the machine; not
  # only where no model stands out: a guess's model that stands out is not
  # chosen before the others (Vauquelinite at 2.0 A: C9 S3, R1 0.128, r 0.96,
  # below a wrong map's held-out correlation), a decisive one is.
  if heavy_guesses and s.heavy_atoms and not reached[0] and \
     not any(c.terms.get("decisive") for c in candidates):
    from phai_cctbx.composition_guess import describe
    fitted = [c.terms["model_r1"] for c in candidates if c.model is not None]
    found, completion, r1 = _heavy_unknown_candidates(
      f_obs, heavy_guesses, standardisation, weights, s)
    candidates += found
    # The later searches from map peaks place the guess that fits best; a
    # given composition they can place stays.
    if completion is not None and (peak_counts is None or (
        s.composition_guessed and (not fitted or r1 < min(fitted)))):
      peak_counts = completion
    stages.append("heavy atoms of unknown element (%s), the rest from their maps' peaks"
                  % ", ".join(describe(h, f_obs.space_group(), any_element=False)
                              for h, _ in heavy_guesses))
    stop = done()
  heavy = heavy_search_counts(s, f_obs, composition) if atoms is None else None
  peak_marks = True   # models of the search from map peaks may stand out
  if heavy is not None and not stop:
    found, n, pseudo = _heavy_atom_candidates(f_obs, composition, heavy, standardisation,
                                              weights, s)
    candidates += found
    peak_marks = pseudo is None
    stages.append("heavy-atom search (%g atoms%s), the whole asymmetric unit from its "
                  "maps' peaks" % (n, "" if pseudo is None else
                                   ", a pseudo-translation (%g, %g, %g)" % tuple(pseudo)))
    stop = done()
  if runs_sign_combinations(s, f_obs) and not stop:
    starts = dual_space_engine.sign_combination_starts(problem, s.sign_combinations)
    if len(starts):
      for mode in s.sign_modes:
        engine = dataclasses.replace(s.dual_space, cycles=0) if mode == "refine" \
          else s.dual_space
        name = "refined" if mode == "refine" else "dual-space from"
        candidates += _dual_space_candidates(
          f_obs, problem, starts,
          ["%s sign combination %d" % (name, i + 1) for i in range(len(starts))],
          ["sign combination"] * len(starts), engine, standardisation)
      stages.append("dual-space from %d sign combinations" % len(starts))
      stop = done()
  if s.method in ("auto", "network") and not stop:
    if not net:
      network_stage()
      stop = done()
    if s.method == "auto" and not stop:
      starts = np.stack([problem.phases_from(c.phases) for c in net])
      candidates += _dual_space_candidates(
        f_obs, problem, starts,
        ["dual-space from %s" % c.label for c in net],
        [c.label for c in net], s.dual_space, standardisation)
      if s.refine_network:
        # The same seeds refined without flipping: low-density elimination
        # alone keeps right phases where flipping moves them (at 2.0 A the
        # true phases stay at r > 0.95 in 38 of the 41 development
        # structures, against 13 with flipping).  Off by default: with the
        # shipped network it solved no more of them at 1.6 or 2.0 A, at
        # about 1 s more per data set; it is for a network that finishes
        # partial solutions.
        candidates += _dual_space_candidates(
          f_obs, problem, starts,
          ["refined %s" % c.label for c in net],
          [c.label for c in net], dataclasses.replace(s.dual_space, cycles=0),
          standardisation)
      stages.append("dual-space from the network")
      stop = done()
      if s.network_seeds and not stop:
        # Its own random numbers: the random starts stay those of method=dual_space.
        starts, labels, origins = partial_seeds(
          problem, net, s.network_seeds, np.random.default_rng(s.random_seed + 1))
        candidates += _dual_space_candidates(
          f_obs, problem, starts, labels, origins, s.dual_space, standardisation)
        stages.append("dual-space from the network's confident signs")
        stop = done()
      if s.recycle > 0 and not stop:
        ds = distinct([c for c in candidates if c.method == "dual_space"],
                      weights, s.recycle)
        start_signs = np.stack([c.signs for c in ds])
        from phai_cctbx import phasing
        again = phasing.phase_reflection_set(
          set_amplitudes, set_measured, model, cycles=s.cycles,
          start_signs=start_signs)
        more = _network_candidates(again, standardisation, f_obs, "network from",
                                   lambda t: ds[t].label)
        for c in more:
          c.label = "network from %s" % c.start
        candidates += more
        stages.append("network from dual-space")
        stop = done()
  if s.method in ("auto", "dual_space") and s.starts > 0 and not stop:
    added = 0
    while added < s.more_starts and not stop:
      n = min(s.starts, s.more_starts - added)
      first = s.starts + added
      candidates += _dual_space_candidates(
        f_obs, problem, problem.random_phases(n, rng),
        ["dual-space random %d" % (first + i + 1) for i in range(n)],
        ["random"] * n, random_engine, standardisation)
      added += n
      stages.append("dual-space from %d more random phases" % added)
      stop = done()
  # Nothing called solved: the stages of refinement, which run after the
  # time limit too (a few seconds, and up to about a minute for the peaks).
  final = not reached[0]
  if runs_omit_refinement(s, f_obs) and final:
    sources = best_distinct(candidates, weights, s.omit_refinement)
    if sources:
      candidates += _omit_candidates(f_obs, problem, sources, standardisation,
                                     s.dual_space.pseudo_translation)
      stages.append("omit-map refinement (%d)" % len(sources))
      done()
  if runs_peak_search(s, f_obs) and peak_counts is not None and final:
    # Four rounds by default (peak_rounds): a larger molecule's models of
    # the first two rounds are often half right, and their maps cleaner
    # than those they came from.  COD 4021067 at 1.6 A (21 atoms, 342
    # reflections): best models R1 0.321, 0.290, then 0.170 in round 3
    # (r 0.99); COD 7102386 at 2.0 A (23 atoms): 0.202, 0.192 (r 0.87),
    # then 0.115 (r 0.996).  The best R1 falls little before such a round,
    # as in rounds that find nothing, so no gain rule decides whether the
    # next one runs.  Atoms of unknown element, whose fitted scattering
    # lets wrong models fit, stop after UNKNOWN_PEAK_ROUNDS: each round is
    # one more draw at such a model.
    pool = candidates
    rounds = s.peak_rounds
    if atom_search_engine.mostly_unknown(
        atom_search_engine.asymmetric_unit_atoms(peak_counts, f_obs.space_group())[0]):
      rounds = min(rounds, UNKNOWN_PEAK_ROUNDS)
    for k in range(max(1, rounds)):
      sources = best_distinct(pool, weights, s.peak_maps)
      found = _peak_candidates(f_obs, peak_counts, sources, standardisation, weights, s,
                               round_no=k + 1, marks=peak_marks)
      if not found:
        break
      candidates += found
      stages.append("atom search from the peaks of %d map%s%s"
                    % (len(sources), "s" if len(sources) > 1 else "",
                       "" if k == 0 else " of peak models (round %d)" % (k + 1)))
      done()
      if reached[0]:
        break
      pool = found
  best = choose(candidates, weights, f_obs, standardisation, rule=s.choice, problem=problem,
                held_out_cycles=s.dual_space.held_out_cycles)
  chosen = candidates[best]
  if "r1" not in chosen.terms:  # a consensus: its own map terms
    chosen.terms.update(map_terms(problem, chosen.phases, s.dual_space.held_out_cycles))
  return SearchResult(candidates=candidates, best=best, network=network, problem=problem,
                      stages=stages, seconds=time.time() - t0)
