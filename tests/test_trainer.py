"""Training runs end to end on CPU, resumes from its checkpoint, and runs under DDP (gloo)."""
import os
import subprocess
import sys

import pytest

import phai_cctbx  # noqa: F401
import torch

from phai_cctbx.training import trainer
from phai_cctbx.training.trainer import TrainConfig

TINY = dict(filters=4, cnn_depth=1, dim=32, dim_exp=32, dim_token_exp=8, mlp_depth=1)


def _config(library_path, out, **kw):
  base = dict(library=library_path, output_dir=str(out), batch_size=4, max_steps=3, workers=1,
              chunk=4, pool_size=16, min_pool=8, validation_size=4, validate_every=2, log_every=1,
              warmup_steps=2, device="cpu", max_atoms=400, **TINY)
  base.update(kw)
  return TrainConfig(**base)


def test_train_and_resume(library_path, tmp_path):
  cfg = _config(library_path, tmp_path)
  model, state = trainer.train(cfg)
  ckpt = os.path.join(str(tmp_path), "checkpoint.pt")
  blob = torch.load(ckpt, weights_only=False)
  assert blob["step"] == 3 and blob["examples"] == 12
  assert [c["step"] for c in blob["curve"]] == [2, 3]
  assert set(blob["curve"][0]["validation"]) == {"1.00", "1.60", "2.00"}
  point = blob["curve"][0]["validation"]["1.60"]
  assert set(point) == {"mean_r", "solved", "random_r", "random_solved", "partial_r",
                        "partial_solved", "partial_input_r"}
  assert 0.3 < point["partial_input_r"] < 1.0 and -1.0 <= point["partial_r"] <= 1.0
  assert blob["train_config"]["partial_start_fraction"] == 0.3
  first = {k: v.clone() for k, v in model.state_dict().items()}
  cfg2 = _config(library_path, tmp_path, resume=ckpt, max_steps=5)
  model2, state2 = trainer.train(cfg2)
  assert state2["step"] == 5 and state2["examples"] == 20
  assert [c["step"] for c in state2["curve"]] == [2, 3, 4, 5]
  changed = any(not torch.equal(first[k], v) for k, v in model2.state_dict().items())
  assert changed
  # export for phasing
  from phai_cctbx.weights import load_model
  w = str(tmp_path / "w.pt")
  trainer.export_weights(ckpt, w)
  m = load_model(w)
  assert m.config.filters == 4 and m.card["steps"] == 5
  # training goes on from exported weights, keeping the history
  cfg3 = _config(library_path, tmp_path / "from_weights", init_weights=w, max_steps=7)
  _, state3 = trainer.train(cfg3)
  assert state3["step"] == 7 and state3["examples"] == 28
  assert [c["step"] for c in state3["curve"]] == [2, 3, 4, 5, 6, 7]
  # ... also with a voxel head added, which starts at zero
  cfg4 = _config(library_path, tmp_path / "with_head", init_weights=w, max_steps=6,
                 voxel_head=True, validation_size=0)
  model4, state4 = trainer.train(cfg4)
  assert model4.config.voxel_head and state4["step"] == 6
  assert any(float(v.abs().sum()) > 0 for k, v in model4.state_dict().items()
             if k.startswith("net_voxel_output."))
  # its own learning rate, scaled; the rest at the network's
  groups = trainer.parameter_groups(model4, 10.0)
  assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 10.0]
  assert sum(p.numel() for p in groups[1]["params"]) == 2 * (4 + 2) + 2
  assert len(trainer.parameter_groups(
    trainer.PhAINet(TrainConfig(**dict(TINY, voxel_head=False)).model_config()), 10.0)) == 1
  # resumed from its checkpoint (two parameter groups in the optimiser state)
  cfg5 = _config(library_path, tmp_path / "with_head", resume=str(tmp_path / "with_head" / "checkpoint.pt"),
                 max_steps=7, voxel_head=True, validation_size=0)
  _, state5 = trainer.train(cfg5)
  assert state5["step"] == 7


def test_resume_refuses_other_sizes(library_path, tmp_path):
  trainer.train(_config(library_path, tmp_path, max_steps=1, validation_size=0))
  ckpt = os.path.join(str(tmp_path), "checkpoint.pt")
  with pytest.raises(SystemExit, match="differ"):
    trainer.train(_config(library_path, tmp_path, resume=ckpt, filters=8, validation_size=0))


