"""Training the PhAI network on artificial P2_1/c structures.

One loop for CPU, one GPU, or several GPUs under ``torchrun`` (PyTorch DDP;
the gloo backend on CPU).  Needs numpy and torch only (no cctbx), so it runs
on any training machine: ``python -m phai_cctbx.training.trainer key=value
...`` takes the fields of :class:`TrainConfig`; ``phai.train`` is the same
with PHIL parameters.

Every ``checkpoint_minutes``, at the end, and when the process is told to
stop (SIGINT/SIGTERM), the full state goes to ``<output_dir>/checkpoint.pt``
(one file, replaced atomically); ``resume=<that file>`` continues exactly
there.  Validation r on a fixed synthetic set is printed as training goes and
kept in the checkpoint as the learning curve.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time

T_IMPORT = time.time()  # about when the process started, for the lease's start-up time

import numpy as np
import torch
import torch.distributed as dist

from phai_cctbx import network_io
from phai_cctbx.model import PhAIConfig, PhAINet
from phai_cctbx.training.data import StructurePool, StructureStream
from phai_cctbx.training.examples import ExampleMaker, ExampleOptions
from phai_cctbx.training.loss import OriginInvariantLoss, sign_correlation
from phai_cctbx.training.starts import ChargeFlipper, StartMaker


# The default network for the shipped weights: small enough to phase in about
# a second on two CPU cores, and to train on one GPU in tens of minutes.
DEFAULT_MODEL = dict(filters=32, cnn_depth=4, dim=512, dim_exp=1024, dim_token_exp=128,
                     mlp_depth=6)


@dataclasses.dataclass
class TrainConfig:
  library: str = "cache/conformers.npz"
  output_dir: str = "runs/default"
  resume: str = ""
  init_weights: str = ""            # start from a weights file (e.g. the shipped model) with its history
  # network
  filters: int = DEFAULT_MODEL["filters"]
  cnn_depth: int = DEFAULT_MODEL["cnn_depth"]
  dim: int = DEFAULT_MODEL["dim"]
  dim_exp: int = DEFAULT_MODEL["dim_exp"]
  dim_token_exp: int = DEFAULT_MODEL["dim_token_exp"]
  mlp_depth: int = DEFAULT_MODEL["mlp_depth"]
  voxel_head: bool = True           # per-reflection output from the conv features and input (model.py)
  voxel_head_lr_scale: float = 10.0 # its learning rate, in units of the network's
  amplitude_scaling: str = "mean"
  # optimiser
  optimizer: str = "adamw"          # adamw | rmsprop
  learning_rate: float = 5e-4
  weight_decay: float = 1e-4
  warmup_steps: int = 500
  max_steps: int = 100000
  min_lr_fraction: float = 0.05
  grad_clip: float = 1.0
  batch_size: int = 256
  max_cycles: int = 3               # recycling cycles per batch drawn from 1..max_cycles
  random_start_fraction: float = 0.5   # of the starts that are not partial: random signs, else zero
  partial_start_fraction: float = 0.3  # starts from the true signs with some of them wrong
  partial_wrong_min: float = 0.05
  partial_wrong_max: float = 0.45
  partial_weak_fraction: float = 0.5   # of the partial starts: wrong signs biased towards weak reflections
  cf_start_fraction: float = 0.1       # partial starts then 1-5 cycles of charge flipping (torch, on the batch)
  partial_hold: float = 0.75           # of the partial starts: the trained (last) cycle sees the start
                                       # itself, not the network's recycled output of it
  partial_origin: bool = True          # partial starts scored at their own origin (loss.py), not the best
  mixed_precision: bool = True      # bf16 autocast on GPU
  # data
  workers: int = 0                  # generator processes (0: all cores but one)
  chunk: int = 32
  pool_size: int = 20000
  min_pool: int = 2048
  reuse: float = 0.0                # draws per new structure to aim at (0: take all the generators make);
                                    # on a few CPU cores it leaves the generator idle instead of wasting structures
  max_atoms: int = 400
  packing: str = "insert"           # insert (fast) | compress (realistic, slow)
  compress_workers: int = 0         # generator processes that use compression anyway
  d_min_max: float = 2.2
  missing_max: float = 0.15
  # bookkeeping
  seed: int = 0
  device: str = "auto"
  max_minutes: float = 0.0          # stop (with a checkpoint) after this long; 0 = no limit
  deadline: float = 0.0             # wall-clock time (s since the epoch) by which to have stopped, the last
                                    # validation and checkpoint done; 0 = none (set by training.lease)
  checkpoint_minutes: float = 5.0
  log_every: int = 50
  validate_every: int = 1000
  validation_size: int = 256
  validation_d_min: tuple = (1.0, 1.6, 2.0)
  validation_file: str = ""         # cache of the validation structures ("": the packaged set)
  cell_strain: float = 0.03         # random cell strain each time a pooled structure is drawn
  device_structures: float = 0.0    # new structures made on the training device per example (torch
                                    # generator, organic); up to a batch of them per step go straight
                                    # into the batch, the rest of the batch comes from the pool
  device_time_share: float = 0.0    # >0: fewer device structures per step when making them would take
                                    # more than this share of the wall time (rates measured as it runs)
  device_block: int = 0             # structures per call of the device generator (0: 8 steps' worth)
  random_atom_fraction: float = 0.0 # share of new structures that are cells of random atoms
                                    # (training.random_atoms), from both generators
  device_background: bool = False   # the device generator in its own thread (and CUDA stream): each
                                    # step takes what it has made, up to device_structures per example

  def model_config(self) -> PhAIConfig:
    return PhAIConfig(filters=self.filters, cnn_depth=self.cnn_depth, dim=self.dim,
                      dim_exp=self.dim_exp, dim_token_exp=self.dim_token_exp,
                      mlp_depth=self.mlp_depth, voxel_head=self.voxel_head)

  @classmethod
  def from_args(cls, args) -> "TrainConfig":
    """From ``key=value`` strings."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for arg in args:
      if "=" not in arg:
        raise SystemExit("arguments are key=value; unknown: %s" % arg)
      key, value = arg.split("=", 1)
      if key not in fields:
        raise SystemExit("unknown parameter %s (known: %s)" % (key, ", ".join(fields)))
      default = fields[key].default
      if isinstance(default, bool):
        values[key] = value.lower() in ("1", "true", "yes")
      elif isinstance(default, tuple):
        values[key] = tuple(float(v) for v in value.replace(",", " ").split())
      else:
        values[key] = type(default)(value)
    return cls(**values)


