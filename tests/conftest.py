# cctbx must be loaded before torch in every process (see phai_cctbx/__init__.py).
import phai_cctbx  # noqa: F401
import pytest


@pytest.fixture(scope="module")
def library_path(tmp_path_factory):
  """A small conformer library (12 molecules), built once per test module."""
  pytest.importorskip("rdkit")
  from phai_cctbx.training.molecules import build_library
  path = str(tmp_path_factory.mktemp("lib") / "conformers.npz")
  build_library(count=12, seed=0, processes=1).save(path)
  return path
