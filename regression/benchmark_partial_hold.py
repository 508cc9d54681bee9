"""Does a network learn to use partial solutions as input? (a benchmark, not a test)

    python regression/benchmark_partial_hold.py --hold 0|1 [--minutes 10] [--out DIR]
        [--library cache/conformers.npz] [--partial 0.5] [--init-weights FILE]
        [--voxel-head]

Trains one network on the CPU (a small one from scratch by default, or the
given weights) with ``--partial`` of the starts partial solutions and
``recycling.partial_hold`` = ``--hold``, for ``--minutes`` of wall time, and
prints its validation curve: r from zero starts against r from fixed partial
starts (``partial A -> B``: A the r of the starts, B the network's after 4
cycles).  A network that uses its phase input ends with B above the zero
start's r.  Run the two holds side by side (one core each, OMP_NUM_THREADS=1)
to compare them, or a network with and without ``--voxel-head`` (model.py).
"""
import argparse

import phai_cctbx  # noqa: F401  (cctbx before torch)

SMALL = dict(filters=8, cnn_depth=1, dim=64, dim_exp=128, dim_token_exp=16, mlp_depth=2)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--hold", type=float, required=True)
  p.add_argument("--minutes", type=float, default=10.0)
  p.add_argument("--out", default="runs/partial_hold")
  p.add_argument("--library", default="cache/conformers.npz")
  p.add_argument("--partial", type=float, default=0.5)
  p.add_argument("--init-weights", default="")
  p.add_argument("--voxel-head", action="store_true")
  a = p.parse_args()
  from phai_cctbx.training import trainer
  sizes = {} if a.init_weights else SMALL
  cfg = trainer.TrainConfig(library=a.library, output_dir=a.out, device="cpu", batch_size=32,
                            learning_rate=1e-3 if not a.init_weights else 1e-4, warmup_steps=50,
                            max_minutes=a.minutes, workers=1, validation_size=64, validate_every=150,
                            log_every=50, partial_start_fraction=a.partial, cf_start_fraction=0.0,
                            partial_hold=a.hold, seed=1, checkpoint_minutes=1e6, reuse=4, min_pool=256,
                            init_weights=a.init_weights, voxel_head=a.voxel_head, **sizes)
  _, state = trainer.train(cfg)
  print("examples  per d_min: zero-start r, partial A -> B")
  for point in state["curve"]:
    print(point["examples"], "  ".join(
      "%s: %.3f, %.2f -> %.3f" % (d, v["mean_r"], v["partial_input_r"], v["partial_r"])
      for d, v in point["validation"].items()))


if __name__ == "__main__":
  main()