class _StopFlag:
  def __init__(self):
    self.stop = False
    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    self.stop = True


def _setup_distributed(device_name):
  world = int(os.environ.get("WORLD_SIZE", "1"))
  rank = int(os.environ.get("RANK", "0"))
  local = int(os.environ.get("LOCAL_RANK", "0"))
  if device_name == "auto":
    device_name = "cuda" if torch.cuda.is_available() else "cpu"
  if device_name == "cuda":
    torch.cuda.set_device(local)
    device = torch.device("cuda", local)
  else:
    device = torch.device(device_name)
  if world > 1:
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
  return rank, world, device


def _lr_at(step, cfg, warm_restart=0, time_fraction=0.0):
  """Linear warm-up, then a cosine decay that ends at max_steps or, with
  max_minutes set, at the time limit, whichever comes first."""
  if step - warm_restart < cfg.warmup_steps:
    return cfg.learning_rate * (step - warm_restart + 1) / cfg.warmup_steps
  t = min(1.0, max(time_fraction,
                   (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)))
  return cfg.learning_rate * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


class DeviceStructureQuota:
  """How many structures made on the training device go into each batch.

  At most ``per_example`` x ``batch_size`` per step; with ``time_share`` > 0,
  no more than the generator makes in that share of the wall time, from its
  seconds per structure in its latest block and the measured seconds of a
  training step without it: n per step = share / (1 - share) x step seconds
  / seconds per structure.  A fractional n is carried over from step to step.
  The generator is called for blocks of about BLOCK_STEPS steps' worth (the
  first only one step's worth, its rate still unknown), so that a slow
  generator never stalls training for long: on a GPU whose generator cannot
  keep up, training takes the rest of each batch from the pool instead of
  waiting for it."""

  SMOOTHING = 0.2
  BLOCK_STEPS = 64   # a block holds about this many steps' worth at the current rate

  def __init__(self, per_example, batch_size, time_share=0.0, block=0):
    self.ceiling = min(batch_size, max(1, int(round(per_example * batch_size))))
    self.share = time_share
    self.block = block if block > 0 else 8 * self.ceiling
    self.seconds_per_structure = None
    self.step_seconds = None
    self.made = 0
    self.generator_seconds = 0.0
    self.credit = 0.0

  def _smooth(self, old, new):
    return new if old is None else (1 - self.SMOOTHING) * old + self.SMOOTHING * new

  def record_generation(self, count, seconds):
    self.made += count
    self.generator_seconds += seconds
    if count > 0:  # the latest block's: blocks are large, and their size changes the cost per structure
      self.seconds_per_structure = seconds / count

  def record_step(self, seconds):
    """Wall time of one training step, the device generator's time left out."""
    self.step_seconds = self._smooth(self.step_seconds, seconds)

  def target(self):
    """Structures per step that the time share allows (a float), or the ceiling."""
    if self.share <= 0 or self.seconds_per_structure is None or self.step_seconds is None:
      return float(self.ceiling)
    n = self.share / (1.0 - self.share) * self.step_seconds / self.seconds_per_structure
    return min(float(self.ceiling), n)

  def per_step(self):
    """The whole number of device structures for this step."""
    self.credit = min(self.credit + self.target(), float(self.ceiling))
    n = int(self.credit)
    self.credit -= n
    return n

  def next_block(self, n_new):
    """How many structures to make in the next call of the generator: first
    one step's worth (its rate unknown, a slow generator must not stall the
    first steps), then about BLOCK_STEPS steps' worth, at most ``block``."""
    if self.seconds_per_structure is None:
      return max(n_new, min(self.block, self.ceiling))
    return max(n_new, min(self.block, int(math.ceil(self.target() * self.BLOCK_STEPS))))

  def rate(self):
    """Structures per second of the device generator so far (None before its first block)."""
    return self.made / self.generator_seconds if self.generator_seconds > 0 else None


