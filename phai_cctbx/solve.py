"""Phasing a cctbx miller array with PhAI: the Python entry point.

    import phai_cctbx                      # before torch
    from phai_cctbx.solve import solve
    result = solve(miller_array)           # amplitudes or intensities with symmetry
    result.phases, result.fom, result.phased

:func:`solve` merges the data and turns intensities into amplitudes
(:mod:`phai_cctbx.amplitudes`), brings them to the network's P 1 21/c 1 frame
(:mod:`phai_cctbx.symmetry`), runs the network's trials
(:mod:`phai_cctbx.phasing`) and brings the chosen signs back to the original
space group and setting.
"""
from __future__ import absolute_import, division, print_function

import sys
import time

import numpy as np

from cctbx import miller
from cctbx.array_family import flex
from libtbx.utils import Sorry

from phai_cctbx import amplitudes as amplitudes_module
from phai_cctbx import atom_search as atom_search_module
from phai_cctbx import reflection_set
from phai_cctbx import search as search_module
from phai_cctbx import symmetry as symmetry_module

#: Fewest measured unique reflections phased at all; below FEW_REFLECTIONS
#: the log and the JSON carry a warning (the PhAI paper's Fig. 5A example was
#: solved from 16).
MIN_REFLECTIONS = 10
FEW_REFLECTIONS = 50

METHODS = ("auto", "network", "dual_space")

#: Verdict levels of the chosen candidate's figure of merit
#: (:func:`phai_cctbx.search.figure_of_merit`, an estimate of the chance that
#: the phases are right), lowest FOM of each level, with what the level means
#: and what to do next.  Checked with phai.benchmark on calculated data of
#: the 41 development structures at 1.0, 1.6 and 2.0 A (122 cases phased;
#: the solution picked by the held-out correlation over every held-out
#: reflection): of the cases called solved (FOM >= 0.8), 60 of 62 had
#: r > 0.95; probably solved (0.5-0.8), 6 of 6; partial (0.3-0.5), 4 of 6;
#: not solved, 10 of 48 (before it, 59 of 60, 6 of 7, 4 of 7, 10 of 48).
#: With 48 more random starts while nothing is solved (the default since):
#: 61 of 63, 4 of 5, 7 of 9 and 15 of 45.
#: Left out one structure at a time in the fit of the figure of merit
#: (with the earlier held-out correlation): 59 of 61, 9 of 9, 3 of 8 and
#: 10 of 45.
VERDICTS = (
  ("solved", 0.80, "the phases are reliable: build and refine the model "
                   "(PREFIX.res with shelxl or olex2)."),
  ("probably solved", 0.50, "most phases are likely right: check the map and "
                            "the starting model before refining."),
  ("partial", 0.30, "part of the structure may be right: try more starts "
                    "(phasing.dual_space.more_starts=200, phasing.trials) or give "
                    "elements=."),
  ("not solved", -1.0, "no reliable solution: the data may not suffice at this "
                       "resolution; try more starts (phasing.dual_space.more_starts=200) "
                       "or better data."),
)
SOLVED_FOM = VERDICTS[0][1]
#: Figure of merit given to each reflection phased by a dual-space candidate:
#: the level's share of right answers in the benchmark above, both held-out
#: correlations pooled (119 of 122, 12 of 13, 8 of 13, 20 of 96).
LEVEL_FOM = {"solved": 0.98, "probably solved": 0.92, "partial": 0.62, "not solved": 0.21}


def verdict(fom):
  """(level, advice) for a figure of merit."""
  for level, lowest, advice in VERDICTS:
    if fom >= lowest:
      return level, advice
  return VERDICTS[-1][0], VERDICTS[-1][2]


