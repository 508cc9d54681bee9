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
from phai_cctbx import reflection_set
from phai_cctbx import symmetry as symmetry_module

#: Fewest measured unique reflections on the list worth phasing.
MIN_REFLECTIONS = 50


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
    phasing: the phasing.PhasingResult (all trials).
    set_amplitudes, set_measured: the network's input (1205,).
    standardisation: the symmetry.Standardisation used.
    amplitudes: the amplitudes_module.Amplitudes record.
    mapping: dict of counts from putting the data on the list.
    back: the symmetry.BackTransform of the measured reflections.
    verdict: "solved" or "uncertain".
    timings: dict of seconds per step.
    model_building: the starting_model.ModelBuilding of the run, or None
      (set by the program after phasing).
  """

  model_building = None

  def __init__(self, **kwds):
    self.__dict__.update(kwds)

  @property
  def best_trial(self):
    return int(self.phasing.best)

  def summary(self):
    """A JSON-ready dict of the run."""
    ph = self.phasing
    cs = self.f_obs.crystal_symmetry()
    trials = []
    for t in range(len(ph.fom)):
      entry = {"trial": t + 1, "fom": float(ph.fom[t]),
               "cycles": int(ph.cycles_run[t]), "converged": bool(ph.converged[t])}
      for name, values in sorted(ph.fom_terms.items()):
        entry[name] = float(values[t])
      trials.append(entry)
    std = self.standardisation
    out = {
      "verdict": self.verdict,
      "best_trial": self.best_trial + 1,
      "best_fom": float(ph.fom[ph.best]),
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
      "symmetry_check": {
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


def solve(miller_array, model=None, weights=None, trials=8, cycles=16,
          random_seed=0, log=None, intensity_treatment="french_wilson",
          min_reflections=MIN_REFLECTIONS, device="cpu", precision="auto"):
  """Phase amplitudes or intensities (a cctbx miller array with crystal symmetry).

  Args:
    miller_array: real miller array of intensities or amplitudes with its
      crystal symmetry (space group No. 14 in any setting, or C2/c, Pbca,
      Pnma, Pbcn, C2/m); merged or not.
    model: a loaded network (phai_cctbx.weights.load_model); None loads
      ``weights`` (None: the shipped default weights).
    trials, cycles, random_seed: passed to the phasing.
    log: file-like object for the log (None: silent).
    intensity_treatment: "french_wilson" or "truncate_at_zero".
    min_reflections: fewest measured unique reflections on the list.

  Returns a :class:`SolveResult`.  Raises Sorry on unusable input.
  """
  from phai_cctbx import phasing
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
  _print(log, "Reflection list: %d of %d unique reflections of the data kept, "
         "%d dropped (beyond the list's indices)" % (
           stats["n_kept"], stats["n_unique_in_frame"], stats["n_dropped"]))
  if stats["d_min_kept"] is not None:
    _print(log, "  effective resolution %.2f A (data %.2f A, all data kept to %.2f A, "
           "the list's highest-resolution reflection %.2f A); %d of the list's %d "
           "unique reflections measured (%.0f %%)" % (
             max(stats["d_complete"], stats["d_min_kept"]), stats["d_min_data"],
             stats["d_complete"], stats["d_min_kept"], stats["n_measured_on_list"],
             stats["n_unique_on_list"],
             100.0 * stats["n_measured_on_list"] / stats["n_unique_on_list"]))
  if stats["n_measured_on_list"] < min_reflections:
    raise Sorry("Only %d measured reflections fall on the network's reflection "
                "list, fewer than the %d a solution needs: give more complete or "
                "higher-resolution data." % (stats["n_measured_on_list"], min_reflections))

  t1 = time.time()
  if model is None:
    from phai_cctbx.weights import load_model
    model = load_model(weights)
  weights_source = getattr(model, "source", None)
  timings["model"] = time.time() - t1
  _print(log)
  _print(log, "Phasing: %d trials of up to %d cycles (random seed %d, %s), weights %s"
         % (trials, cycles, random_seed,
            "bfloat16" if phasing.uses_bfloat16(device, precision, phasing.parameter_count(model))
            else "float32",
            weights_source or "(given model)"))
  t2 = time.time()
  result = phasing.phase_reflection_set(
    set_amplitudes, present, model, trials=trials, cycles=cycles,
    random_seed=random_seed, device=device, precision=precision)
  timings["phasing"] = time.time() - t2
  for line in _trial_lines(result):
    _print(log, line)
  _print(log, "Verdict: %s (best trial %d, FOM %.3f)" % (
    result.verdict, result.best + 1, result.fom[result.best]))

  t3 = time.time()
  signs = result.signs[result.best]
  conf = np.clip(2.0 * result.probabilities[result.best] - 1.0, 0.0, 1.0)
  back = std.from_reflection_set(signs, f_obs, weights=conf)
  covered = reflection_set_in_original(std)
  unmeasured = covered.lone_set(f_obs)
  ext = std.from_reflection_set(signs, unmeasured, weights=conf)
  f_phased, phases = f_obs.common_sets(back.phases)
  fom = back.fom.common_set(f_phased)
  phased = f_phased.phase_transfer(phases, deg=True)
  phased = phased.customized_copy(data=phased.data() * fom.data(), sigmas=None)
  timings["output_phases"] = time.time() - t3
  timings["total"] = time.time() - t0
  if std.is_supergroup:
    _print(log, "Symmetry check in %s: %d of %d reflections whose equivalents "
           "were phased separately in P2_1/c disagree (%.1f %%)" % (
             std.original_symmetry.space_group_info(), back.n_disagreeing,
             back.n_with_equivalents, 100 * back.disagreement))
  _print(log, "Phases for %d of %d measured reflections (the others lie beyond "
         "the list); %d unmeasured reflections of the list phased by extension"
         % (phases.size(), f_obs.size(), ext.phases.size()))
  _print(log, "Mean FOM of the measured reflections %.3f" % (
    flex.mean(fom.data()) if fom.size() else 0.0))
  return SolveResult(
    f_obs=f_obs, phases=phases, fom=fom, phased=phased,
    extended=ext.phases, extended_fom=ext.fom, phasing=result,
    set_amplitudes=set_amplitudes, set_measured=present,
    standardisation=std, amplitudes=amps, mapping=stats, back=back,
    verdict=result.verdict, timings=timings, weights_source=weights_source)
