"""The torch structure factors agree with cctbx's on real P2_1/c structures."""
import glob
import os

import numpy as np
import pytest

import phai_cctbx  # noqa: F401  (cctbx before torch)
from cctbx import miller, uctbx
from cctbx.eltbx import tiny_pse
from cctbx.array_family import flex
import iotbx.cif
import torch

from phai_cctbx import reflection_set
from phai_cctbx.training.structure_factors import StructureFactorCalculator, d_star_sq

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "structures", "p21c_small")


def _standard_p21c_structures(n):
  """Real structures of the data folder brought to P 1 21/c 1 (any setting in)."""
  out = []
  for path in sorted(glob.glob(os.path.join(DATA, "*.cif"))):
    xs = list(iotbx.cif.reader(file_path=path).build_crystal_structures().values())[0]
    cb = xs.change_of_basis_op_to_reference_setting()
    xs = xs.change_basis(cb)
    if xs.space_group().type().lookup_symbol() != "P 1 21/c 1":
      continue
    out.append(xs)
    if len(out) == n:
      break
  return out


@pytest.mark.skipif(not os.path.isdir(DATA), reason="development data not present")
def test_matches_cctbx_on_real_structures():
  structures = _standard_p21c_structures(3)
  assert len(structures) == 3
  hkl = reflection_set.indices()
  calc = StructureFactorCalculator(hkl, dtype=torch.float64)
  for xs in structures:
    xs = xs.deep_copy_scatterers()
    xs.convert_to_isotropic()
    u = 0.02 + 0.01 * flex.random_double(xs.scatterers().size())
    xs.set_u_iso(values=u)
    xs.scattering_type_registry(table="it1992")
    p1 = xs.expand_to_p1()
    frac = np.array(p1.sites_frac())[None]
    z = np.array([tiny_pse.table(s.scattering_type).atomic_number()
                  for s in p1.scatterers()])[None]
    occ = np.array(p1.scatterers().extract_occupancies())
    assert np.allclose(occ, 1.0)
    u_atoms = np.array(p1.extract_u_iso_or_u_equiv())[None]
    ours = calc(frac, z, np.array([xs.unit_cell().parameters()]), u_atoms)[0].numpy()
    ms = miller.set(xs.crystal_symmetry(), flex.miller_index([tuple(int(x) for x in r) for r in hkl]),
                    anomalous_flag=False)
    ref = ms.structure_factors_from_scatterers(xs, algorithm="direct").f_calc().data()
    ref = np.array(ref)
    # Centrosymmetric at the origin: F is real.
    assert np.abs(ref.imag).max() < 1e-6 * np.abs(ref).max()
    rel = np.abs(ours - ref.real).max() / np.abs(ref).max()
    assert rel < 1e-4, rel


def test_d_star_sq_monoclinic():
  cell = torch.tensor([[5.0, 6.0, 7.0, 90.0, 110.0, 90.0]], dtype=torch.float64)
  hkl = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1]])
  uc = uctbx.unit_cell((5, 6, 7, 90, 110, 90))
  ref = [uc.d_star_sq(tuple(int(v) for v in h)) for h in hkl.tolist()]
  assert np.allclose(d_star_sq(cell, hkl)[0].numpy(), ref)
