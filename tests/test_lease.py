"""Lease training: weights and optimiser state survive the round trip through
the lease files at every precision level and split into parts, damaged files
are refused in one line, and a lease-sized run stops by itself before its
wall time and resumes from its own files."""
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import pytest

import phai_cctbx  # noqa: F401
import torch

from phai_cctbx.model import PhAIConfig, PhAINet
from phai_cctbx.training import lease

TINY = dict(filters=4, cnn_depth=1, dim=32, dim_exp=32, dim_token_exp=8, mlp_depth=1)


def _checkpoint():
  torch.manual_seed(0)
  net = PhAINet(PhAIConfig(**TINY))
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.98))
  for _ in range(2):
    for p in net.parameters():
      p.grad = torch.randn_like(p) * 1e-3
    opt.step()
  return {"format": "phai_cctbx-checkpoint-1", "train_config": {"batch_size": 4},
          "model_config": net.config.as_dict(), "model": net.state_dict(),
          "optimizer": opt.state_dict(), "step": 2, "examples": 8, "seconds": 1.5,
          "curve": [{"step": 2, "examples": 8, "seconds": 1.5,
                     "validation": {"1.00": {"mean_r": 0.2, "solved": 0.0}}}],
          "runs": [{"device": "cpu"}]}, net, opt


def test_round_trip_at_every_level(tmp_path):
  blob, net, opt = _checkpoint()
  budget = 10 ** 9
  seen = []
  while True:
    try:
      manifest = lease.write_lease_files(blob, str(tmp_path), budget)
    except lease.LeaseError as e:
      assert "do not fit" in str(e) and str(e).startswith("Sorry")
      break
    prec = manifest["precision"]
    level = (prec["weights"], prec["moments"], tuple(prec["moments_kept"]))
    assert level not in seen
    seen.append(level)
    assert manifest["packed_bytes"] <= budget
    back = lease.read_lease_files(str(tmp_path))
    assert back["step"] == 2 and back["examples"] == 8 and back["curve"] == blob["curve"]
    assert back["model_config"] == blob["model_config"]
    tol = 0 if prec["weights"] == "float32" else 1e-3
    for k, v in blob["model"].items():
      assert back["model"][k].dtype == torch.float32
      assert torch.allclose(back["model"][k], v, rtol=tol, atol=1e-7 if tol else 0), k
    state = blob["optimizer"]["state"]
    if not prec["moments_kept"]:
      assert "optimizer" not in back
    else:
      got = back["optimizer"]["state"]
      assert set(got) == set(state)
      mtol = 0 if prec["moments"] == "float32" else 1e-2
      for idx, s in state.items():
        assert float(got[idx]["step"]) == float(s["step"])
        for name in ("exp_avg", "exp_avg_sq"):
          if name in prec["moments_kept"]:
            assert torch.allclose(got[idx][name], s[name], rtol=mtol, atol=0), (idx, name)
          else:
            assert torch.count_nonzero(got[idx][name]) == 0
      # the optimiser takes the state back and steps on
      net2 = PhAINet(PhAIConfig(**TINY))
      net2.load_state_dict(back["model"])
      opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-3, betas=(0.9, 0.98))
      opt2.load_state_dict(back["optimizer"])
      for p in net2.parameters():
        p.grad = torch.ones_like(p)
      opt2.step()
    budget = manifest["packed_bytes"] - 1
  assert [lvl[:2] for lvl in seen] == [("float32", "float32"), ("float32", "bfloat16"),
                                       ("float16", "bfloat16"), ("float16", "bfloat16"),
                                       ("float16", None)]
  assert seen[3][2] == ("exp_avg_sq",)


