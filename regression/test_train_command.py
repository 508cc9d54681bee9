"""The installed phai.train: build a library, train a few steps, resume, export,
and phase the shipped example with the exported weights through phai.solve."""
import os
import subprocess

import pytest

from conftest import installed_command

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "phai_cctbx", "examples")
TINY = ["model.filters=4", "model.cnn_depth=1", "model.dim=32", "model.dim_exp=32",
        "model.dim_token_exp=8", "model.mlp_depth=1"]


def run(args, cwd):
  return subprocess.run(args, cwd=str(cwd), capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_train_resume_export_and_solve(tmp_path):
  pytest.importorskip("rdkit")
  exe = installed_command("phai.train")
  common = ["library.file=lib.npz", "library.build_count=12", "run.device=cpu",
            "data.workers=1", "data.pool_size=16", "run.validation_size=4",
            "run.validate_every=2", "optimiser.batch_size=4", "run.output_dir=run"] + TINY
  p = run([exe, "optimiser.max_steps=2"] + common, tmp_path)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
  assert "building the conformer library" in p.stdout and os.path.isfile(tmp_path / "lib.npz")
  assert "validation at 8 examples" in p.stdout
  p = run([exe, "optimiser.max_steps=3", "run.resume=run/checkpoint.pt"] + common, tmp_path)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
  assert "resumed from run/checkpoint.pt at step 2" in p.stdout
  p = run([exe, "export.checkpoint=run/checkpoint.pt", "export.weights=w.pt"], tmp_path)
  assert p.returncode == 0 and os.path.isfile(tmp_path / "w.pt.sha256")
  # refuses to overwrite the exported weights
  p = run([exe, "export.checkpoint=run/checkpoint.pt", "export.weights=w.pt"], tmp_path)
  assert p.returncode != 0 and "exists" in p.stderr + p.stdout
  solve = installed_command("phai.solve")
  p = run([solve, os.path.join(EXAMPLE, "epoxide.hkl"), os.path.join(EXAMPLE, "epoxide.ins"),
           "model.weights=w.pt", "output.prefix=ex", "phasing.trials=2", "phasing.cycles=2"],
          tmp_path)
  assert p.returncode == 0, p.stderr[-2000:]
  assert os.path.isfile(tmp_path / "ex.mtz")


@pytest.mark.parametrize("arg,word", [("model.filters=0", "model.filters"),
                                      ("data.missing_max=1.5", "missing_max"),
                                      ("run.resume=nothing.pt", "not found"),
                                      ("recycling.partial_start_fraction=1.2", "partial_start_fraction"),
                                      ("recycling.partial_wrong_min=0.5", "partial_wrong_min"),
                                      ("data.random_atom_fraction=-0.1", "random_atom_fraction")])
def test_bad_parameters_one_line(tmp_path, arg, word):
  exe = installed_command("phai.train")
  p = run([exe, arg, "run.device=cpu"], tmp_path)
  assert p.returncode != 0
  assert "Traceback" not in p.stderr
  lines = [l for l in (p.stderr + p.stdout).splitlines() if l.startswith("Sorry")]
  assert len(lines) == 1 and word in lines[0]