class _StepClock:
  """Feeds a DeviceStructureQuota the wall time of training steps without the
  device generator's: every step on a CPU; every 10 steps on a GPU, after a
  synchronisation, so that queued kernels are counted, not only their launches."""

  def __init__(self, quota, device, every_gpu=10, enabled=True):
    self.quota = quota
    self.enabled = enabled
    self.sync = device.type == "cuda"
    self.device = device
    self.every = every_gpu if self.sync else 1
    self.reset()

  def reset(self):
    """Start timing afresh (after work that is not a training step: validation, checkpoints)."""
    self.t = time.time()
    self.steps = 0
    self.generator_seconds = 0.0

  def tick(self):
    if not self.enabled:
      return
    self.steps += 1
    if self.steps < self.every:
      return
    if self.sync:
      torch.cuda.current_stream(self.device).synchronize()
    now = time.time()
    self.quota.record_step(max(0.0, now - self.t - self.generator_seconds) / self.steps)
    self.t, self.steps, self.generator_seconds = now, 0, 0.0


class DeviceGeneratorError(RuntimeError):
  """The device structure generator failed (its first line of error)."""


class DeviceStructureSource:
  """Batches that begin with new structures made on the training device (as
  many as a DeviceStructureQuota allows) and go on with structures drawn from
  the pool; every new structure also goes into the pool."""

  def __init__(self, library, device, cfg, generator):
    from phai_cctbx.training.torch_structures import TorchStructureGenerator
    self.maker = TorchStructureGenerator(library, device, max_atoms=cfg.max_atoms,
                                         random_atom_fraction=cfg.random_atom_fraction)
    self.quota = DeviceStructureQuota(cfg.device_structures, cfg.batch_size, cfg.device_time_share,
                                      cfg.device_block)
    # the clock feeds the quota's time share; a background generator needs
    # neither (and a device-wide wait would wait for its kernels too)
    self.clock = _StepClock(self.quota, device, enabled=not cfg.device_background)
    self.device = device
    self.generator = generator
    self.batch_size = cfg.batch_size
    self.fresh = None
    self.background = None
    if cfg.device_background:
      from phai_cctbx.training.background import BackgroundStructures
      self.background = BackgroundStructures(self.maker, self.quota.block, generator, device)

  def _make(self, n):
    t = time.time()
    try:
      made = self.maker.sample_batch(n, self.generator)
      if self.device.type == "cuda":
        torch.cuda.synchronize(self.device)
    except RuntimeError as e:
      raise DeviceGeneratorError(str(e).splitlines()[0] if str(e) else type(e).__name__)
    seconds = time.time() - t
    self.quota.record_generation(made["cell"].shape[0], seconds)
    self.clock.generator_seconds += seconds
    return made

  def _take(self):
    """What the background thread has made, up to the quota's ceiling (None: nothing yet)."""
    try:
      return self.background.take(self.quota.ceiling)
    except RuntimeError as e:
      raise DeviceGeneratorError(str(e))

  def batch(self, pool, generator):
    """(frac, numbers, cell) of one batch, or None when no new structure is due."""
    if self.background is not None:
      new = self._take()
      return None if new is None else self._with_pool(new, pool, generator)
    n_new = self.quota.per_step()
    if n_new == 0:
      return None
    if self.fresh is None or self.fresh["cell"].shape[0] < n_new:
      # in blocks of several steps' worth: the generator's rounds cost
      # about the same for any number of candidates
      made = self._make(self.quota.next_block(n_new))
      self.fresh = made if self.fresh is None else {k: torch.cat([self.fresh[k], made[k]]) for k in made}
    new = {k: v[:n_new] for k, v in self.fresh.items()}
    self.fresh = {k: v[n_new:] for k, v in self.fresh.items()}
    return self._with_pool(new, pool, generator)

  def _with_pool(self, new, pool, generator):
    """The new structures (into the pool too), the rest of the batch from the pool."""
    pool.add(new)
    old = pool.sample(self.batch_size - new["cell"].shape[0], generator)
    return tuple(torch.cat([new[key].to(o.dtype), o]) for key, o in zip(("frac", "numbers", "cell"), old))

  def close(self):
    if self.background is not None:
      self.background.close()

  def note(self):
    """The device generator's part of a log line ('' before its first block)."""
    if self.background is not None:
      b = self.background
      return "; device (background): %d made, %.0f structures/s" % (b.made, b.rate())
    q = self.quota
    if q.rate() is None:
      return ""
    return "; device: %d made, %.0f structures/s, %.1f per step" % (q.made, q.rate(), q.target())