class SolveResult(object):
  """What :func:`solve` found.

  Attributes:
    f_obs: merged amplitudes (original group and setting).
    phases: phases in degrees of the measured reflections the list covers.
    fom: per-reflection figure of merit (same reflections as ``phases``).
    phased: complex map coefficients FOM * F_obs * exp(i phase).
    extended: phases (degrees) of reflections of the list that were not
      measured (phase extension), original group and setting.
    extended_fom: their figures of merit.
    phasing: the network's phasing.PhasingResult (all trials), None when the
      network did not run.
    search: the search.SearchResult (every candidate); chosen: the chosen
      search.Candidate; method: the phasing method.
    warnings: list of one-line warnings (also in the log).
    set_amplitudes, set_measured: the network's input (1205,).
    standardisation: the symmetry.Standardisation used.
    amplitudes: the amplitudes_module.Amplitudes record.
    mapping: dict of counts from putting the data on the list.
    back: the symmetry.BackTransform of the measured reflections.
    verdict: "solved", "probably solved", "partial" or "not solved"
      (:data:`VERDICTS`); advice: what to do next, one line.
    timings: dict of seconds per step.
    atom_model: where the chosen phases are an atom model's of a given (not
      guessed) composition, that atom_search.AtomModel (the starting model
      keeps its atoms and elements), else None.
    model_building: the starting_model.ModelBuilding of the run, or None
      (set by the program after phasing).
  """

  model_building = None

  def __init__(self, **kwds):
    self.__dict__.update(kwds)

  @property
  def best_trial(self):
    """The network's best trial (0-based), or None without the network."""
    return None if self.phasing is None else int(self.phasing.best)

  def summary(self):
    """A JSON-ready dict of the run."""
    ph = self.phasing
    cs = self.f_obs.crystal_symmetry()
    trials = []
    for t in range(len(ph.fom) if ph is not None else 0):
      entry = {"trial": t + 1, "fom": float(ph.fom[t]),
               "cycles": int(ph.cycles_run[t]), "converged": bool(ph.converged[t])}
      for name, values in sorted(ph.fom_terms.items()):
        entry[name] = float(values[t])
      trials.append(entry)
    std = self.standardisation
    out = {
      "verdict": self.verdict,
      "advice": self.advice,
      "method": self.method,
      "chosen": self.chosen.label,
      "fom": float(self.chosen.fom),
      "candidates": [c.summary() for c in self.search.candidates],
      "stages": list(self.search.stages),
      "warnings": list(self.warnings),
      "best_trial": None if ph is None else self.best_trial + 1,
      "best_fom": None if ph is None else float(ph.fom[ph.best]),
      "trials": trials,
      "space_group": str(cs.space_group_info()),
      "space_group_number": cs.space_group_info().type().number(),
      "unit_cell": list(cs.unit_cell().parameters()),
      "change_of_basis_to_p21c": std.cb_op.as_abc(),
      "p21c_unit_cell": list(std.p21c_symmetry.unit_cell().parameters()),
      "supergroup": bool(std.is_supergroup),
      "data": self.amplitudes.as_dict(),
      "reflection_list": dict(self.mapping),
      "n_phased": int(self.phases.size()),
      "n_extended": int(self.extended.size()),
      "mean_fom": float(flex.mean(self.fom.data())) if self.fom.size() else 0.0,
      "symmetry_check": None if self.back is None else {
        "n_with_equivalents": int(self.back.n_with_equivalents),
        "n_disagreeing": int(self.back.n_disagreeing),
        "disagreement": float(self.back.disagreement),
      },
      "weights": self.weights_source,
      "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
    }
    if self.model_building is not None:
      out["model_building"] = self.model_building.summary()
    return out


def _print(log, text=""):
  if log is not None:
    print(text, file=log)


def reflection_set_in_original(standardisation):
  """Miller set (original group and setting) of the reflections the list covers."""
  std = standardisation
  keep = (reflection_set.unique_mate() == np.arange(len(reflection_set.indices()))) \
    & ~reflection_set.systematic_absences()
  idx = flex.miller_index([tuple(int(x) for x in h) for h in reflection_set.indices()[keep]])
  ms = miller.set(std.p21c_symmetry, idx, anomalous_flag=False)
  p1 = ms.expand_to_p1().change_basis(std.cb_op.inverse())
  orig = p1.customized_copy(crystal_symmetry=std.original_symmetry).map_to_asu()
  sel = ~std.original_symmetry.space_group().is_sys_absent(orig.indices())
  orig = orig.select(sel)
  # unique indices
  seen = set()
  keep_idx = flex.bool(orig.size(), False)
  for i, h in enumerate(orig.indices()):
    if h not in seen:
      seen.add(h)
      keep_idx[i] = True
  return orig.select(keep_idx)


def _trial_lines(ph):
  names = sorted(ph.fom_terms)
  head = "  trial     FOM  " + "  ".join("%10s" % n for n in names) + "  cycles  converged"
  lines = [head]
  for t in range(len(ph.fom)):
    mark = " <- best" if t == ph.best else ""
    lines.append("  %5d  %6.3f  " % (t + 1, ph.fom[t])
                 + "  ".join("%10.3f" % ph.fom_terms[n][t] for n in names)
                 + "  %6d  %9s%s" % (ph.cycles_run[t], "yes" if ph.converged[t] else "no", mark))
  return lines


