"""The reflection list's symmetry: absences, origin shifts, P1 expansion and maps."""
import numpy as np

import phai_cctbx  # noqa: F401
from cctbx import miller, crystal, xray
from cctbx.array_family import flex

from phai_cctbx import reflection_set


def _random_p21c(seed=1, n=6):
  import random
  random.seed(seed)
  flex.set_random_seed(seed)
  cs = crystal.symmetry((7.1, 8.3, 9.2, 90, 104, 90), "P 1 21/c 1")
  xs = xray.structure(crystal_symmetry=cs, scatterers=flex.xray_scatterer(
    [xray.scatterer("C%d" % i, site=(random.random(), random.random(), random.random()), u=0.02)
     for i in range(n)]))
  return xs


def _fcalc_on_list(xs):
  hkl = reflection_set.indices()
  ms = miller.set(xs.crystal_symmetry(), flex.miller_index([tuple(int(v) for v in h) for h in hkl]),
                  anomalous_flag=False)
  return np.array(ms.structure_factors_from_scatterers(xs, algorithm="direct").f_calc().data())


def test_absences_match_cctbx():
  sg = crystal.symmetry((7, 8, 9, 90, 100, 90), "P 1 21/c 1").space_group()
  hkl = reflection_set.indices()
  ours = reflection_set.systematic_absences()
  ref = np.array([sg.is_sys_absent(tuple(int(v) for v in h)) for h in hkl])
  assert (ours == ref).all()


def test_origin_shift_keeps_r_at_one():
  xs = _random_p21c()
  f = _fcalc_on_list(xs).real
  shifted = xs.deep_copy_scatterers()  # an inversion centre at (1/2, 0, 1/2) becomes the origin
  shifted.set_sites_frac(xs.sites_frac() + (0.5, 0.0, 0.5))
  g = _fcalc_on_list(shifted).real
  s_f, s_g = np.sign(f), np.sign(g)
  weights = np.abs(f) * ~reflection_set.systematic_absences()
  assert (s_f != s_g)[np.abs(f) > 1e-3].any()  # the shift does change signs
  assert reflection_set.sign_correlation(weights, s_f, s_g) > 0.999
  # and unrelated signs do not reach it
  rng = np.random.default_rng(0)
  assert reflection_set.sign_correlation(weights, s_f, rng.choice([-1, 1], size=len(f))) < 0.5


def test_p1_expansion_signs_match_cctbx():
  xs = _random_p21c(seed=3)
  f = _fcalc_on_list(xs).real
  hkl, src, fac = reflection_set.p1_expansion()
  p1 = xs.expand_to_p1()
  ms = miller.set(p1.crystal_symmetry(), flex.miller_index([tuple(int(v) for v in h) for h in hkl]),
                  anomalous_flag=True)
  ref = np.array(ms.structure_factors_from_scatterers(p1, algorithm="direct").f_calc().data()).real
  np.testing.assert_allclose(fac * f[src], ref, atol=1e-6 * np.abs(ref).max())


def test_density_map_peaks_at_atoms():
  xs = _random_p21c(seed=5, n=3)
  f = _fcalc_on_list(xs).real
  rho = reflection_set.density_map(np.abs(f), np.sign(f), grid=(30, 30, 30))
  site = np.array(xs.scatterers()[0].site) % 1.0
  idx = tuple(int(round(s * 30)) % 30 for s in site)
  assert rho[idx] > 0.5 * rho.max()
