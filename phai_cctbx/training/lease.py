"""Training in fixed-length GPU machine leases: one command per lease.

    python -m phai_cctbx.training.lease out_dir=$OUT [resume_dir=DIR] [minutes=9]
        [library=cache/conformers.npz] [budget_mib=30] [reserve_minutes=0.5] [work_dir=DIR]
        [key=value ...]     (any field of trainer.TrainConfig, e.g. init_weights=..., batch_size=...)
    python -m phai_cctbx.training.lease unpack=DIR checkpoint=FILE

The first form trains at once (the generator processes fill the structure
pool in seconds), stops by itself so that it has finished, last validation
and files included, ``minutes`` after it started, and leaves in ``out_dir``
what the next lease needs to go on (``resume_dir`` = a copy of those files):

- ``state.00`` ... ``state.NN``: the network weights and as much of the
  optimiser state as fits in ``budget_mib`` (each file < 16 MiB), packed
  without pickle, byte-shuffled and zlib-compressed; the most precise of these
  that fits is taken: (1) all float32; (2) weights float32, optimiser moments
  bfloat16; (3) weights float16, moments bfloat16; (4) weights float16, only
  the second moment (Adam's exp_avg_sq) in bfloat16 (the first moment starts
  at 0, and with beta1 = 0.9 is rebuilt in a few dozen steps); (5) weights
  float16 alone (a new optimiser, with warm-up);
- ``lease.json``: the list of those files with their sizes and sha256, the
  precision used, the training state, both configurations and the whole
  learning curve;
- ``train.log``: this lease's log; ``curve.png``: the learning curve.

At most 8 files, each below 16 MiB: what one run of the lent machine hands
back.  The files are rewritten at every checkpoint (``checkpoint_minutes``),
so a run killed at its limit still leaves the last checkpoint.  The default
budget of 30 MiB leaves room for the files to travel back to the machine with
the repository (its tracked files, the shipped weights included, take about
19 MiB of the 64 MiB a run may carry) and the conformer library (10 MiB for
40 000 molecules): for the default network that is float16 weights and the
bfloat16 second moment (27.6 MiB; with both moments, 37.9 MiB in the H200
lease, the three would not travel together).

On resume the network sizes and training options come from the previous
lease; ``key=value`` given here override them.  The learning rate follows a
cosine from its peak to ``min_lr_fraction`` within each lease (warm restarts
from one lease to the next).

The second form writes a ``checkpoint.pt`` (float32) from lease files, for
``phai.train export.checkpoint=...`` or ``run.resume=...`` anywhere.
"""
import time

T_START = time.time()

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from phai_cctbx.training import trainer  # noqa: E402
from phai_cctbx.training.trainer import TrainConfig  # noqa: E402

FORMAT = "phai_cctbx-lease-1"
MANIFEST = "lease.json"
MAX_FILES = 8                          # what one run hands back
FILE_LIMIT = 16 * 2 ** 20              # bytes per file handed back
PART_BYTES = FILE_LIMIT - 2 ** 16      # a margin below it
OTHER_FILES = (MANIFEST, "train.log", "curve.png")
MAX_PARTS = MAX_FILES - len(OTHER_FILES)
DEFAULT_BUDGET_MIB = 30.0              # what the lease files may take (see the module's text)

# Options of the lease's training where TrainConfig's defaults suit a long run better.
# A pool of 512 structures to start from: on a 16-core machine the generator
# processes make them in about 2 s (2048 would take 6 s).
# Validation every 2000 steps: on an H200 about every 2.5 min at 0.8 s each.
LEASE_DEFAULTS = dict(validate_every=2000, log_every=100, checkpoint_minutes=3.0, warmup_steps=300,
                      min_pool=512)
# On a GPU (measured on an H200 with 16 cores, README "Training"): the trainer
# takes about 3300 examples/s, while 15 CPU generator processes make about 180
# structures/s and the torch generator about 500 per second of GPU time.  A
# quarter of the time for the GPU generator adds about 120 new structures/s at
# about a fifth of the trainer's speed; four of the CPU processes pack by
# compression (realistic, like the validation set) instead of insertion.
# The torch generator runs in its own thread and CUDA stream (device_background): called
# between steps, its waits for the device also waited for the trainer's kernels, and it
# made 83-192 structures/s in run 7's leases against 669 alone.
GPU_LEASE_DEFAULTS = dict(device_structures=1.0, device_time_share=0.25, device_block=2048,
                          device_background=True, compress_workers=4)