def _candidate_lines(candidates, best, shown=20):
  """Log lines of the candidates, the best held-out correlation (what picks
  the solution) first; the first ``shown`` and the chosen one (the JSON
  lists them all)."""
  names = ["held_out_cc", "r1", "agreement", "skewness"]
  lines = ["  %-52s %7s  %s" % ("candidate", "FOM", "  ".join("%11s" % n for n in names))]
  order = sorted(range(len(candidates)), key=lambda i: (
    -candidates[i].terms.get("held_out_cc", -1.0), -candidates[i].fom))
  for rank, i in enumerate(order):
    if rank >= shown and i != best:
      continue
    c = candidates[i]
    lines.append("  %-52s %7.3f  %s%s" % (
      c.label[:52], c.fom, "  ".join("%11.3f" % c.terms.get(n, float("nan")) for n in names),
      "  <- chosen" if i == best else ""))
  if len(order) > len(lines) - 1:
    lines.append("  ... and %d more (all in the JSON file)" % (len(order) - len(lines) + 1))
  return lines


def _complete(chosen, candidates, f_obs, amplitudes):
  """Phases of every measured reflection: the chosen candidate's, and for the
  reflections it does not phase (beyond the network's list), those of the
  dual-space candidate that agrees with it best."""
  if chosen.phases.size() >= f_obs.size():
    return chosen.phases, None
  ds = [c for c in candidates if c.method == "dual_space"]
  if not ds:
    return chosen.phases, None
  corr = [search_module.agreement(chosen, c, amplitudes) for c in ds]
  donor = ds[int(np.argmax(corr))]
  rest = donor.phases.lone_set(chosen.phases)
  phases = chosen.phases.concatenate(rest)
  return phases, donor


