"""A stream of artificial structures from worker processes, and a pool to draw batches from.

Worker processes run the structure generator (numpy only) and put chunks of
padded structures on a queue.  The trainer keeps a pool of recent structures
on its device, adds whatever chunks have arrived before each step, and draws
each batch at random from the pool, so the accelerator never waits for the
generator once the pool is filled: a slow generator only means each
structure is seen a few more times (with new measurement conditions each
time).
"""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_module

import numpy as np
import torch


def generator_options(packing):
  """StructureGenerator options for a packing method ("insert" packs more
  loosely, so its density window is wider)."""
  if packing == "insert":
    return {"packing": "insert", "volume_per_atom": (18.0, 30.0)}
  return {"packing": packing}


def _worker_main(library_path, seed, chunk, max_atoms, packing, out_queue, stop_event,
                 random_atom_fraction=0.0):
  import os
  os.environ.setdefault("OMP_NUM_THREADS", "1")
  torch.set_num_threads(1)  # one core per process (random-atom cells are made in torch)
  from phai_cctbx.training.molecules import ConformerLibrary
  from phai_cctbx.training.structures import StructureGenerator
  library = ConformerLibrary.load(library_path)
  gen = StructureGenerator(library, rng=np.random.default_rng(seed), max_atoms=max_atoms,
                           random_atom_fraction=random_atom_fraction, **generator_options(packing))
  while not stop_event.is_set():
    batch = gen.sample_batch(chunk)
    while not stop_event.is_set():
      try:
        out_queue.put(batch, timeout=1.0)
        break
      except queue_module.Full:
        continue


class StructureStream:
  """Chunks of generated structures from ``workers`` background processes
  (``compress_workers`` of them with the slow, realistic compression packing)."""

  def __init__(self, library_path, seed, workers=1, chunk=32, max_atoms=400, packing="insert",
               compress_workers=0, random_atom_fraction=0.0):
    ctx = mp.get_context("spawn")
    self.queue = ctx.Queue(maxsize=max(4, 4 * workers))
    self.stop_event = ctx.Event()
    self.processes = [
      ctx.Process(target=_worker_main, daemon=True,
                  args=(library_path, seed * 1000 + i, chunk, max_atoms,
                        "compress" if i < compress_workers else packing, self.queue, self.stop_event,
                        random_atom_fraction))
      for i in range(workers)]
    for p in self.processes:
      p.start()

  def get(self, block=True, timeout=None):
    """One chunk (dict of numpy arrays), or None when none is ready and block is False."""
    try:
      return self.queue.get(block=block, timeout=timeout)
    except queue_module.Empty:
      return None

  def close(self):
    """Stop the workers at once.  Their output is no longer wanted, and a
    worker that has put chunks on the (full) queue cannot exit until they are
    read, so waiting for each in turn (5 s apiece) cost a 15-process GPU run
    over a minute at its end."""
    self.stop_event.set()
    for p in self.processes:
      if p.is_alive():
        p.terminate()
    for p in self.processes:
      p.join(timeout=2)


class StructurePool:
  """A ring buffer of padded structures on the training device."""

  def __init__(self, size, max_atoms, device):
    self.size = size
    self.frac = torch.zeros((size, max_atoms, 3), dtype=torch.float32, device=device)
    self.numbers = torch.zeros((size, max_atoms), dtype=torch.int8, device=device)
    self.cell = torch.zeros((size, 6), dtype=torch.float32, device=device)
    self.filled = 0
    self.cursor = 0
    self.added = 0

  def add(self, chunk):
    n = len(chunk["cell"])
    if n > self.size:
      chunk = {k: chunk[k][-self.size:] for k in ("frac", "numbers", "cell")}
      n = self.size
    idx = (self.cursor + torch.arange(n)) % self.size
    dev = self.frac.device
    self.frac[idx] = torch.as_tensor(chunk["frac"]).to(dev, non_blocking=True)
    self.numbers[idx] = torch.as_tensor(chunk["numbers"]).to(dev, non_blocking=True)
    self.cell[idx] = torch.as_tensor(chunk["cell"]).to(dev, non_blocking=True)
    self.cursor = int((self.cursor + n) % self.size)
    self.filled = min(self.size, self.filled + n)
    self.added += n

  def sample(self, batch_size, generator):
    idx = torch.randint(0, self.filled, (batch_size,), generator=generator).to(self.frac.device)
    return self.frac[idx], self.numbers[idx], self.cell[idx]