def _wants_structures(pool, examples_this_run, cfg, world=1):
  """Whether the pool takes another chunk of new structures now: always, unless
  ``cfg.reuse`` is set and this rank already has one new structure per
  ``reuse`` examples it trained on (a full generator queue then blocks its
  processes, which frees their cores for training)."""
  if cfg.reuse <= 0:
    return True
  return pool.added < cfg.min_pool + examples_this_run / (cfg.reuse * world)


def parameter_groups(model, voxel_head_lr_scale):
  """The optimiser's parameter groups: the voxel head (when there is one)
  apart, its learning rate ``voxel_head_lr_scale`` times the network's
  (``lr_scale``).  The head starts at zero beside a trained network whose
  logits are already confident; at the network's rate it cannot outgrow
  them in a short run (fine-tuning the shipped weights with it on 2 CPU
  cores, lr 2e-4, had not begun to use partial starts after 21 000
  examples, where a small network at 1e-3 did after 5 000)."""
  head = [p for n, p in model.named_parameters() if n.startswith("net_voxel_output.")]
  rest = [p for n, p in model.named_parameters() if not n.startswith("net_voxel_output.")]
  if not head:
    return [{"params": rest}]
  return [{"params": rest}, {"params": head, "lr_scale": float(voxel_head_lr_scale)}]


def run_network(model, amplitudes, measured, scaling, cycles, start_signs, grad_last=True,
                autocast=None, hold=None):
  """Recycle ``cycles`` times from ``start_signs``; gradients only through the
  last cycle.  Examples where the (B,) bool ``hold`` is True keep their start
  as the input of every cycle: the cycle that is trained then sees that start
  itself, not the network's output (for partial solutions, which recycling
  would otherwise replace by the network's own signs before the trained cycle)."""
  amp_grid = network_io.amplitude_grid(amplitudes, measured, scaling)
  signs = start_signs
  ctx = autocast or torch.autocast("cpu", enabled=False)
  for cycle in range(cycles):
    last = cycle == cycles - 1
    with torch.set_grad_enabled(grad_last and last and torch.is_grad_enabled()), ctx:
      logits = model(amp_grid, network_io.phase_grid(signs))
    if not last:
      signs = network_io.signs_and_probabilities(logits.detach())[0]
      if hold is not None:
        signs = torch.where(hold[:, None], start_signs, signs)
  return logits


# The validation set the shipped model's learning curve was measured on (256
# structures from compression packing, seed 123456789, 400 atoms at most).
PACKAGED_VALIDATION = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "data", "validation_structures.npz")


def _read_structures(path, size, max_atoms):
  """The first ``size`` padded structures of an .npz file, or None when the
  file is missing or holds fewer or differently padded ones."""
  if not os.path.isfile(path):
    return None
  with np.load(path) as f:
    batch = {k: f[k] for k in ("frac", "numbers", "cell")}
  if len(batch["cell"]) < size or batch["frac"].shape[1] != max_atoms:
    return None
  return {k: v[:size] for k, v in batch.items()}


def validation_structures(library, size, max_atoms, path=""):
  """The fixed validation structures. With ``path``, a cache: read when it
  fits, else generated (seeded) and written there. Without, the set shipped
  with the package when it fits (so that learning curves of runs anywhere are
  measured on the same set), else generated."""
  batch = _read_structures(path or PACKAGED_VALIDATION, size, max_atoms)
  if batch is not None:
    return batch
  from phai_cctbx.training.structures import StructureGenerator
  gen = StructureGenerator(library, rng=np.random.default_rng(123456789), max_atoms=max_atoms,
                           packing="compress")
  batch = gen.sample_batch(size)
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **batch)
  return batch


