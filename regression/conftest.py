"""Shared pieces of the regression runs of the installed phai.solve command."""
import os
import shutil
import subprocess

import phai_cctbx  # noqa: F401  (cctbx before torch)
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, os.pardir, "shared", "data"))


def shared_path(*parts):
  path = os.path.join(SHARED, *parts)
  if not os.path.exists(path):
    pytest.skip("shared development data not present: %s" % path)
  return path


def installed_command(name):
  """Path of an installed console script; skips the test when it is missing."""
  exe = shutil.which(name)
  if exe is None:
    pytest.skip("%s is not installed (pip install .)" % name)
  return exe


@pytest.fixture(scope="session")
def phai_solve():
  return installed_command("phai.solve")


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
  """(path or None, trained): the shipped weights when installed, else a small
  untrained network, which exercises everything but the solving."""
  from phai_cctbx.weights import default_weights_available
  if default_weights_available():
    return None, True
  import torch
  from phai_cctbx.model import PhAIConfig, PhAINet
  from phai_cctbx.weights import save_weights
  torch.manual_seed(0)
  net = PhAINet(PhAIConfig(filters=4, cnn_depth=1, dim=16, dim_exp=16,
                           dim_token_exp=8, mlp_depth=1))
  path = str(tmp_path_factory.mktemp("weights") / "untrained.pt")
  save_weights(path, net, "max", {"note": "untrained, regression runs only"})
  return path, False


def run_solve(exe, args, cwd, timeout=600):
  proc = subprocess.run([exe] + list(args), cwd=str(cwd), capture_output=True,
                        text=True, timeout=timeout)
  return proc
