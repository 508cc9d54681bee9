"""Training throughput (examples per second) for each model size on this machine.

    python -m phai_cctbx.training.benchmark_throughput [device=auto] [batch_size=64] [steps=5]
        [library=cache/conformers.npz] [structures=60] [device_structures=2048]
        [seconds=60] [block=2048 (CPU: 128)] [parts=trainer,generator,device_generator,concurrent]

Times full training steps (structure factors of padded random structures,
example drawing, recycling with 2 cycles, origin-invariant loss, backward,
optimiser step) for the shipped default size, the published size and a small
one.  The structure generator runs in separate processes, one per core; its
rate in one process is timed separately for each packing and kind of
structure, when a conformer library is there; the batched torch generator
(torch_structures) is timed on the device itself, so that its rate of new
structures can be set against the examples per second the trainer takes;
``concurrent`` trains the shipped size for ``seconds`` alone and then as long
beside that generator as the trainer runs it, between the steps within a
quarter of the time (``device_time_share=0.25``) and in its background thread
(``device_background``), blocks of ``block``, and prints the training rate and
the new structures per second of each: whether the generator keeps up, and
what it costs.
``parts`` picks which of the four timings run (all by default).
"""
import os
import sys
import time

import numpy as np
import torch

from phai_cctbx.model import PUBLISHED, PhAIConfig, PhAINet
from phai_cctbx.training.examples import ExampleMaker
from phai_cctbx.training.loss import OriginInvariantLoss
from phai_cctbx.training.trainer import DEFAULT_MODEL, run_network

SIZES = {
  "small": PhAIConfig(filters=16, cnn_depth=2, dim=256, dim_exp=512, dim_token_exp=64, mlp_depth=3),
  "default (shipped)": PhAIConfig(**DEFAULT_MODEL),
  "published": PUBLISHED,
}


def random_structures(n, atoms=120, seed=0):
  rng = np.random.default_rng(seed)
  frac = rng.random((n, 400, 3)).astype(np.float32)
  numbers = np.zeros((n, 400), np.int8)
  numbers[:, :atoms] = rng.choice([1, 6, 7, 8], size=(n, atoms), p=[0.45, 0.35, 0.1, 0.1])
  cell = np.tile(np.array([8.0, 9.0, 10.0, 90.0, 105.0, 90.0], np.float32), (n, 1))
  return frac, numbers, cell