def test_ddp_two_processes_gloo(library_path, tmp_path):
  args = ["library=" + library_path, "output_dir=" + str(tmp_path), "batch_size=2", "max_steps=2",
          "workers=1", "chunk=4", "pool_size=8", "min_pool=4", "validation_size=0", "device=cpu",
          "log_every=1"] + ["%s=%s" % kv for kv in TINY.items()]
  env = dict(os.environ, OMP_NUM_THREADS="1")
  proc = subprocess.run(
    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
     "-m", "phai_cctbx.training.trainer"] + args,
    capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "cpu x2" in proc.stdout
  blob = torch.load(os.path.join(str(tmp_path), "checkpoint.pt"), weights_only=False)
  assert blob["step"] == 2 and blob["examples"] == 2 * 2 * 2


def test_key_value_arguments():
  cfg = TrainConfig.from_args(["batch_size=8", "mixed_precision=false", "validation_d_min=1.0 2.0"])
  assert cfg.batch_size == 8 and cfg.mixed_precision is False and cfg.validation_d_min == (1.0, 2.0)
  with pytest.raises(SystemExit, match="unknown parameter"):
    TrainConfig.from_args(["batchsize=8"])
  with pytest.raises(SystemExit, match="partial_start_fraction"):
    trainer.train(TrainConfig.from_args(["partial_start_fraction=1.5"]))
  with pytest.raises(SystemExit, match="above"):
    trainer.train(TrainConfig.from_args(["partial_wrong_min=0.5", "partial_wrong_max=0.2"]))
  with pytest.raises(SystemExit, match="random_atom_fraction must be from 0 to 1"):
    trainer.train(TrainConfig.from_args(["random_atom_fraction=1.5"]))


