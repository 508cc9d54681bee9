"""The device generator's background thread: blocks go to the trainer as they
are made, never more than asked for, failures reach the trainer, and the
thread stops when closed."""
import threading
import time

import phai_cctbx  # noqa: F401
import pytest
import torch

from phai_cctbx.training.background import BackgroundStructures


class CountingMaker:
  """sample_batch stand-in: blocks whose cells count the structures made;
  ``gate`` holds each block back until set, ``fail_after`` blocks then raise."""

  def __init__(self, fail_after=None):
    self.calls = 0
    self.gate = threading.Event()
    self.fail_after = fail_after

  def sample_batch(self, n, generator):
    self.gate.wait(timeout=10)
    if self.fail_after is not None and self.calls >= self.fail_after:
      raise RuntimeError("CUDA error: out of memory\nTried to allocate 2 GiB")
    first = self.calls * n
    self.calls += 1
    idx = torch.arange(first, first + n, dtype=torch.float32)
    return {"frac": torch.zeros((n, 4, 3)), "numbers": torch.ones((n, 4), dtype=torch.int8),
            "cell": idx[:, None].expand(n, 6).clone()}


def _wait_for(condition, seconds=10):
  t = time.time()
  while not condition():
    assert time.time() - t < seconds, "timed out"
    time.sleep(0.01)


def test_take_gives_what_is_made_in_order_and_never_more_than_asked():
  maker = CountingMaker()
  bg = BackgroundStructures(maker, block=5, generator=None, device="cpu", depth=2)
  try:
    assert bg.take(3) is None           # nothing made yet: the trainer does not wait
    maker.gate.set()
    _wait_for(lambda: bg.made >= 10)
    got = [bg.take(3) for _ in range(3)]
    seen = torch.cat([g["cell"][:, 0] for g in got])
    assert [g["cell"].shape[0] for g in got] == [3, 3, 3]
    assert seen.tolist() == list(range(9))  # every structure once, in the order made
    assert bg.rate() > 0
  finally:
    bg.close()
  assert not bg._thread.is_alive()


def test_the_queue_bounds_how_far_the_thread_runs_ahead():
  maker = CountingMaker()
  maker.gate.set()
  bg = BackgroundStructures(maker, block=4, generator=None, device="cpu", depth=2)
  try:
    _wait_for(lambda: maker.calls >= 3)
    time.sleep(0.3)
    assert maker.calls == 3             # two blocks queued, a third waiting to be queued
    bg.take(8)
    _wait_for(lambda: maker.calls >= 5)
  finally:
    bg.close()


def test_a_failure_reaches_the_trainer_after_what_was_made():
  maker = CountingMaker(fail_after=1)
  maker.gate.set()
  bg = BackgroundStructures(maker, block=2, generator=None, device="cpu")
  try:
    _wait_for(lambda: bg.error is not None)
    assert bg.take(2)["cell"].shape[0] == 2   # the block made before the failure
    with pytest.raises(RuntimeError, match="^CUDA error: out of memory$"):
      bg.take(2)
  finally:
    bg.close()
