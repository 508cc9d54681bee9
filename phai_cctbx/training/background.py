"""Structures made by the torch generator in a background thread.

On a GPU the generator's many data-dependent steps (which candidates are
left, how many atoms the largest has) each wait until the device has done
everything queued before them.  Called between training steps, each such wait
also waits for the trainer's queued kernels, and the generator crawls (an
H200: 83-192 structures/s beside the trainer, 669 alone).  Here the generator
runs in its own thread on its own CUDA stream: its waits are for its own
kernels only, while the trainer's go on in the other stream.  torch releases
the GIL while it waits for the device, so the trainer's thread keeps
launching.  On a CPU the thread shares the cores with the trainer.

Blocks of structures go into a short queue; the trainer takes what is ready
and never waits for it (``take``).
"""
from __future__ import annotations

import queue
import threading
import time

import torch


class BackgroundStructures:
  """Blocks of ``block`` structures from ``maker.sample_batch`` made in a
  daemon thread; ``take(n)`` returns up to n of those made so far."""

  def __init__(self, maker, block, generator, device, depth=2):
    self.maker, self.block, self.generator = maker, int(block), generator
    self.device = torch.device(device)
    self.stream = None
    if self.device.type == "cuda":
      self.stream = torch.cuda.Stream(self.device)
      # what the maker copied to the device (its library) is in the current stream's queue
      self.stream.wait_stream(torch.cuda.current_stream(self.device))
    self.ready = queue.Queue(maxsize=max(1, int(depth)))
    self.left = None
    self.error = None
    self.made = 0
    self.t0 = time.time()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="device-structures", daemon=True)
    self._thread.start()

  def _make(self):
    if self.stream is None:
      return self.maker.sample_batch(self.block, self.generator)
    with torch.cuda.stream(self.stream):
      made = self.maker.sample_batch(self.block, self.generator)
      done = torch.cuda.Event()
      done.record(self.stream)
    done.synchronize()  # this thread waits for its own kernels only
    return made

  def _run(self):
    try:
      while not self._stop.is_set():
        made = self._make()
        self.made += made["cell"].shape[0]
        while not self._stop.is_set():
          try:
            self.ready.put(made, timeout=0.2)
            break
          except queue.Full:
            continue
    except Exception as e:  # reported to the trainer by take()
      self.error = str(e).splitlines()[0] if str(e) else type(e).__name__

  def take(self, n):
    """Up to n structures (dict of tensors) from the blocks made so far, None
    when none is ready; raises RuntimeError when the thread has failed and
    nothing it made is left."""
    while self.left is None or self.left["cell"].shape[0] < n:
      try:
        block = self.ready.get_nowait()
      except queue.Empty:
        break
      if self.stream is not None:  # made on the other stream: keep its memory until used here
        for t in block.values():
          t.record_stream(torch.cuda.current_stream(self.device))
      self.left = block if self.left is None else {k: torch.cat([self.left[k], block[k]])
                                                   for k in block}
    if self.left is None or self.left["cell"].shape[0] == 0:
      if self.error is not None:
        raise RuntimeError(self.error)
      return None
    out = {k: v[:n] for k, v in self.left.items()}
    self.left = {k: v[n:] for k, v in self.left.items()}
    return out

  def rate(self):
    """Structures per second of the thread's wall time so far."""
    return self.made / max(time.time() - self.t0, 1e-9)

  def close(self):
    self._stop.set()
    self._thread.join(timeout=30)
