"""Cells of random atoms: every atom at least the minimum distance from every
other atom and image (a brute-force check), closed under P2_1/c, cells and
densities in range, elements from the list; both generators make them in the
share asked for."""
import numpy as np
import pytest

import phai_cctbx  # noqa: F401
import torch

from phai_cctbx.training.random_atoms import (
  ELEMENTS, MIN_DISTANCE, VOLUME_PER_ATOM, random_atom_structures)
from test_structures import assert_closed_under_p21c, pair_distances
from test_torch_structures import _structures


def assert_random_atom_structure(s):
  a, b, c, al, be, ga = s.cell
  assert 3.5 - 1e-4 <= min(a, b, c) and max(a, b, c) <= 10.0 + 1e-4
  assert al == 90 and ga == 90 and 90 <= be <= 120
  assert len(s.numbers) % 4 == 0 and 3 * 4 <= len(s.numbers) <= 25 * 4
  assert set(s.numbers.tolist()) <= set(ELEMENTS)
  assert ((s.frac >= 0) & (s.frac < 1)).all()
  # each atom is a body of its own: the only "intra" pair is an atom with itself
  assert len(set(s.body.tolist())) == len(s.numbers)
  d, i, j, intra = pair_distances(s)
  assert (i[intra] == j[intra]).all() and (d[intra] < 1e-6).all()
  assert (d[~intra] >= MIN_DISTANCE - 1e-3).all(), d[~intra].min()
  assert_closed_under_p21c(s)


def test_random_atom_structures_obey_the_rules():
  out = random_atom_structures(24, torch.Generator().manual_seed(4))
  assert out["frac"].shape[1:] == (400, 3) and out["numbers"].dtype == torch.int8
  structures = _structures(out)
  assert len(structures) >= 12                     # most cells take their atoms
  for s in structures:
    assert_random_atom_structure(s)
  per_atom = [s.volume / len(s.numbers) for s in structures]
  lo, hi = VOLUME_PER_ATOM
  # 80 % of the atoms asked for at the least: at most hi / 0.8 per atom
  assert min(per_atom) >= lo - 1e-3 and max(per_atom) <= hi / 0.8 + 1e-3
  carbon = np.mean([(s.numbers == 6).mean() for s in structures])
  assert 0.35 < carbon < 0.65


def test_dense_cells_are_dropped_not_overfilled():
  """At a minimum distance that 3-25 atoms cannot keep in such cells, cells
  are dropped rather than given atoms closer than asked."""
  out = random_atom_structures(16, torch.Generator().manual_seed(2), min_distance=3.2)
  for s in _structures(out):
    d, i, j, intra = pair_distances(s)
    assert (d[~intra] >= 3.2 - 1e-3).all()
  assert out["cell"].shape[0] < 16


def test_cpu_generator_makes_the_share_asked_for(library):
  from phai_cctbx.training.structures import StructureGenerator
  only = StructureGenerator(library, np.random.default_rng(3), random_atom_fraction=1.0,
                            packing="insert")
  for s in [only.sample() for _ in range(4)]:
    assert s.kind == "random atoms"
    assert_random_atom_structure(s)
  mixed = StructureGenerator(library, np.random.default_rng(4), random_atom_fraction=0.5,
                             packing="insert")
  kinds = [mixed.sample().kind for _ in range(24)]
  assert 4 <= kinds.count("random atoms") <= 20 and len(set(kinds)) >= 2


def test_device_generator_makes_the_share_asked_for(library):
  from phai_cctbx.training.torch_structures import TorchStructureGenerator
  gen = TorchStructureGenerator(library, "cpu", random_atom_fraction=0.5)
  out = gen.sample_batch(12, torch.Generator().manual_seed(6))
  assert out["cell"].shape[0] == 12
  structures = _structures(out)
  single = [len(set(s.body.tolist())) == len(s.numbers) for s in structures]
  assert 2 <= sum(single) <= 10                       # random-atom cells and organic ones, mixed
  for s, random in zip(structures, single):
    if random:
      assert_random_atom_structure(s)
    else:
      assert (s.numbers == 1).any()                     # a molecule with its hydrogens


@pytest.fixture(scope="module")
def library():
  pytest.importorskip("rdkit")
  from phai_cctbx.training.molecules import build_library
  return build_library(20, seed=11, processes=1, metal_fraction=0.3)


def test_generator_processes_make_random_atom_cells(library, tmp_path):
  """random_atom_fraction reaches the worker processes of the structure stream."""
  from phai_cctbx.training.data import StructureStream
  path = str(tmp_path / "lib.npz")
  library.save(path)
  stream = StructureStream(path, seed=3, workers=1, chunk=4, random_atom_fraction=1.0)
  try:
    chunk = stream.get(timeout=120)
  finally:
    stream.close()
  numbers = np.asarray(chunk["numbers"])
  counts = (numbers != 0).sum(1)
  assert chunk["cell"].shape[0] == 4 and (counts % 4 == 0).all() and (counts >= 12).all()
  assert not (numbers == 1).any() and set(numbers[numbers != 0].tolist()) <= set(ELEMENTS)