def strain_cells(cell, generator, strain):
  """Cells with each edge scaled by up to +-strain and beta changed by up to
  +-20*strain degrees; the fractional coordinates stay, so every structure
  drawn again from the pool is measured in a slightly different cell."""
  if strain <= 0:
    return cell
  b = cell.shape[0]
  r = 2.0 * torch.rand((b, 4), generator=generator, device=cell.device) - 1.0
  out = cell.clone()
  out[:, :3] = cell[:, :3] * (1.0 + strain * r[:, :3])
  out[:, 4] = cell[:, 4] + 20.0 * strain * r[:, 3]
  return out


# Partial solutions of the validation set: per structure a fixed fraction of
# wrong signs drawn in this range, weak-biased for every second structure.
VALIDATION_WRONG = (0.05, 0.45)


class Validator:
  """A fixed synthetic set: r and the fraction solved (r > 0.95) per
  resolution, from three kinds of start (one trial of 4 cycles each): all
  phases 0 (``mean_r``, ``solved``), random signs (``random_r``,
  ``random_solved``) and fixed partial solutions (``partial_r``,
  ``partial_solved``; ``partial_input_r`` is the r of those starts themselves)."""

  def __init__(self, library, cfg, device, maker):
    batch = validation_structures(library, cfg.validation_size, cfg.max_atoms, cfg.validation_file)
    self.structures = [torch.as_tensor(batch[k]) for k in ("frac", "numbers", "cell")]
    self.d_mins = list(cfg.validation_d_min)
    self.examples = []
    self.starts = []
    starts = StartMaker(device)
    for i, d in enumerate(self.d_mins):
      g = torch.Generator(device=device).manual_seed(1000 + i)
      ex = maker(*self.structures, generator=g, d_min=torch.tensor(d),
                 missing=torch.tensor(0.05), noise=False)
      self.examples.append(ex)
      b = ex.signs.shape[0]
      g = torch.Generator(device=device).manual_seed(2000 + i)
      lo, hi = VALIDATION_WRONG
      wrong = lo + (hi - lo) * torch.rand(b, generator=g, device=device)
      weak = torch.arange(b, device=device) % 2 == 1
      self.starts.append({
        "zero": torch.ones_like(ex.signs),
        "random": starts.random(ex.signs.shape, g),
        "partial": starts.partial(ex.signs, ex.true_amplitudes, wrong, weak, g)})

  @torch.no_grad()
  def __call__(self, model, scaling, autocast, batch=128):
    model.eval()
    out = {}
    names = {"zero": ("mean_r", "solved"), "random": ("random_r", "random_solved"),
             "partial": ("partial_r", "partial_solved")}
    for d, ex, starts in zip(self.d_mins, self.examples, self.starts):
      entry = {}
      for kind, start_all in starts.items():
        rs = []
        for s in range(0, ex.amplitudes.shape[0], batch):
          sl = slice(s, s + batch)
          logits = run_network(model, ex.amplitudes[sl], ex.measured[sl], scaling, 4, start_all[sl],
                               grad_last=False, autocast=autocast)
          pred = network_io.signs_and_probabilities(logits)[0]
          rs.append(sign_correlation(ex.true_amplitudes[sl], ex.signs[sl], pred, ex.measured[sl]))
        r = torch.cat(rs).float().cpu().numpy()
        entry[names[kind][0]] = float(r.mean())
        entry[names[kind][1]] = float((r > 0.95).mean())
      r_in = sign_correlation(ex.true_amplitudes, ex.signs, starts["partial"], ex.measured)
      entry["partial_input_r"] = float(r_in.float().mean())
      out["%.2f" % d] = entry
    model.train()
    return out


def format_validation(v):
  """One line per validation point."""
  return "  ".join(
    "d_min %s: r %.3f solved %.0f%% (random start r %.3f %.0f%%; partial %.2f -> %.3f %.0f%%)"
    % (k, x["mean_r"], 100 * x["solved"], x.get("random_r", float("nan")),
       100 * x.get("random_solved", float("nan")), x.get("partial_input_r", float("nan")),
       x.get("partial_r", float("nan")), 100 * x.get("partial_solved", float("nan")))
    for k, x in v.items())


def _save_checkpoint(path, model, optimizer, cfg, state):
  blob = {"format": "phai_cctbx-checkpoint-1",
          "train_config": dataclasses.asdict(cfg),
          "model_config": model.config.as_dict(),
          "model": model.state_dict(),
          "optimizer": optimizer.state_dict(),
          **state}
  tmp = path + ".tmp"
  torch.save(blob, tmp)
  os.replace(tmp, path)


