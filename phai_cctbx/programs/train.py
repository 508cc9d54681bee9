"""phai.train: make artificial structures and train the PhAI network."""
from __future__ import annotations

import importlib.resources
import os

from libtbx.program_template import ProgramTemplate
from libtbx.utils import Sorry

from phai_cctbx.training.trainer import TrainConfig


class Program(ProgramTemplate):
  program_name = "phai.train"
  description = """
Train the PhAI phasing network on artificial P2_1/c structures generated on
the fly from a conformer library (built once with RDKit if missing).  Runs on
CPU, on one GPU, or on several under torchrun:

  phai.train run.output_dir=runs/x optimiser.max_steps=20000
  torchrun --nproc_per_node=4 $(which phai.train) run.output_dir=runs/x
  phai.train run.resume=runs/x/checkpoint.pt run.output_dir=runs/x
  phai.train export.checkpoint=runs/x/checkpoint.pt export.weights=phai_default.pt
"""
  datatypes = ["phil"]
  master_phil_str = importlib.resources.files("phai_cctbx.phil").joinpath("train.phil").read_text()

  def validate(self):
    p = self.params
    if p.export.checkpoint or p.export.weights:
      if not (p.export.checkpoint and p.export.weights):
        raise Sorry("Give both export.checkpoint and export.weights to export weights.")
      if not os.path.isfile(p.export.checkpoint):
        raise Sorry("Checkpoint not found: %s" % p.export.checkpoint)
      if os.path.exists(p.export.weights) and not p.output.overwrite:
        raise Sorry("%s exists: choose another export.weights or set output.overwrite=True."
                    % p.export.weights)
      return
    positive = {"model.filters": p.model.filters, "model.cnn_depth": p.model.cnn_depth,
                "model.dim": p.model.dim, "model.dim_exp": p.model.dim_exp,
                "model.dim_token_exp": p.model.dim_token_exp, "model.mlp_depth": p.model.mlp_depth,
                "optimiser.batch_size": p.optimiser.batch_size,
                "optimiser.max_steps": p.optimiser.max_steps,
                "recycling.max_cycles": p.recycling.max_cycles, "data.pool_size": p.data.pool_size}
    for name, value in positive.items():
      if value is None or value < 1:
        raise Sorry("%s must be a positive integer (got %s)." % (name, value))
    if not 0 < p.data.d_min_max <= 5:
      raise Sorry("data.d_min_max must be between 0 and 5 Å.")
    if p.data.device_structures is None or p.data.device_structures < 0:
      raise Sorry("data.device_structures must be 0 or more (got %s)." % p.data.device_structures)
    if p.data.device_time_share is None or not 0 <= p.data.device_time_share < 1:
      raise Sorry("data.device_time_share must be at least 0 and below 1 (got %s)."
                  % p.data.device_time_share)
    if p.data.random_atom_fraction is None or not 0 <= p.data.random_atom_fraction <= 1:
      raise Sorry("data.random_atom_fraction must be from 0 to 1 (got %s)." % p.data.random_atom_fraction)
    if p.data.device_block is None or p.data.device_block < 0:
      raise Sorry("data.device_block must be 0 or more (got %s)." % p.data.device_block)
    if not 0 <= p.data.missing_max < 1:
      raise Sorry("data.missing_max must be a fraction between 0 and 1.")
    fractions = {"recycling.random_start_fraction": p.recycling.random_start_fraction,
                 "recycling.partial_start_fraction": p.recycling.partial_start_fraction,
                 "recycling.partial_wrong_min": p.recycling.partial_wrong_min,
                 "recycling.partial_wrong_max": p.recycling.partial_wrong_max,
                 "recycling.partial_weak_fraction": p.recycling.partial_weak_fraction,
                 "recycling.cf_start_fraction": p.recycling.cf_start_fraction,
                 "recycling.partial_hold": p.recycling.partial_hold}
    for name, value in fractions.items():
      if value is None or not 0 <= value <= 1:
        raise Sorry("%s must be a fraction between 0 and 1 (got %s)." % (name, value))
    if p.recycling.partial_start_fraction + p.recycling.cf_start_fraction > 1:
      raise Sorry("recycling.partial_start_fraction + recycling.cf_start_fraction must not exceed 1.")
    if p.recycling.partial_wrong_min > p.recycling.partial_wrong_max:
      raise Sorry("recycling.partial_wrong_min (%s) is above recycling.partial_wrong_max (%s)."
                  % (p.recycling.partial_wrong_min, p.recycling.partial_wrong_max))
    if p.run.resume and not os.path.isfile(p.run.resume):
      raise Sorry("Checkpoint to resume not found: %s" % p.run.resume)
    if p.run.init_weights and not os.path.isfile(p.run.init_weights):
      raise Sorry("Weights to start from not found: %s" % p.run.init_weights)
    if p.run.device == "cuda":
      import torch
      if not torch.cuda.is_available():
        raise Sorry("run.device=cuda but no GPU is visible: use run.device=cpu or auto.")

  def train_config(self) -> TrainConfig:
    p = self.params
    return TrainConfig(
      library=p.library.file, output_dir=p.run.output_dir, resume=p.run.resume or "",
      init_weights=p.run.init_weights or "",
      filters=p.model.filters, cnn_depth=p.model.cnn_depth, dim=p.model.dim,
      dim_exp=p.model.dim_exp, dim_token_exp=p.model.dim_token_exp, mlp_depth=p.model.mlp_depth,
      voxel_head=p.model.voxel_head, voxel_head_lr_scale=p.model.voxel_head_lr_scale,
      amplitude_scaling=p.model.amplitude_scaling, optimizer=p.optimiser.name,
      learning_rate=p.optimiser.learning_rate, weight_decay=p.optimiser.weight_decay,
      warmup_steps=p.optimiser.warmup_steps, max_steps=p.optimiser.max_steps,
      batch_size=p.optimiser.batch_size, grad_clip=p.optimiser.grad_clip,
      mixed_precision=p.optimiser.mixed_precision, max_cycles=p.recycling.max_cycles,
      random_start_fraction=p.recycling.random_start_fraction,
      partial_start_fraction=p.recycling.partial_start_fraction,
      partial_wrong_min=p.recycling.partial_wrong_min,
      partial_wrong_max=p.recycling.partial_wrong_max,
      partial_weak_fraction=p.recycling.partial_weak_fraction,
      cf_start_fraction=p.recycling.cf_start_fraction, partial_hold=p.recycling.partial_hold,
      partial_origin=p.recycling.partial_origin,
      workers=p.data.workers,
      pool_size=p.data.pool_size, min_pool=min(2048, p.data.pool_size), reuse=p.data.reuse,
      packing=p.data.packing, compress_workers=p.data.compress_workers,
      cell_strain=p.data.cell_strain, device_structures=p.data.device_structures,
      device_time_share=p.data.device_time_share, device_block=p.data.device_block,
      device_background=p.data.device_background,
      random_atom_fraction=p.data.random_atom_fraction,
      d_min_max=p.data.d_min_max, missing_max=p.data.missing_max, seed=p.run.seed,
      device=p.run.device, max_minutes=p.run.max_minutes,
      checkpoint_minutes=p.run.checkpoint_minutes, log_every=p.run.log_every,
      validate_every=p.run.validate_every, validation_size=p.run.validation_size,
      validation_file=p.run.validation_file or "")

  def run(self):
    p = self.params
    if p.export.checkpoint:
      from phai_cctbx.training.trainer import export_weights
      digest = export_weights(p.export.checkpoint, p.export.weights)
      print("wrote %s (sha256 %s)" % (p.export.weights, digest), file=self.logger)
      self.result = {"weights": p.export.weights, "sha256": digest}
      return
    cfg = self.train_config()
    if not os.path.isfile(cfg.library):
      from phai_cctbx.training import molecules
      print("building the conformer library %s (%d molecules)" % (cfg.library, p.library.build_count),
            file=self.logger)
      lib = molecules.build_library(count=p.library.build_count, seed=p.run.seed)
      os.makedirs(os.path.dirname(os.path.abspath(cfg.library)), exist_ok=True)
      lib.save(cfg.library)
    from phai_cctbx.training.trainer import train
    _, state = train(cfg, log=self.logger)
    self.result = {"checkpoint": os.path.join(cfg.output_dir, "checkpoint.pt"),
                   "steps": state["step"], "examples": state["examples"],
                   "seconds": state["seconds"], "curve": state["curve"]}

  def get_results(self):
    return self.result
