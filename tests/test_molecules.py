"""Conformer library: building, saving, loading, chemical sanity."""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rdkit")
from phai_cctbx.training.molecules import ConformerLibrary, build_library, METALS  # noqa: E402

METAL_Z = {m[0] for m in METALS}


@pytest.fixture(scope="module")
def library():
  return build_library(24, seed=5, processes=1, metal_fraction=0.3)


def test_library_size_and_layout(library):
  assert len(library) == 24
  assert library.offsets[0] == 0 and library.offsets[-1] == len(library.numbers)
  assert library.coords.dtype == np.float32 and library.numbers.dtype == np.int8
  assert len(set(library.smiles)) == len(library)
  for i in range(len(library)):
    xyz, z, parents = library.molecule(i)
    assert np.abs(xyz.mean(0)).max() < 1e-3
    heavy = (z != 1) & ~np.isin(z, list(METAL_Z))
    assert 1 <= heavy.sum() <= 13
    assert (parents[z != 1] == -1).all()
    assert (z[parents[z == 1]] != 1).all()


def test_round_trip_without_rdkit(library, tmp_path):
  path = tmp_path / "lib.npz"
  library.save(path)
  back = ConformerLibrary.load(path)
  for name in ("coords", "numbers", "parents", "offsets", "smiles"):
    assert np.array_equal(getattr(back, name), getattr(library, name))
  code = ("import sys; from phai_cctbx.training.molecules import ConformerLibrary; "
          "lib = ConformerLibrary.load(sys.argv[1]); assert len(lib) == 24; "
          "assert 'rdkit' not in sys.modules")
  subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def test_bond_lengths_sane(library):
  n_metal = 0
  for i in range(len(library)):
    xyz, z, parents = library.molecule(i)
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 0.9
    for h in np.nonzero(z == 1)[0]:
      limit = 1.40 if z[parents[h]] == 16 else 1.15  # S-H is 1.34 A
      assert 0.93 < d[h, parents[h]] < limit
    metal = np.isin(z, list(METAL_Z))
    organic = (z != 1) & ~metal
    idx = np.nonzero(organic)[0]
    if len(idx) > 1:
      nearest = d[np.ix_(idx, idx)].min(1)
      assert (nearest > 1.1).all() and (nearest < 2.1).all()  # C-Br 1.97 A
    for m in np.nonzero(metal)[0]:
      n_metal += 1
      donors = np.isin(z, (7, 8))
      assert 1.85 < d[m, donors].min() < 2.95
  assert n_metal >= 1