def check_config(cfg: TrainConfig):
  """SystemExit with one line for values the trainer cannot use."""
  for name in ("random_start_fraction", "partial_start_fraction", "partial_wrong_min",
               "partial_wrong_max", "partial_weak_fraction", "cf_start_fraction", "partial_hold"):
    value = getattr(cfg, name)
    if not 0 <= value <= 1:
      raise SystemExit("%s must be a fraction between 0 and 1 (got %s)" % (name, value))
  if cfg.partial_start_fraction + cfg.cf_start_fraction > 1:
    raise SystemExit("partial_start_fraction + cf_start_fraction must not exceed 1")
  if cfg.device_structures < 0:
    raise SystemExit("device_structures must be 0 or more (got %s)" % cfg.device_structures)
  if not 0 <= cfg.device_time_share < 1:
    raise SystemExit("device_time_share must be at least 0 and below 1 (got %s)" % cfg.device_time_share)
  if not 0 <= cfg.random_atom_fraction <= 1:
    raise SystemExit("random_atom_fraction must be from 0 to 1 (got %s)" % cfg.random_atom_fraction)
  if cfg.device_block < 0:
    raise SystemExit("device_block must be 0 or more (got %s)" % cfg.device_block)
  if cfg.partial_wrong_min > cfg.partial_wrong_max:
    raise SystemExit("partial_wrong_min (%s) is above partial_wrong_max (%s)"
                     % (cfg.partial_wrong_min, cfg.partial_wrong_max))


def _end_time(cfg, t_start):
  """When the learning-rate schedule ends: the time limit or the deadline (None: neither)."""
  ends = []
  if cfg.max_minutes > 0:
    ends.append(t_start + 60 * cfg.max_minutes)
  if cfg.deadline > 0:
    ends.append(cfg.deadline)
  return min(ends) if ends else None