# Fields that belong to this machine and run, not to the training: never taken from a previous lease.
MACHINE_FIELDS = ("library", "output_dir", "resume", "init_weights", "device", "workers", "deadline",
                  "max_minutes", "validation_file", "compress_workers", "device_structures",
                  "device_time_share", "device_block", "device_background")

SECOND_MOMENTS = ("exp_avg_sq", "square_avg")
# (weights dtype, moments dtype, moments kept)
LEVELS = (("float32", "float32", "all"), ("float32", "bfloat16", "all"),
          ("float16", "bfloat16", "all"), ("float16", "bfloat16", "second"),
          ("float16", None, "none"))
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LeaseError(SystemExit):
  """A one-line reason the lease cannot go on (exit status 1)."""

  def __init__(self, message):
    super().__init__("Sorry: " + message)


# ---------------------------------------------------------------- tensor packing


def _tensor_bytes(t):
  """Raw bytes of a tensor, byte-shuffled (all first bytes, then all second
  bytes, ...): float exponents line up and compress."""
  flat = t.detach().contiguous().reshape(-1)
  size = flat.element_size()
  raw = flat.view(torch.uint8).numpy() if flat.numel() else np.zeros(0, np.uint8)
  return raw.reshape(-1, size).T.tobytes()


def _tensor_from(data, dtype_name, shape):
  dtype = getattr(torch, dtype_name)
  size = torch.empty(0, dtype=dtype).element_size()
  raw = np.frombuffer(data, dtype=np.uint8).reshape(size, -1).T.copy()
  t = torch.from_numpy(raw.reshape(-1)).view(dtype)
  return t.reshape(shape)


def pack_blob(meta, tensors):
  """bytes (zlib) holding a JSON-able ``meta`` and named tensors."""
  index, chunks, offset = [], [], 0
  for name, t in tensors.items():
    b = _tensor_bytes(t)
    index.append({"name": name, "dtype": str(t.dtype).replace("torch.", ""),
                  "shape": list(t.shape), "offset": offset, "bytes": len(b)})
    chunks.append(b)
    offset += len(b)
  header = json.dumps({"meta": meta, "tensors": index}).encode()
  payload = len(header).to_bytes(8, "little") + header + b"".join(chunks)
  return zlib.compress(payload, 1)


def unpack_blob(data):
  """(meta, {name: tensor}) from ``pack_blob`` bytes."""
  payload = zlib.decompress(data)
  n = int.from_bytes(payload[:8], "little")
  header = json.loads(payload[8:8 + n].decode())
  body = memoryview(payload)[8 + n:]
  tensors = {e["name"]: _tensor_from(body[e["offset"]:e["offset"] + e["bytes"]], e["dtype"], e["shape"])
             for e in header["tensors"]}
  return header["meta"], tensors


# ---------------------------------------------------------------- checkpoints <-> lease files


def _json_safe(x):
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if torch.is_tensor(x):
    return x.item() if x.numel() == 1 else x.tolist()
  if isinstance(x, (np.generic,)):
    return x.item()
  return x


def _level_tensors(blob, level):
  """meta additions and tensors of a checkpoint at one precision level."""
  w_dtype, m_dtype, kept = level
  tensors = {"model/" + k: v.to(DTYPES[w_dtype]) if v.is_floating_point() else v
             for k, v in blob["model"].items()}
  opt_meta = None
  opt = blob.get("optimizer")
  if opt is not None and kept != "none":
    names = {n for s in opt["state"].values() for n in s if n != "step"}
    keep = names if kept == "all" else names & set(SECOND_MOMENTS)
    if keep:
      steps = {}
      for idx, s in opt["state"].items():
        steps[str(idx)] = float(s["step"]) if "step" in s else None
        for n in keep & set(s):
          tensors["opt/%s/%s" % (idx, n)] = s[n].to(DTYPES[m_dtype])
      opt_meta = {"param_groups": _json_safe(opt["param_groups"]), "steps": steps,
                  "kept": sorted(keep), "dropped": sorted(names - keep)}
  return opt_meta, tensors