def training_step(config, device, batch_size):
  """(step, parameter count): step() runs one full training step of a
  network of ``config`` on a batch of random structures."""
  model = PhAINet(config).to(device)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  maker = ExampleMaker(device)
  loss_fn = OriginInvariantLoss().to(device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
  gen = torch.Generator(device=device).manual_seed(0)
  frac, numbers, cell = random_structures(batch_size)
  def step():
    ex = maker(frac, numbers, cell, generator=gen)
    start = torch.ones_like(ex.signs)
    logits = run_network(model, ex.amplitudes, ex.measured, "mean", 2, start, autocast=autocast)
    loss = loss_fn(logits, ex.signs, ex.weights)
    opt.zero_grad()
    loss.backward()
    opt.step()
  return step, model.parameter_count()


def _sync(device):
  """Waits for the kernels of this thread's stream (not the background generator's)."""
  if device.type == "cuda":
    torch.cuda.current_stream(device).synchronize()


def measure(config, device, batch_size, steps):
  step, params = training_step(config, device, batch_size)
  step()  # warm-up
  _sync(device)
  t0 = time.time()
  for _ in range(steps):
    step()
  _sync(device)
  return batch_size * steps / (time.time() - t0), params


def _train_for(step, device, seconds, each=None):
  """Training steps for about ``seconds`` (``each()`` after each): (steps, seconds taken)."""
  _sync(device)
  t0, n = time.time(), 0
  while time.time() - t0 < seconds:
    step()
    if each is not None:
      each()
    n += 1
    if n % 10 == 0:
      _sync(device)
  _sync(device)
  return n, time.time() - t0


def concurrent_rates(config, library_path, device, batch_size, seconds, block, seed=0,
                     time_share=0.25):
  """The trainer alone, then beside the torch generator run as the trainer
  runs it (trainer.DeviceStructureSource, one new structure per example at
  most): between the steps within a ``time_share`` of the time
  (``device_time_share``), and in its background thread
  (``device_background``).  {mode: (examples/s, new structures/s)}, mode
  "alone", "between steps" and "background"."""
  from phai_cctbx.training.data import StructurePool
  from phai_cctbx.training.molecules import ConformerLibrary
  from phai_cctbx.training.trainer import DeviceStructureSource, TrainConfig
  library = ConformerLibrary.load(library_path)
  step, _ = training_step(config, device, batch_size)
  step()
  n, dt = _train_for(step, device, seconds)
  rates = {"alone": (batch_size * n / dt, 0.0)}
  frac, numbers, cell = random_structures(batch_size)
  pick = torch.Generator().manual_seed(seed)
  for mode, background in (("between steps", False), ("background", True)):
    cfg = TrainConfig(batch_size=batch_size, device_structures=1.0, device_time_share=time_share,
                      device_block=block, device_background=background)
    pool = StructurePool(4 * batch_size, cfg.max_atoms, device)
    pool.add({"frac": frac, "numbers": numbers, "cell": cell})
    source = DeviceStructureSource(library, device, cfg,
                                   torch.Generator(device=device).manual_seed(seed))
    made = lambda: source.background.made if background else source.quota.made  # noqa: E731
    try:
      # warm-up: until the first block is made (and, between steps, the rates are known)
      while made() == 0 or (not background and source.quota.step_seconds is None):
        step()
        source.batch(pool, pick)
        source.clock.tick()
      made0 = made()
      n, dt = _train_for(step, device, seconds,
                         lambda: (source.batch(pool, pick), source.clock.tick()))
      rates[mode] = (batch_size * n / dt, (made() - made0) / dt)
    finally:
      source.close()
  return rates


def generator_rates(library_path, count, seed=0):
  """{label: structures per second} of one generator process."""
  from phai_cctbx.training.data import generator_options
  from phai_cctbx.training.molecules import ConformerLibrary
  from phai_cctbx.training.structures import StructureGenerator
  library = ConformerLibrary.load(library_path)
  kinds = {"organic, insertion": dict(generator_options("insert"), inorganic_fraction=0.0),
           "organic, compression": dict(generator_options("compress"), inorganic_fraction=0.0),
           "ionic": dict(inorganic_fraction=1.0),
           "training mix (insertion)": generator_options("insert")}
  rates = {}
  for label, options in kinds.items():
    gen = StructureGenerator(library, np.random.default_rng(seed), **options)
    n = max(4, count // 4) if "compression" in label else count
    t0 = time.time()
    for _ in range(n):
      gen.sample()
    rates[label] = n / (time.time() - t0)
  return rates


def device_generator_rate(library_path, device, count, seed=0, heavy_first=None):
  """Structures per second of the batched torch generator on ``device``
  (organic, random insertion and squeeze), after one warm-up batch, and
  the share of candidates accepted (``heavy_first``: as the generator's,
  None picks by device)."""
  from phai_cctbx.training.molecules import ConformerLibrary
  from phai_cctbx.training.torch_structures import TorchStructureGenerator
  library = ConformerLibrary.load(library_path)
  gen = TorchStructureGenerator(library, device, heavy_first=heavy_first)
  g = torch.Generator(device=device).manual_seed(seed)
  gen.sample_batch(min(count, 16), g)
  if device.type == "cuda":
    torch.cuda.synchronize()
  t0 = time.time()
  gen.sample_batch(count, g)
  if device.type == "cuda":
    torch.cuda.synchronize()
  return count / (time.time() - t0), gen.accepted / max(gen.candidates, 1)


PARTS = ("trainer", "generator", "device_generator", "concurrent")


def main(argv=None):
  args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
  name = args.get("device", "auto")
  if name == "auto":
    name = "cuda" if torch.cuda.is_available() else "cpu"
  device = torch.device(name)
  batch_size = int(args.get("batch_size", 256 if device.type == "cuda" else 16))
  steps = int(args.get("steps", 20 if device.type == "cuda" else 3))
  parts = set(args.get("parts", ",".join(PARTS)).split(","))
  if not parts or parts - set(PARTS):
    raise SystemExit("parts=%s: give some of %s, comma-separated" % (args["parts"], ",".join(PARTS)))
  print("device %s (%s), batch %d, %d timed steps, %d CPU threads"
        % (device, torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           batch_size, steps, torch.get_num_threads()))
  for label, config in (SIZES.items() if "trainer" in parts else ()):
    rate, params = measure(config, device, batch_size, steps)
    print("  %-18s %6.1f M parameters  %8.1f examples/s" % (label, params / 1e6, rate))
  library = args.get("library", "cache/conformers.npz")
  if not parts & {"generator", "device_generator", "concurrent"}:
    return
  if os.path.isfile(library) and "concurrent" in parts:
    seconds = float(args.get("seconds", 60 if device.type == "cuda" else 20))
    block = int(args.get("block", 2048 if device.type == "cuda" else 128))
    rates = concurrent_rates(SIZES["default (shipped)"], library, device, batch_size, seconds, block)
    print("the shipped network training for %.0f s each way (torch generator blocks of %d):" % (seconds, block))
    for mode, (examples, made) in rates.items():
      print("  %-14s %8.1f examples/s  %8.1f new structures/s  (%.2f per example)"
            % (mode, examples, made, made / max(examples, 1e-9)))
  if os.path.isfile(library) and parts & {"generator", "device_generator"}:
    if "generator" in parts:
      print("structure generator, one process (%s):" % library)
      for label, rate in generator_rates(library, int(args.get("structures", 60))).items():
        print("  %-26s %7.1f structures/s" % (label, rate))
    if "device_generator" in parts:
      device_generator_report(library, device, int(args.get(
        "device_structures", 2048 if device.type == "cuda" else 16)))
  elif not os.path.isfile(library):
    print("structure generator: no conformer library at %s (library=...)" % library)


def random_atom_rate(device, count, seed=0):
  """Cells of random atoms (training.random_atoms) per second on ``device``,
  after one warm-up batch."""
  from phai_cctbx.training.random_atoms import random_atom_structures
  g = torch.Generator(device=device).manual_seed(seed)
  random_atom_structures(min(count, 16), g, device)
  _sync(device)
  t0 = time.time()
  made = random_atom_structures(count, g, device)["cell"].shape[0]
  _sync(device)
  return made / (time.time() - t0)


def device_generator_report(library, device, count):
  for heavy_first, how in ((True, "heavy atoms tested first"), (False, "every atom at once")):
    rate, acceptance = device_generator_rate(library, device, count, heavy_first=heavy_first)
    print("structure generator on %s (torch, batched, organic, %d structures, %.0f %% of "
          "candidates accepted, %s): %.1f structures/s"
          % (device, count, 100 * acceptance, how, rate))
  print("random-atom cells on %s (random_atoms, %d at once): %.1f structures/s"
        % (device, count, random_atom_rate(device, count)))


if __name__ == "__main__":
  main()