def train(cfg: TrainConfig, log=sys.stdout, on_checkpoint=None):
  """Train; returns (model, state).  ``on_checkpoint(path)`` is called after
  each checkpoint is written (e.g. to pack it for a machine lease)."""
  check_config(cfg)
  rank, world, device = _setup_distributed(cfg.device)
  is_main = rank == 0
  torch.manual_seed(cfg.seed + rank)
  os.makedirs(cfg.output_dir, exist_ok=True)
  ckpt_path = os.path.join(cfg.output_dir, "checkpoint.pt")

  def say(msg):
    if is_main:
      print(msg, file=log, flush=True)

  model = PhAINet(cfg.model_config()).to(device)
  groups = parameter_groups(model, cfg.voxel_head_lr_scale)
  if cfg.optimizer == "rmsprop":
    optimizer = torch.optim.RMSprop(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
  else:
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
  state = {"step": 0, "examples": 0, "seconds": 0.0, "curve": [], "runs": []}
  if cfg.resume:
    blob = torch.load(cfg.resume, map_location=device, weights_only=False)
    if blob.get("model_config") != model.config.as_dict():
      raise SystemExit("resume: the checkpoint's network sizes %s differ from the requested %s"
                       % (blob.get("model_config"), model.config.as_dict()))
    model.load_state_dict(blob["model"])
    state = {k: blob[k] for k in ("step", "examples", "seconds", "curve", "runs")}
    state["warm_restart"] = blob.get("warm_restart", 0)
    if "optimizer" in blob:
      optimizer.load_state_dict(blob["optimizer"])
      say("resumed from %s at step %d (%d examples seen)" % (cfg.resume, state["step"], state["examples"]))
    else:  # a slim checkpoint (weights and history only): the optimiser starts afresh
      state["warm_restart"] = state["step"]
      say("resumed weights from %s at step %d (%d examples seen); new optimiser state"
          % (cfg.resume, state["step"], state["examples"]))
  if cfg.init_weights and not cfg.resume:
    from phai_cctbx.weights import read_weights
    config, weights, scaling, card = read_weights(cfg.init_weights)
    added_head = model.config.voxel_head and not config.voxel_head
    if dataclasses.replace(config, voxel_head=model.config.voxel_head) != model.config:
      raise SystemExit("init_weights: the file's network sizes %s differ from the requested %s"
                       % (config.as_dict(), model.config.as_dict()))
    if config.voxel_head and not model.config.voxel_head:
      raise SystemExit("init_weights: the file's network has a voxel head; train it with "
                       "model.voxel_head=True")
    missing, _ = model.load_state_dict({k: v.float() for k, v in weights.items()},
                                       strict=not added_head)
    if added_head:
      assert all(k.startswith("net_voxel_output.") for k in missing), missing
      say("voxel head added to %s, starting at zero" % cfg.init_weights)
    state.update(step=card.get("steps", 0), examples=card.get("examples_seen", 0),
                 seconds=card.get("training_seconds", 0.0), curve=list(card.get("curve", [])),
                 runs=list(card.get("runs", [])))
    state["warm_restart"] = state["step"]
    say("started from the weights %s (%d examples seen before)" % (cfg.init_weights, state["examples"]))
  run_record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "processes": world, "from_step": state["step"], "from_examples": state["examples"]}
  state["runs"] = list(state.get("runs", [])) + [run_record]
  train_model = model
  if world > 1:
    train_model = torch.nn.parallel.DistributedDataParallel(
      model, device_ids=[device.index] if device.type == "cuda" else None)

  from phai_cctbx.training.molecules import ConformerLibrary
  library = ConformerLibrary.load(cfg.library)
  maker = ExampleMaker(device, ExampleOptions(d_min_max=cfg.d_min_max, missing_max=cfg.missing_max))
  loss_fn = OriginInvariantLoss().to(device)
  starts = StartMaker(device)
  flipper = ChargeFlipper(device) if cfg.cf_start_fraction > 0 else None
  autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=cfg.mixed_precision and device.type == "cuda")
  workers = cfg.workers or max(1, ((os.cpu_count() or 2) - 1) // world)
  stream = StructureStream(cfg.library, seed=cfg.seed * 100 + rank + 7 * state["step"],
                           workers=workers, chunk=cfg.chunk, max_atoms=cfg.max_atoms,
                           packing=cfg.packing, compress_workers=cfg.compress_workers,
                           random_atom_fraction=cfg.random_atom_fraction)
  validator = Validator(library, cfg, device, maker) if is_main and cfg.validation_size > 0 else None
  pool = StructurePool(cfg.pool_size, cfg.max_atoms, device)
  device_source = None
  if cfg.device_structures > 0:
    device_source = DeviceStructureSource(
      library, device, cfg, torch.Generator(device=device).manual_seed(cfg.seed * 15485863 + rank
                                                                       + state["step"]))
  gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 7919 + rank + state["step"])
  dgen = torch.Generator(device=device).manual_seed(cfg.seed * 104729 + rank + state["step"])
  stop = _StopFlag()
  per_step = cfg.batch_size * world
  say("training %s (%d parameters) on %s x%d, %d generator processes per rank"
      % (json.dumps(model.config.as_dict()), model.parameter_count(), device.type, world, workers))
  validation_seconds = save_seconds = 0.0

  def save():
    nonlocal save_seconds
    t = time.time()
    _save_checkpoint(ckpt_path, model, optimizer, cfg, state)
    if on_checkpoint is not None:
      on_checkpoint(ckpt_path)
    save_seconds = time.time() - t

  try:
    while pool.filled < min(cfg.min_pool, cfg.pool_size):
      pool.add(stream.get())
    if validator is not None and cfg.deadline > 0:
      # Against a deadline: time one validation first (it must fit before the
      # end), and record where this run starts unless the curve has it.
      t = time.time()
      v = validator(model, cfg.amplitude_scaling, autocast)
      validation_seconds = time.time() - t
      if not state["curve"] or state["curve"][-1]["examples"] != state["examples"]:
        state["curve"].append({"step": state["step"], "examples": state["examples"],
                               "seconds": round(state["seconds"], 1), "validation": v})
      say("validation at %d examples (start of this run, %.1f s): %s"
          % (state["examples"], validation_seconds, format_validation(v)))
    if is_main and cfg.deadline > 0:
      save()  # times the checkpoint too, and leaves one should the run be killed early
    t_start = time.time()
    say("first step %.1f s after the start" % (t_start - T_IMPORT))
    end_time = _end_time(cfg, t_start)
    t_ckpt = t_log = time.time()
    if device_source is not None:
      device_source.clock.reset()
    seconds0, examples_log = state["seconds"], state["examples"]
    examples0 = state["examples"]
    steps0 = state["step"]
    final_saved = False
    losses = []
    model.train()
    while state["step"] < cfg.max_steps:
      while _wants_structures(pool, state["examples"] - examples0, cfg, world):
        chunk = stream.get(block=False)  # whatever the generators have ready
        if chunk is None:
          break
        pool.add(chunk)
      time_fraction = (time.time() - t_start) / max(end_time - t_start, 1e-9) if end_time else 0.0
      lr = _lr_at(state["step"], cfg, state.get("warm_restart", 0), time_fraction)
      for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
      drawn = None
      if device_source is not None:
        try:
          drawn = device_source.batch(pool, gen)
        except DeviceGeneratorError as e:  # an optional source of structures: the pool goes on alone
          say("the device structure generator failed (%s): training goes on from the pool alone" % e)
          device_source.close()
          device_source = None
      frac, numbers, cell = drawn if drawn is not None else pool.sample(cfg.batch_size, gen)
      ex = maker(frac, numbers, strain_cells(cell, dgen, cfg.cell_strain), generator=dgen)
      cycles = int(torch.randint(1, cfg.max_cycles + 1, (1,), generator=gen))
      start, kind = starts.training_starts(ex.signs, ex.true_amplitudes, dgen, cfg.partial_start_fraction,
                                        cfg.random_start_fraction, cfg.partial_wrong_min,
                                        cfg.partial_wrong_max, cfg.partial_weak_fraction,
                                        cfg.cf_start_fraction, flipper, ex.amplitudes, ex.measured)
      hold = (kind >= 2) & (torch.rand(kind.shape, generator=dgen, device=device) < cfg.partial_hold)
      logits = run_network(train_model, ex.amplitudes, ex.measured, cfg.amplitude_scaling, cycles,
                           start, autocast=autocast, hold=hold)
      # A partial start is finished where it stands: scored at its own origin.
      origin = torch.where(kind >= 2, starts.origin_of(ex.signs, start, ex.true_amplitudes),
                           torch.full_like(kind, -1)) if cfg.partial_origin else None
      loss = loss_fn(logits, ex.signs, ex.weights, origin)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
      optimizer.step()
      losses.append(loss.detach())
      if device_source is not None:
        device_source.clock.tick()
      state["step"] += 1
      state["examples"] += per_step
      state["seconds"] = seconds0 + time.time() - t_start
      run_record.update(to_step=state["step"], to_examples=state["examples"],
                        seconds=round(time.time() - t_start, 1))
      now = time.time()
      stop_now = stop.stop or (cfg.max_minutes > 0 and now - t_start > 60 * cfg.max_minutes)
      if cfg.deadline > 0:
        # stop while one more step, the last validation and the checkpoint still fit
        step_seconds = (now - t_start) / max(1, state["step"] - steps0)
        stop_now = stop_now or now + 2 * step_seconds + 1.2 * (validation_seconds + save_seconds) > cfg.deadline
      if world > 1:
        flag = torch.tensor([1.0 if stop_now else 0.0], device=device)
        dist.all_reduce(flag)
        stop_now = bool(flag.item() > 0)
      if state["step"] % cfg.log_every == 0 and is_main:
        dt = time.time() - t_log
        say("step %7d  examples %9d  %7.0f ex/s  loss %.4f  lr %.2e  pool %d (%d made)%s"
            % (state["step"], state["examples"], (state["examples"] - examples_log) / max(dt, 1e-9),
               torch.stack(losses).mean().item(), optimizer.param_groups[0]["lr"], pool.filled,
               pool.added * world, device_source.note() if device_source is not None else ""))
        losses, t_log, examples_log = [], time.time(), state["examples"]
      last = state["step"] >= cfg.max_steps or stop_now
      paused = False  # time spent on other things than training steps
      if validator is not None and (state["step"] % cfg.validate_every == 0 or last):
        paused = True
        t = time.time()
        v = validator(model, cfg.amplitude_scaling, autocast)
        validation_seconds = time.time() - t
        state["curve"].append({"step": state["step"], "examples": state["examples"],
                               "seconds": round(state["seconds"], 1), "validation": v})
        say("validation at %d examples: %s" % (state["examples"], format_validation(v)))
      if is_main and (last or time.time() - t_ckpt > 60 * cfg.checkpoint_minutes):
        paused = True
        save()
        final_saved = last
        t_ckpt = time.time()
      if device_source is not None and paused:
        device_source.clock.reset()
      if stop_now:
        say("stopping at step %d: checkpoint in %s" % (state["step"], ckpt_path))
        break
  finally:
    stream.close()
    if device_source is not None:
      device_source.close()
    if world > 1:
      dist.destroy_process_group()
  if is_main and not final_saved:
    save()
  return model, state


def slim_checkpoint(checkpoint_path, out_path):
  """A copy of a checkpoint without the optimiser state (a third of the size)."""
  blob = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
  blob.pop("optimizer", None)
  torch.save(blob, out_path)


def export_weights(checkpoint_path, weights_path, card_extra=None):
  """Write the shipped-weights file (half precision) from a training checkpoint."""
  from phai_cctbx.weights import save_weights
  blob = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
  net = PhAINet(PhAIConfig.from_dict(blob["model_config"]))
  net.load_state_dict(blob["model"])
  card = {"steps": blob["step"], "examples_seen": blob["examples"],
          "training_seconds": blob["seconds"], "curve": blob["curve"], "runs": blob.get("runs", []),
          "train_config": blob["train_config"]}
  card.update(card_extra or {})
  return save_weights(weights_path, net, blob["train_config"]["amplitude_scaling"], card)


def main(argv=None):
  cfg = TrainConfig.from_args(sys.argv[1:] if argv is None else argv)
  train(cfg)


if __name__ == "__main__":
  main()
