"""phai_cctbx: PhAI neural-network phasing of small-molecule data in cctbx.

cctbx must be loaded before torch: the C++ runtime that torch's wheel loads
first cannot serve cctbx's extensions and the process crashes.  Importing this
package loads cctbx's core first when cctbx is installed, and refuses with a
clear message when torch is already loaded and cctbx is not.  (Training runs
without cctbx: the training modules need only numpy and torch.)
"""
import sys

__version__ = "0.1.0"


def _load_cctbx_first():
  if "boost_python_meta_ext" in sys.modules:
    return
  try:
    import importlib.util
    have_cctbx = importlib.util.find_spec("cctbx") is not None
  except (ImportError, ValueError):
    have_cctbx = False
  if not have_cctbx:
    return
  if "torch" in sys.modules:
    raise ImportError(
      "phai_cctbx: torch was imported before cctbx, which crashes cctbx's C++ "
      "extensions; import phai_cctbx (or any cctbx module) before torch.")
  from cctbx.array_family import flex  # noqa: F401


_load_cctbx_first()