def test_interruption_writes_a_checkpoint(library_path, tmp_path):
  """SIGTERM (a scheduler's kill, Ctrl-C) stops after the current step with a
  checkpoint, so a killed run loses only that step."""
  import signal
  args = ["library=" + library_path, "output_dir=" + str(tmp_path), "batch_size=2",
          "max_steps=1000000", "workers=1", "chunk=4", "pool_size=8", "min_pool=4",
          "validation_size=0", "device=cpu", "log_every=1", "checkpoint_minutes=1000"] + \
         ["%s=%s" % kv for kv in TINY.items()]
  proc = subprocess.Popen([sys.executable, "-u", "-m", "phai_cctbx.training.trainer"] + args,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("step"):
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, "".join(lines) + out
  assert "stopping at step" in out
  blob = torch.load(os.path.join(str(tmp_path), "checkpoint.pt"), weights_only=False)
  assert blob["step"] >= 1 and "optimizer" in blob


def test_validation_set_packaged_or_cached(library_path, tmp_path):
  """By default the validation set shipped with the package; a cache file is
  written once and read back; a set that does not fit is generated."""
  import numpy as np
  from phai_cctbx.training.molecules import ConformerLibrary
  shipped = trainer.validation_structures(None, 8, 400)  # no library needed: nothing generated
  with np.load(trainer.PACKAGED_VALIDATION) as f:
    assert len(f["cell"]) == 256
    assert np.array_equal(shipped["frac"], f["frac"][:8])
  assert (shipped["numbers"] != 0).any(axis=1).all()
  library = ConformerLibrary.load(library_path)
  cache = str(tmp_path / "sub" / "val.npz")
  made = trainer.validation_structures(library, 2, 200, cache)   # padded to 200: generated
  assert made["frac"].shape == (2, 200, 3) and os.path.isfile(cache)
  again = trainer.validation_structures(None, 2, 200, cache)
  assert all(np.array_equal(made[k], again[k]) for k in made)


def test_reuse_throttles_new_structures():
  """With reuse=2 the pool takes new structures only while it has fewer than
  one per two examples trained (beyond the initial fill); reuse=0 takes all."""
  class Pool:
    added = 0
  cfg = TrainConfig(min_pool=100, reuse=2.0)
  pool = Pool()
  pool.added = 100
  assert not trainer._wants_structures(pool, 0, cfg)
  assert trainer._wants_structures(pool, 64, cfg)          # 32 new ones due
  pool.added = 132
  assert not trainer._wants_structures(pool, 64, cfg)
  assert trainer._wants_structures(pool, 128, cfg, world=1)
  assert not trainer._wants_structures(pool, 128, cfg, world=2)   # per rank: 64 examples
  assert trainer._wants_structures(pool, 10 ** 6, TrainConfig(reuse=0.0))
  pool.added = 10 ** 9
  assert trainer._wants_structures(pool, 0, TrainConfig(reuse=0.0))


def test_generator_rates(library_path):
  from phai_cctbx.training.benchmark_throughput import generator_rates
  rates = generator_rates(library_path, 4)
  assert set(rates) == {"organic, insertion", "organic, compression", "ionic",
                        "training mix (insertion)"}
  assert all(r > 0 for r in rates.values())


def test_benchmark_throughput_runs_only_the_parts_asked(library_path, capsys):
  from phai_cctbx.training import benchmark_throughput
  with pytest.raises(SystemExit, match="parts=trainers"):
    benchmark_throughput.main(["parts=trainers"])
  benchmark_throughput.main(["device=cpu", "parts=device_generator", "library=" + library_path,
                             "device_structures=4"])
  out = capsys.readouterr().out
  assert out.count("structure generator on cpu (torch") == 2
  assert "random-atom cells on cpu (random_atoms, 4 at once)" in out
  assert "examples/s" not in out and "one process" not in out


def test_benchmark_throughput_times_the_trainer_beside_the_device_generator(library_path, capsys):
  import re
  from phai_cctbx.training import benchmark_throughput
  benchmark_throughput.main(["device=cpu", "parts=concurrent", "library=" + library_path,
                             "seconds=1", "batch_size=2", "block=2"])
  out = capsys.readouterr().out
  assert "training for 1 s each way (torch generator blocks of 2)" in out, out
  rows = dict((m, (float(a), float(b))) for m, a, b in re.findall(
    r"^  (alone|between steps|background) +([0-9.]+) examples/s +([0-9.]+) new structures/s", out, re.M))
  assert set(rows) == {"alone", "between steps", "background"}, out
  # the trainer ran every way; whether a block of the generator ends within
  # a window of one second depends on the machine's load
  assert all(examples > 0 for examples, _ in rows.values()) and rows["alone"][1] == 0, out
  assert "structure generator" not in out, out


def test_structure_stream_closes_at_once_with_a_full_queue(library_path):
  """Workers whose chunks sit unread on a full queue cannot exit by themselves;
  close() must still end them all without waiting for each in turn."""
  import time
  from phai_cctbx.training.data import StructureStream
  stream = StructureStream(library_path, seed=3, workers=4, chunk=2)
  assert stream.get(timeout=120) is not None
  deadline = time.time() + 120
  while not stream.queue.full() and time.time() < deadline:  # nobody reads: the queue fills
    time.sleep(0.5)
  assert stream.queue.full()
  t = time.time()
  stream.close()
  assert not any(p.is_alive() for p in stream.processes)
  assert time.time() - t < 8  # was 5 s per blocked worker


def test_run_network_holds_partial_starts_through_recycling():
  """Held examples see their start in every cycle; the others see the
  network's signs of the cycle before."""
  from phai_cctbx import network_io

  class Recorder(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.inputs = []

    def forward(self, amplitudes, phases):
      self.inputs.append(phases.clone())
      logits = torch.zeros((phases.shape[0], 2, n))
      logits[:, 1] = 1.0  # every sign +1 (phase 0)
      return logits

  n = 1205
  g = torch.Generator().manual_seed(0)
  start = torch.where(torch.rand((3, n), generator=g) < 0.5, -1.0, 1.0)
  amplitudes = torch.rand((3, n), generator=g)
  measured = torch.ones((3, n), dtype=torch.bool)
  model = Recorder()
  hold = torch.tensor([True, False, True])
  trainer.run_network(model, amplitudes, measured, "mean", 3, start, hold=hold)
  assert len(model.inputs) == 3
  first, plus = network_io.phase_grid(start), network_io.phase_grid(torch.ones_like(start))
  assert torch.equal(model.inputs[0], first)
  for later in model.inputs[1:]:
    assert torch.equal(later[0], first[0]) and torch.equal(later[2], first[2])
    assert torch.equal(later[1], plus[1]) and not torch.equal(later[1], first[1])
  model.inputs.clear()
  trainer.run_network(model, amplitudes, measured, "mean", 2, start)  # no hold: all recycled
  assert torch.equal(model.inputs[1], plus)