def test_parts_and_damage(tmp_path):
  blob, _, _ = _checkpoint()
  manifest = lease.write_lease_files(blob, str(tmp_path), 10 ** 9, part_bytes=100 * 1024, max_parts=40)
  assert len(manifest["parts"]) > 3
  assert all(p["bytes"] <= 100 * 1024 for p in manifest["parts"])
  back = lease.read_lease_files(str(tmp_path))
  assert all(torch.equal(back["model"][k], v) for k, v in blob["model"].items())
  # a shorter pack in the same folder removes the parts it no longer needs
  manifest2 = lease.write_lease_files(blob, str(tmp_path), 10 ** 9, part_bytes=400 * 1024, max_parts=8)
  assert sorted(f for f in os.listdir(str(tmp_path)) if f.startswith("state.")) == \
    [p["file"] for p in manifest2["parts"]]
  # damaged or missing parts are refused in one line
  part = tmp_path / manifest2["parts"][0]["file"]
  data = bytearray(part.read_bytes())
  data[100] ^= 0xFF
  part.write_bytes(bytes(data))
  with pytest.raises(lease.LeaseError, match="damaged"):
    lease.read_lease_files(str(tmp_path))
  part.unlink()
  with pytest.raises(lease.LeaseError, match="missing"):
    lease.read_lease_files(str(tmp_path))
  with pytest.raises(lease.LeaseError, match="no lease.json"):
    lease.read_lease_files(str(tmp_path / "nothing"))


def test_default_network_fits_the_files_handed_back(tmp_path):
  """The shipped network size with AdamW state packs into at most 5 files of
  less than 16 MiB within the default budget, which leaves room for the
  repository (19 MiB) and a 40 000-molecule library (10 MiB) in the 64 MiB
  that travel to the next lease."""
  from phai_cctbx.training.trainer import DEFAULT_MODEL
  net = PhAINet(PhAIConfig(**DEFAULT_MODEL))
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.98))
  for p in net.parameters():
    p.grad = torch.randn_like(p) * 1e-3
  opt.step()
  blob = {"model_config": net.config.as_dict(), "model": net.state_dict(),
          "optimizer": opt.state_dict(), "step": 1, "examples": 1, "seconds": 0.0, "curve": [],
          "runs": []}
  budget = int(lease.DEFAULT_BUDGET_MIB * 2 ** 20)
  assert budget + 19 * 2 ** 20 + 10 * 2 ** 20 < 64 * 2 ** 20
  manifest = lease.write_lease_files(blob, str(tmp_path), budget)
  sizes = [os.path.getsize(str(tmp_path / p["file"])) for p in manifest["parts"]]
  assert len(sizes) <= lease.MAX_PARTS and max(sizes) < 16 * 2 ** 20 and sum(sizes) <= budget
  assert manifest["precision"]["weights"] == "float16" and "exp_avg_sq" in manifest["precision"]["moments_kept"]


def _tiny_args(library_path):
  return ["library=" + library_path, "device=cpu", "workers=1", "chunk=4", "pool_size=16",
          "min_pool=8", "batch_size=4", "validation_size=4", "validate_every=3", "log_every=1",
          "warmup_steps=2"] + ["%s=%s" % kv for kv in TINY.items()]