def checkpoint_meta(blob):
  keys = ("format", "train_config", "model_config", "step", "examples", "seconds", "curve", "runs",
          "warm_restart")
  return _json_safe({k: blob[k] for k in keys if k in blob})


def write_lease_files(blob, out_dir, budget_bytes, part_bytes=PART_BYTES, max_parts=MAX_PARTS):
  """Pack a checkpoint (dict as trainer writes it) into out_dir at the most
  precise level within the budget; returns the manifest."""
  budget = min(budget_bytes, part_bytes * max_parts)
  raw_weights = sum(v.numel() * v.element_size() for v in blob["model"].values())
  data = chosen = opt_meta = None
  for level in LEVELS:
    w_size = torch.empty(0, dtype=DTYPES[level[0]]).element_size()
    estimate = raw_weights / 4 * w_size
    if level[2] != "none" and blob.get("optimizer") is not None:
      moments = 1 if level[2] == "second" else 2
      estimate += moments * raw_weights / 4 * torch.empty(0, dtype=DTYPES[level[1]]).element_size()
    if estimate * 0.6 > budget and level is not LEVELS[-1]:
      continue  # cannot fit: compression gains less than that
    opt_meta, tensors = _level_tensors(blob, level)
    meta = dict(checkpoint_meta(blob), optimizer=opt_meta,
                precision={"weights": level[0], "moments": level[1] if opt_meta else None,
                           "moments_kept": opt_meta["kept"] if opt_meta else []})
    data = pack_blob(meta, tensors)
    if len(data) <= budget:
      chosen = level
      break
  if chosen is None:
    raise LeaseError("the network's weights do not fit the lease files even in half precision "
                     "(%.1f MiB compressed, %.1f MiB allowed): choose a smaller network or a larger "
                     "budget_mib" % (len(data) / 2 ** 20, budget / 2 ** 20))
  os.makedirs(out_dir, exist_ok=True)
  parts = []
  for i, start in enumerate(range(0, len(data), part_bytes)):
    name = "state.%02d" % i
    chunk = data[start:start + part_bytes]
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(chunk)
    parts.append({"file": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
  for name in os.listdir(out_dir):  # parts of an earlier, longer pack
    if name.startswith("state.") and name not in {p["file"] for p in parts}:
      os.remove(os.path.join(out_dir, name))
  manifest = dict(checkpoint_meta(blob), format=FORMAT, parts=parts, packed_bytes=len(data),
                  precision={"weights": chosen[0], "moments": chosen[1] if opt_meta else None,
                             "moments_kept": opt_meta["kept"] if opt_meta else [],
                             "moments_dropped": opt_meta["dropped"] if opt_meta else []},
                  written=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  tmp = os.path.join(out_dir, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp, os.path.join(out_dir, MANIFEST))
  return manifest


def read_manifest(lease_dir):
  path = os.path.join(lease_dir, MANIFEST)
  if not os.path.isfile(path):
    raise LeaseError("no %s in %s: not the files of a lease" % (MANIFEST, lease_dir))
  with open(path) as f:
    try:
      manifest = json.load(f)
    except ValueError:
      raise LeaseError("%s is not readable JSON" % path)
  if manifest.get("format") != FORMAT:
    raise LeaseError("%s: unknown format %r" % (path, manifest.get("format")))
  return manifest


def read_lease_files(lease_dir):
  """The checkpoint (dict as trainer.train resumes from, float32) in lease files."""
  manifest = read_manifest(lease_dir)
  chunks = []
  for p in manifest["parts"]:
    path = os.path.join(lease_dir, p["file"])
    if not os.path.isfile(path):
      raise LeaseError("lease files in %s incomplete: %s is missing" % (lease_dir, p["file"]))
    with open(path, "rb") as f:
      chunk = f.read()
    if len(chunk) != p["bytes"] or hashlib.sha256(chunk).hexdigest() != p["sha256"]:
      raise LeaseError("lease files in %s damaged: %s does not match its sha256 in %s"
                       % (lease_dir, p["file"], MANIFEST))
    chunks.append(chunk)
  meta, tensors = unpack_blob(b"".join(chunks))
  blob = {k: v for k, v in meta.items() if k not in ("optimizer", "precision")}
  blob["model"] = {k[len("model/"):]: v.float() if v.is_floating_point() else v
                   for k, v in tensors.items() if k.startswith("model/")}
  opt = meta.get("optimizer")
  if opt:
    names = list(blob["model"])
    state = {}
    for idx, step in opt["steps"].items():
      s = {}
      if step is not None:
        s["step"] = torch.tensor(step, dtype=torch.float32)
      shape = None
      for n in opt["kept"]:
        key = "opt/%s/%s" % (idx, n)
        if key in tensors:
          s[n] = tensors[key].float()
          shape = s[n].shape
      for n in opt["dropped"]:
        if shape is not None:
          s[n] = torch.zeros(shape)
      state[int(idx)] = s
    groups = opt["param_groups"]
    for g in groups:
      if "betas" in g:
        g["betas"] = tuple(g["betas"])
    blob["optimizer"] = {"state": state, "param_groups": groups}
    del names
  blob["lease_precision"] = meta.get("precision")
  return blob


# ---------------------------------------------------------------- the learning curve


def plot_curve(curve, path):
  """Validation r against examples seen (zero, random and partial starts per
  d_min); returns False when matplotlib is missing or there is nothing to plot."""
  points = [p for p in curve if p.get("validation")]
  if not points:
    return False
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  fig, ax = plt.subplots(figsize=(7, 4.2))
  x = [p["examples"] / 1e6 for p in points]
  d_keys = sorted({d for p in points for d in p["validation"]})
  colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
  for i, d in enumerate(d_keys):
    c = colours[i % len(colours)]
    for key, style, label in (("mean_r", "-", "zero start"), ("random_r", ":", "random start"),
                              ("partial_r", "--", "partial start")):
      ys = [p["validation"].get(d, {}).get(key) for p in points]
      xs = [xx for xx, y in zip(x, ys) if y is not None]
      ys = [y for y in ys if y is not None]
      if ys:
        ax.plot(xs, ys, style, color=c, marker=".", label="%s Å, %s" % (d, label))
  ax.axhline(0.95, color="grey", lw=0.8)
  ax.set_xlabel("examples seen (millions)")
  ax.set_ylabel("mean validation r")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=6, ncol=3, loc="lower right")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)
  return True


# ---------------------------------------------------------------- the command


class _Tee:
  def __init__(self, *streams):
    self.streams = streams

  def write(self, text):
    for s in self.streams:
      s.write(text)

  def flush(self):
    for s in self.streams:
      s.flush()


LEASE_KEYS = ("out_dir", "resume_dir", "minutes", "reserve_minutes", "budget_mib", "work_dir",
              "unpack", "checkpoint")


def parse_args(argv):
  lease, rest = {}, []
  for arg in argv:
    if "=" not in arg:
      raise LeaseError("arguments are key=value; unknown: %s" % arg)
    key, value = arg.split("=", 1)
    if key in LEASE_KEYS:
      lease[key] = value
    else:
      rest.append(arg)
  for key in ("minutes", "reserve_minutes", "budget_mib"):
    if key in lease:
      try:
        lease[key] = float(lease[key])
      except ValueError:
        raise LeaseError("%s must be a number (got %s)" % (key, lease[key]))
  given = {a.split("=", 1)[0] for a in rest}
  parsed = dataclasses.asdict(TrainConfig.from_args(rest))
  return lease, {k: parsed[k] for k in given}


def lease_config(previous, overrides, gpu=False, **machine):
  """The TrainConfig of a lease: TrainConfig defaults, the lease defaults (with
  ``gpu``, those of a GPU machine too), the previous lease's training options,
  then the overrides and this machine's fields."""
  values = dataclasses.asdict(TrainConfig())
  values.update(LEASE_DEFAULTS)
  if gpu:
    values.update(GPU_LEASE_DEFAULTS)
  if previous:
    values.update({k: v for k, v in previous.items() if k in values and k not in MACHINE_FIELDS})
  values.update(overrides)
  values.update(machine)
  for k, v in list(values.items()):
    if isinstance(dataclasses.asdict(TrainConfig())[k], tuple):
      values[k] = tuple(v)
  return TrainConfig(**values)


def run_lease(lease, overrides, log=sys.stdout):
  """Train one lease; returns the manifest of the files it leaves."""
  out_dir = lease.get("out_dir")
  if not out_dir:
    raise LeaseError("give out_dir=DIR (on the lent machine: out_dir=$OUT)")
  minutes = lease.get("minutes", 9.0)
  reserve = lease.get("reserve_minutes", 0.5)
  if not 0 < minutes <= 24 * 60:
    raise LeaseError("minutes must be a positive number of minutes (got %s)" % minutes)
  if not 0 <= reserve < minutes:
    raise LeaseError("reserve_minutes must be at least 0 and below minutes (got %s)" % reserve)
  budget = int(lease.get("budget_mib", DEFAULT_BUDGET_MIB) * 2 ** 20)
  if budget <= 0:
    raise LeaseError("budget_mib must be positive")
  previous = None
  resume_dir = lease.get("resume_dir")
  if resume_dir:
    if not os.path.isdir(resume_dir):
      raise LeaseError("resume_dir not found: %s" % resume_dir)
    previous = read_lease_files(resume_dir)
  work_dir = lease.get("work_dir") or tempfile.mkdtemp(prefix="phai_lease_")
  os.makedirs(work_dir, exist_ok=True)
  os.makedirs(out_dir, exist_ok=True)
  if os.path.abspath(work_dir) == os.path.abspath(out_dir):
    raise LeaseError("work_dir must differ from out_dir (the full checkpoint stays out of out_dir)")
  machine = {"output_dir": work_dir, "deadline": T_START + 60 * (minutes - reserve)}
  if previous is not None:
    ckpt = os.path.join(work_dir, "resume.pt")
    torch.save({k: v for k, v in previous.items() if k != "lease_precision"}, ckpt)
    machine["resume"] = ckpt
  gpu = overrides.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available()
  cfg = lease_config(previous["train_config"] if previous else None, overrides, gpu=gpu, **machine)
  if cfg.resume and cfg.init_weights:
    cfg = dataclasses.replace(cfg, init_weights="")
  if not os.path.isfile(cfg.library):
    raise LeaseError("no conformer library at %s: build one with `python -m "
                     "phai_cctbx.training.molecules --out %s` (needs RDKit) and take it along"
                     % (cfg.library, cfg.library))
  params = sum(p.numel() for p in trainer.PhAINet(cfg.model_config()).parameters())
  if params * 2 * 0.8 > min(budget, PART_BYTES * MAX_PARTS):
    raise LeaseError("a network of %.1f M parameters does not fit the lease files (%.0f MiB) even in "
                     "half precision: choose a smaller network" % (params / 1e6, budget / 2 ** 20))
  log_file = open(os.path.join(out_dir, "train.log"), "w")
  out = _Tee(log, log_file)
  print("lease: %s, until %.1f min after the start (%.1f reserved), files in %s%s"
        % (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(T_START)), minutes, reserve, out_dir,
           ", resumed from %s (step %d, %s)" % (resume_dir, previous["step"],
                                                json.dumps(previous["lease_precision"]))
           if previous else ""), file=out, flush=True)
  packed = {}

  def on_checkpoint(path):
    t = time.time()
    blob = torch.load(path, map_location="cpu", weights_only=False)
    manifest = write_lease_files(blob, out_dir, budget)
    plotted = plot_curve(blob["curve"], os.path.join(out_dir, "curve.png"))
    packed.update(manifest)
    print("lease files at step %d: %s, %.1f MiB in %d part(s)%s (%.1f s)"
          % (blob["step"], json.dumps(manifest["precision"]), manifest["packed_bytes"] / 2 ** 20,
             len(manifest["parts"]), ", curve.png" if plotted else "", time.time() - t),
          file=out, flush=True)

  try:
    trainer.train(cfg, log=out, on_checkpoint=on_checkpoint)
  finally:
    print("lease done %.1f s after the start (limit %.0f s)" % (time.time() - T_START, 60 * minutes),
          file=out, flush=True)
    log_file.close()
  return packed


def main(argv=None):
  lease, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  if "unpack" in lease:
    if "checkpoint" not in lease:
      raise LeaseError("unpack=DIR needs checkpoint=FILE to write")
    blob = read_lease_files(lease["unpack"])
    blob.pop("lease_precision", None)
    torch.save(blob, lease["checkpoint"])
    print("wrote %s (step %d, %d examples)" % (lease["checkpoint"], blob["step"], blob["examples"]))
    return
  run_lease(lease, overrides)


if __name__ == "__main__":
  main()