def solve(miller_array, model=None, weights=None, trials=8, cycles=16,
          random_seed=0, log=None, intensity_treatment="french_wilson",
          min_reflections=MIN_REFLECTIONS, device="cpu", precision="auto",
          method="auto", dual_space_starts=16, dual_space_cycles=200,
          recycle=4, time_limit=120.0, stop_early=True, dual_space_more_starts=48,
          refine_network=False, network_seeds=(), sign_combinations=8,
          network_check=True, network_frames=1, omit_refinement=4,
          composition=None, atom_search=True, atom_restarts=2048,
          guess_composition=True, elements=None, peak_maps=4,
          peak_rounds=4, atom_retry=True, composition_alternatives=(), heavy_atoms=True,
          first_map=True):
  """Phase amplitudes or intensities (a cctbx miller array with crystal symmetry).

  Args:
    miller_array: real miller array of intensities or amplitudes with its
      crystal symmetry (space group No. 14 in any setting, or C2/c, Pbca,
      Pnma, Pbcn, C2/m); merged or not.
    model: a loaded network (phai_cctbx.weights.load_model); None loads
      ``weights`` (None: the shipped default weights) when the search first
      needs the network.
    trials, cycles, random_seed: the network's trials.
    log: file-like object for the log (None: silent).
    intensity_treatment: "french_wilson" or "truncate_at_zero".
    min_reflections: fewest measured unique reflections to phase.
    method: "auto" (network and dual-space, each seeding the other),
      "network" or "dual_space" (see :mod:`phai_cctbx.search`).
    dual_space_starts, dual_space_cycles: random dual-space starts, and
      flipping cycles per start at most.
    recycle: distinct dual-space results given back to the network (auto).
    dual_space_more_starts: then, while nothing is solved, up to this many
      more random dual-space starts, in rounds of ``dual_space_starts``.
    refine_network: auto: also refine each network trial by low-density
      elimination alone (no charge flipping).
    network_seeds: auto: fractions of each network trial's most confident
      strong phases that seed partial dual-space starts
      (:func:`phai_cctbx.search.partial_seeds`).
    sign_combinations: for data below atomic resolution, after the first
      random starts, dual-space runs from every combination of the signs of
      this many strongest reflections
      (:func:`phai_cctbx.dual_space.sign_combination_starts`); 0: none.
    time_limit: seconds of dual-space work after which no new stage of the
      search starts: counted, not clocked, so the same on every machine
      (:func:`phai_cctbx.search.work_seconds`).
    stop_early: stop after the first stage whose best candidate is "solved".
    network_check: auto, below atomic resolution: the network's trials run
      even when the dual-space stages before them called a solution; where
      one of them then picks the solution without being called solved, the
      search goes on.
    network_frames: the network's trials in this many of the crystal's
      P2_1/c frames (other cells, other P2_1/c subgroups of a supergroup;
      :func:`phai_cctbx.search.other_frames`): each lays the same data out
      differently on the network's list, and the network makes other guesses.
    omit_refinement: below atomic resolution, when nothing is called
      solved at the end of the search, this many of the best distinct
      candidates refined by omit maps
      (:func:`phai_cctbx.dual_space.omit_refinement`); 0: none.
    composition: element -> atoms per unit cell (the data's cell), e.g. from
      SHELX SFAC/UNIT; with ``atom_search``, methods auto and dual_space
      place that many point atoms to fit the amplitudes while nothing is
      solved after the first random starts (:mod:`phai_cctbx.atom_search`,
      from ``atom_restarts`` random placements; at most
      :func:`phai_cctbx.atom_search.atom_limit` atoms heavier than
      hydrogen in the asymmetric unit).
    atom_retry: where no model of the atom search (a given composition, or
      a guess of atoms of unknown element) is decisive, a second search from
      other random placements, both judged together
      (:meth:`phai_cctbx.search.SearchSettings.retries_atom_search`).
    peak_maps: below atomic resolution, when the atom search has atoms to
      place (whether or not its own stage ran before the time limit) and
      nothing is called solved at the end of the search, atom searches
      started from the peaks of this many of the best distinct maps
      (:func:`phai_cctbx.search._peak_candidates`); 0: none.
    peak_rounds: rounds of that search; each after the first, while
      nothing is called solved, starts from the maps of the best distinct
      models of the round before.
    first_map: below atomic resolution, where two or more of the first
      random dual-space starts end in the map that ranks best, the
      composition placed from that map's peaks before the random atom
      searches (:func:`phai_cctbx.search.first_map_compositions`); a
      decisive model ends the search there.
    composition_alternatives: further compositions (atoms per unit cell)
      tried in turn where the models of ``composition`` do not stand out,
      the best-fitting kept: a formula's other plausible numbers of
      formula units where Z was not given
      (:func:`phai_cctbx.atom_search.cell_count_choices`).
    heavy_atoms: given a composition beyond the random atom search but
      within the search from map peaks, its heavy atoms alone placed first
      and the whole asymmetric unit from the peaks of their best maps
      (:func:`phai_cctbx.search._heavy_atom_candidates`); with a guessed
      composition, or a given one beyond the random atom search and the
      search from map peaks without such heavy atoms, whose models are not
      decisive, the same for one, then two heavy atoms of unknown element
      (:func:`phai_cctbx.composition_guess.heavy_unknown_guesses`), below
      atomic resolution (:func:`phai_cctbx.search.runs_heavy_unknown`).
    guess_composition: without ``composition``, the atom search places the
      atoms of an organic crystal of this cell's volume
      (:func:`phai_cctbx.composition_guess.guess_counts`; ``elements``, the
      element symbols known to be present, name its heavier atoms), then
      the further guesses of
      :func:`phai_cctbx.composition_guess.guessed_alternatives` (sulfur in
      carbon's place, atoms of unknown element).

  Returns a :class:`SolveResult`.  Raises Sorry on unusable input.
  """
  from phai_cctbx import dual_space
  if method not in METHODS:
    raise Sorry("phasing.method must be one of %s (got %s)." % (", ".join(METHODS), method))
  timings = {}
  t0 = time.time()
  if miller_array is None or miller_array.crystal_symmetry() is None:
    raise Sorry("The data have no crystal symmetry: give unit_cell and space_group.")
  if not miller_array.is_real_array():
    raise Sorry("Give amplitudes or intensities (a real miller array).")
  symmetry_module.check_symmetry(miller_array.crystal_symmetry())
  if not (miller_array.is_xray_intensity_array() or miller_array.is_xray_amplitude_array()):
    miller_array = miller_array.customized_copy().set_observation_type_xray_amplitude()
  # Fail early on an unsupported group, before any work.
  std = symmetry_module.prepare(miller_array.crystal_symmetry())
  amps = amplitudes_module.prepare_amplitudes(miller_array, treatment=intensity_treatment)
  for line in amps.describe():
    _print(log, line)
  f_obs = amps.f_obs
  timings["data"] = time.time() - t0

  _print(log)
  for line in std.describe():
    _print(log, line)
  values, present, stats = std.map_to_reflection_set(f_obs, return_stats=True)
  set_amplitudes = np.maximum(values.real, 0.0)
  measured_unique = present & (set_amplitudes > 0) & \
    (reflection_set.unique_mate() == np.arange(len(values)))
  stats["n_measured_on_list"] = int(measured_unique.sum())
  stats["n_unique_on_list"] = int(reflection_set.unique_mask().sum())
  if stats["n_dropped"]:
    _print(log, "Network's reflection list: %d of the %d unique reflections of the "
           "data in P2_1/c fall on it; %d beyond its indices are phased by "
           "dual-space methods only" % (
             stats["n_kept"], stats["n_unique_in_frame"], stats["n_dropped"]))
  else:
    _print(log, "Network's reflection list: all %d unique reflections of the data "
           "(in P2_1/c) fall on it" % stats["n_unique_in_frame"])
  if stats["d_min_kept"] is not None:
    _print(log, "  effective resolution %.2f A (data %.2f A, all data kept to %.2f A, "
           "the list's highest-resolution reflection %.2f A); %d of the list's %d "
           "unique reflections measured (%.0f %%)" % (
             max(stats["d_complete"], stats["d_min_kept"]), stats["d_min_data"],
             stats["d_complete"], stats["d_min_kept"], stats["n_measured_on_list"],
             stats["n_unique_on_list"],
             100.0 * stats["n_measured_on_list"] / stats["n_unique_on_list"]))
  n_usable = f_obs.size() if method == "dual_space" else stats["n_measured_on_list"]
  warnings = []
  if n_usable < min_reflections:
    raise Sorry("Only %d measured reflections can be phased, fewer than the %d a "
                "solution needs: give more complete or higher-resolution data."
                % (n_usable, min_reflections))
  if n_usable < FEW_REFLECTIONS:
    warnings.append("only %d measured reflections to phase (fewer than %d): "
                    "check the solution with care" % (n_usable, FEW_REFLECTIONS))
    _print(log, "Warning: " + warnings[-1])

  loaded = {"model": model, "seconds": 0.0}

  def network():
    """The network, loaded (with torch) when the search first needs it: a
    run that dual-space phasing solves at once never pays for it."""
    if loaded["model"] is None:
      t = time.time()
      from phai_cctbx.weights import load_model
      loaded["model"] = load_model(weights)
      loaded["seconds"] = time.time() - t
    if not loaded.get("logged"):
      from phai_cctbx import phasing
      m = loaded["model"]
      _print(log, "  network weights %s (%s)" % (
        getattr(m, "source", None) or "(given model)",
        "bfloat16" if phasing.uses_bfloat16(device, precision, phasing.parameter_count(m))
        else "float32"))
      loaded["logged"] = True
    return loaded["model"]

  if method == "network":
    network()
  settings = search_module.SearchSettings(
    method=method, trials=trials, cycles=cycles, random_seed=random_seed,
    starts=dual_space_starts, more_starts=dual_space_more_starts,
    refine_network=refine_network, network_seeds=tuple(network_seeds),
    sign_combinations=sign_combinations,
    recycle=recycle, network_check=network_check, time_limit=time_limit,
    network_frames=network_frames, omit_refinement=omit_refinement,
    atom_search=atom_search, atom_restarts=atom_restarts, atom_retry=atom_retry,
    heavy_atoms=heavy_atoms, peak_maps=peak_maps,
    peak_rounds=peak_rounds, first_map=first_map,
    stop_fom=SOLVED_FOM if stop_early else None,
    dual_space=dual_space.Settings(cycles=dual_space_cycles))
  _print(log)
  more = ("; then up to %d more random dual-space starts" % dual_space_more_starts
          if dual_space_more_starts else "")
  signs = ("; then dual-space from the 2^%d sign combinations of the strongest "
           "reflections" % sign_combinations
           if search_module.runs_sign_combinations(settings, f_obs) else "")
  frames = (" in each of up to %d frames" % network_frames) if network_frames > 1 else ""
  if search_module.runs_omit_refinement(settings, f_obs):
    more += "; then, while unsolved, omit-map refinement of the %d best" % omit_refinement
  alternatives = list(composition_alternatives) if composition is not None else []
  if alternatives:
    # A formula's likeliest Z may give more atoms than the search places
    # where another does not: the search starts from the first it can place.
    usable = [c for c in [composition] + alternatives
              if search_module.atom_search_atoms(settings, f_obs, c) is not None]
    if usable:
      composition, alternatives = usable[0], usable[1:]
  if composition is None and atom_search and guess_composition and \
     method in ("auto", "dual_space"):
    from phai_cctbx import composition_guess
    composition, how = composition_guess.guess_counts(
      f_obs.unit_cell(), f_obs.space_group(), elements)
    settings.composition_guessed = composition is not None
    if composition is not None:
      alternatives = composition_guess.guessed_alternatives(
        composition, f_obs.unit_cell(), f_obs.space_group(), elements)
      if alternatives:
        how += "; where no model stands out, then %s" % ", ".join(
          composition_guess.describe(c, f_obs.space_group()) for c in alternatives)
    _print(log, "Atom search: %s" % how)
  atoms = search_module.atom_search_atoms(settings, f_obs, composition)
  if atoms is not None and alternatives and not settings.composition_guessed:
    from phai_cctbx import composition_guess
    _print(log, "Atom search: where no model stands out, then %s (atoms per "
           "asymmetric unit)" % ", ".join(
             composition_guess.describe(c, f_obs.space_group()) for c in alternatives))
  heavy_guesses = []
  if search_module.runs_heavy_unknown(settings, f_obs, composition):
    from phai_cctbx import composition_guess
    guessed = settings.composition_guessed
    heavy_guesses = composition_guess.heavy_unknown_guesses(
      f_obs.unit_cell(), f_obs.space_group(), f_obs.size(), elements if guessed else None,
      atoms=None if guessed else composition_guess.given_atoms(composition, f_obs.space_group()))
  if settings.composition_guessed and atoms is None:
    _print(log, "Atom search: not run (more than %d atoms; give elements= with "
           "counts per unit cell)" % atom_search_module.atom_limit(composition, guessed=True))
  if heavy_guesses:
    _print(log, "Atom search: where no model is decisive, then %s heavy atoms of unknown "
           "element alone, the rest (%s) from the peaks of their maps" % (
             " or ".join("%g" % (h[atom_search_module.UNKNOWN] / f_obs.space_group().order_z())
                         for h, _ in heavy_guesses),
             ", ".join(composition_guess.describe(c, f_obs.space_group(), any_element=False)
                       for _, c in heavy_guesses)))
  if atoms is not None:
    again = settings.retries_atom_search(composition)
    signs = ("; then, while unsolved, an atom search (%d atoms: %s; %d random placements%s)"
             % (len(atoms[0]), " ".join(atoms[0]), atom_restarts,
                ", again from as many where no model is decisive" if again else "")) + signs
  heavy = search_module.heavy_search_counts(settings, f_obs, composition)
  if heavy is not None:
    heavy_atoms_ = atom_search_module.asymmetric_unit_atoms(heavy, f_obs.space_group())[0]
    signs = ("; then, while unsolved, a heavy-atom search (%d atoms: %s; %d random "
             "placements) and the whole asymmetric unit from the peaks of its best maps"
             % (len(heavy_atoms_), " ".join(heavy_atoms_), atom_restarts)) + signs
  first_map = search_module.first_map_compositions(settings, f_obs, composition, heavy_guesses)
  if first_map:
    from phai_cctbx import composition_guess
    signs = ("; then, where two of them end in one map, atoms (%s) from that map's peaks"
             % ", ".join(composition_guess.describe(c, f_obs.space_group(), any_element=False)
                         for c in first_map)) + signs
  peak_atoms = search_module.peak_search_atoms(settings, f_obs, composition)
  if peak_atoms is not None and search_module.runs_peak_search(settings, f_obs):
    more += "; then, while unsolved, atom searches%s from the peaks of the %s%s" % (
      "" if atoms is not None else " (%d atoms)" % len(peak_atoms[0]),
      "%d best maps" % peak_maps if peak_maps > 1 else "best map",
      " (%d rounds)" % peak_rounds if peak_rounds > 1 else "")
  _print(log, "Phasing (method %s): %s" % (method, {
    "auto": "dual-space from %d random starts%s; then the network (%d trials of up to "
            "%d cycles%s) and dual-space from its trials, the network again on %d "
            "dual-space results" % (dual_space_starts, signs, trials, cycles, frames,
                                    recycle) + more,
    "network": "the network, %d trials of up to %d cycles%s" % (trials, cycles, frames),
    "dual_space": "charge flipping from %d random starts" % dual_space_starts + signs + more}[method]))
  t2 = time.time()

  def stage(name, candidates):
    best = max(candidates, key=lambda c: c.fom)
    _print(log, "  %-32s %3d candidates, best %s (FOM %.3f), %.1f s" % (
      name + ":", len(candidates), best.label, best.fom, time.time() - t2))

  found = search_module.run(f_obs, std, set_amplitudes, present, network, settings,
                            log_stage=stage, composition=composition,
                            alternatives=alternatives, heavy_guesses=heavy_guesses)
  weights_source = getattr(loaded["model"], "source", None)
  timings["model"] = loaded["seconds"]
  timings["phasing"] = time.time() - t2 - loaded["seconds"]
  if found.network is not None:
    _print(log, "Network trials:")
    for line in _trial_lines(found.network):
      _print(log, line)
  _print(log, "Candidates, best held-out correlation first:")
  for line in _candidate_lines(found.candidates, found.best):
    _print(log, line)
  chosen = found.chosen
  level, advice = verdict(chosen.fom)
  _print(log, "Verdict: %s (%s, FOM %.3f)" % (level, chosen.label, chosen.fom))
  _print(log, "  " + advice)

  t3 = time.time()
  weights_list = np.where(present, set_amplitudes, 0.0)
  phases, donor = _complete(chosen, found.candidates, f_obs, weights_list)
  if chosen.method == "network":
    back = chosen.back
    fom_of = {h: w for h, w in zip(back.fom.indices(), back.fom.data())}
    covered = reflection_set_in_original(std)
    unmeasured = covered.lone_set(f_obs)
    ext = std.from_reflection_set(chosen.signs, unmeasured, weights=chosen.weights)
  else:
    back = None
    fom_of = {}
    ext = None
  f_phased, phases = f_obs.common_sets(phases)
  level_fom = LEVEL_FOM[level]
  fom = phases.customized_copy(data=flex.double(
    [fom_of.get(h, level_fom) for h in phases.indices()]))
  phased = f_phased.phase_transfer(phases, deg=True)
  phased = phased.customized_copy(data=phased.data() * fom.data(), sigmas=None)
  if ext is not None:
    extended, extended_fom = ext.phases, ext.fom
  else:
    empty = f_obs.select(flex.bool(f_obs.size(), False))
    extended = empty.customized_copy(data=flex.double(), sigmas=None)
    extended_fom = extended
  timings["output_phases"] = time.time() - t3
  timings["total"] = time.time() - t0
  if chosen.method == "dual_space":
    _print(log, "The P 1 solution placed on the symmetry of %s: origin from the "
           "correlation map (peak %.3f), equivalents averaged" % (
             std.original_symmetry.space_group_info(), chosen.terms.get("origin_cc", 0.0)))
  if back is not None and std.is_supergroup:
    _print(log, "Symmetry check in %s: %d of %d reflections whose equivalents "
           "were phased separately in P2_1/c disagree (%.1f %%)" % (
             std.original_symmetry.space_group_info(), back.n_disagreeing,
             back.n_with_equivalents, 100 * back.disagreement))
  n_left = f_obs.size() - phases.size()
  line = "Phases for %d of %d measured reflections" % (phases.size(), f_obs.size())
  if donor is not None:
    line += " (%d beyond the network's list from %s)" % (
      phases.size() - chosen.phases.common_set(f_obs).size(), donor.label)
  if n_left:
    line += "; %d have none" % n_left
  if extended.size():
    line += "; %d unmeasured reflections of the list phased by extension" % extended.size()
  _print(log, line)
  _print(log, "Mean FOM of the measured reflections %.3f" % (
    flex.mean(fom.data()) if fom.size() else 0.0))
  return SolveResult(
    f_obs=f_obs, phases=phases, fom=fom, phased=phased,
    extended=extended, extended_fom=extended_fom, phasing=found.network,
    search=found, chosen=chosen, method=method, warnings=warnings,
    set_amplitudes=set_amplitudes, set_measured=present,
    standardisation=std, amplitudes=amps, mapping=stats,
    back=back, verdict=level, advice=advice, timings=timings,
    weights_source=weights_source,
    atom_model=chosen.model if not settings.composition_guessed else None)