def test_lease_stops_by_itself_and_resumes(library_path, tmp_path):
  out1, out2 = tmp_path / "out1", tmp_path / "out2"
  env = dict(os.environ, OMP_NUM_THREADS="1")
  t0 = time.time()
  p = subprocess.run([sys.executable, "-m", "phai_cctbx.training.lease", "out_dir=%s" % out1,
                      "minutes=0.4", "reserve_minutes=0.03", "work_dir=%s" % (tmp_path / "w1")]
                     + _tiny_args(library_path), capture_output=True, text=True, timeout=300, env=env)
  elapsed = time.time() - t0
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  # it stops by itself (max_steps is 100000) at its deadline; the slack
  # allows for a busy machine, where the last validation and files take
  # longer than they did at the start
  assert "stopping at step" in p.stdout
  done = float(re.search(r"lease done ([0-9.]+) s after the start \(limit 24 s\)", p.stdout).group(1))
  assert done < 24 + 15 and elapsed < done + 15
  files = sorted(os.listdir(str(out1)))
  assert len(files) <= 8 and {"lease.json", "train.log", "state.00"} <= set(files)
  assert all(os.path.getsize(str(out1 / f)) < 16 * 2 ** 20 for f in files)
  assert "first step" in (out1 / "train.log").read_text()
  m1 = json.loads((out1 / "lease.json").read_text())
  assert m1["step"] >= 1 and m1["precision"]["weights"] == "float32"
  assert m1["curve"][0]["step"] == 0 and "partial_r" in m1["curve"][0]["validation"]["1.60"]
  first = lease.read_lease_files(str(out1))

  # the next lease: its own files in, training on from there (in this process,
  # whose clock started when the module was imported, early in a long test
  # run: a deadline far enough away that max_steps ends it)
  lease_args, overrides = lease.parse_args(["out_dir=%s" % out2, "resume_dir=%s" % out1,
                                            "minutes=600", "max_steps=%d" % (m1["step"] + 2),
                                            "library=" + library_path, "workers=1",
                                            "device=cpu", "work_dir=%s" % (tmp_path / "w2")])
  m2 = lease.run_lease(lease_args, overrides, log=open(os.devnull, "w"))
  assert m2["step"] == m1["step"] + 2 and m2["examples"] == m1["examples"] + 8
  assert len(m2["runs"]) == 2 and m2["runs"][1]["from_step"] == m1["step"]
  assert [c["step"] for c in m2["curve"]][:len(m1["curve"])] == [c["step"] for c in m1["curve"]]
  assert m2["train_config"]["validate_every"] == 3        # options carried over from lease 1
  log2 = (out2 / "train.log").read_text()
  assert "resumed from" in log2 and "at step %d" % m1["step"] in log2
  second = lease.read_lease_files(str(out2))
  assert any(not torch.equal(first["model"][k], v) for k, v in second["model"].items())

  # unpack for phai.train export / resume anywhere
  ckpt = str(tmp_path / "c.pt")
  lease.main(["unpack=%s" % out2, "checkpoint=%s" % ckpt])
  from phai_cctbx.training.trainer import export_weights
  from phai_cctbx.weights import load_model
  export_weights(ckpt, str(tmp_path / "w.pt"))
  assert load_model(str(tmp_path / "w.pt")).card["steps"] == m2["step"]


@pytest.mark.parametrize("args,word", [(["minutes=0"], "minutes"),
                                       (["resume_dir=/nonexistent"], "resume_dir"),
                                       (["library=/nonexistent.npz"], "conformer library"),
                                       (["filters=96", "dim=1024", "dim_exp=2048",
                                         "dim_token_exp=512", "mlp_depth=8", "cnn_depth=6"],
                                        "does not fit")])
def test_bad_arguments_one_line(library_path, tmp_path, args, word):
  base = ["out_dir=%s" % tmp_path, "library=" + library_path, "work_dir=%s" % (tmp_path / "w")]
  lease_args, overrides = lease.parse_args(base + args)
  with pytest.raises(lease.LeaseError, match=word) as e:
    lease.run_lease(lease_args, overrides)
  assert str(e.value).startswith("Sorry") and "\n" not in str(e.value)


def test_gpu_lease_defaults_yield_to_overrides_and_stay_with_the_machine():
  cpu = lease.lease_config(None, {}, gpu=False)
  gpu = lease.lease_config(None, {}, gpu=True)
  assert cpu.device_structures == 0 and cpu.compress_workers == 0 and cpu.validate_every == 2000
  assert (gpu.device_structures, gpu.device_time_share, gpu.device_block, gpu.compress_workers) \
    == (1.0, 0.25, 2048, 4)
  assert gpu.device_background and not cpu.device_background
  assert lease.lease_config(None, {"device_time_share": 0.5}, gpu=True).device_time_share == 0.5
  # a GPU lease's device options are not carried to the next machine, a CPU one
  previous = dict(dataclasses.asdict(gpu), batch_size=128)
  after = lease.lease_config(previous, {}, gpu=False)
  assert after.batch_size == 128 and after.device_structures == 0 and after.compress_workers == 0
  assert not after.device_background
