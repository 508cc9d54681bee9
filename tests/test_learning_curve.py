"""The learning curve of a weights file: its points, table and figure."""
import os

import pytest

from phai_cctbx.training import learning_curve


def _card():
  def val(r1, s1, r2, s2):
    return {"1.00": {"mean_r": r1, "solved": s1}, "2.00": {"mean_r": r2, "solved": s2}}
  return {
    "examples_seen": 3000,
    # out of order on purpose, and one point without validation
    "curve": [{"step": 20, "examples": 2000, "validation": val(0.6, 0.2, 0.7, 0.3)},
              {"step": 10, "examples": 1000, "validation": val(0.4, 0.0, 0.5, 0.1)},
              {"step": 15, "examples": 1500}],
    "benchmark_curve": [{"examples": 2000, "n_p21c": 4, "p21c": {"1.00": 0.25, "2.00": 0.5}}],
  }


def _row(name, d, r, supergroup=False):
  """A row as phai.benchmark writes it (solved: r > 0.95)."""
  return {"structure": name, "d_min": d, "phai_r": r, "phai_solved": r > 0.95,
          "supergroup": supergroup}


def test_validation_points_are_ordered_and_skip_points_without_validation():
  pts = learning_curve.validation_points(_card())
  assert [p[0] for p in pts] == [1000, 2000]
  assert pts[1][1]["1.00"] == (0.6, 0.2)


def test_benchmark_point_counts_p21c_and_all_separately():
  rows = [_row("a", 1.0, 0.99), _row("b", 1.0, 0.50), _row("c", 1.0, 0.97, supergroup=True),
          _row("a", 2.0, 0.96), _row("b", 2.0, 0.95), _row("c", 2.0, 0.10, supergroup=True),
          {"structure": "d", "d_min": 1.0, "phai_r": None, "phai_solved": None},  # not run
          # too few reflections for the network: counted, as not solved
          {"structure": "e", "d_min": 2.0, "phai_r": None, "phai_solved": False}]
  p = learning_curve.benchmark_point(rows, 12345)
  assert p["examples"] == 12345
  assert p["n_p21c"] == 3 and p["n_all"] == 4
  assert p["p21c"] == {"1.00": 0.5, "2.00": pytest.approx(1 / 3)}  # r = 0.95 is not solved
  assert p["all"]["1.00"] == pytest.approx(2 / 3) and p["all"]["2.00"] == pytest.approx(1 / 4)


def test_table_lists_validation_then_real_points():
  lines = learning_curve.format_table(_card())
  assert lines[1].split()[0] == "1000" and "0.400 / 0.500" in lines[1]
  assert "20% /  30%" in lines[2]
  real = [l for l in lines if l.strip().startswith("2000") and "(4)" in l]
  assert len(real) == 1 and "25% /  50%" in real[0]


def test_plot_of_the_shipped_card(tmp_path):
  pytest.importorskip("matplotlib")
  from phai_cctbx.weights import default_weights_available
  if not default_weights_available():
    pytest.skip("no shipped weights")
  out = str(tmp_path / "curve.png")
  learning_curve.main(["plot=%s" % out])
  assert os.path.getsize(out) > 10000


def test_command_adds_benchmark_points_at_their_examples(tmp_path, capsys):
  from phai_cctbx.weights import default_weights_available
  if not default_weights_available():
    pytest.skip("no shipped weights")
  import json
  rows = [_row("a", 1.0, 0.99), _row("b", 1.0, 0.2)]
  bench = tmp_path / "bench.json"
  bench.write_text(json.dumps({"rows": rows}))
  learning_curve.main(["benchmark=%s:1234" % bench, "benchmark=%s" % bench])
  out = capsys.readouterr().out.splitlines()
  real = [l.split() for l in out[out.index("") + 2:]]
  from phai_cctbx.weights import load_model
  assert [r[0] for r in real] == ["1234", str(load_model().card["examples_seen"])]
  assert all(r[1] == "50%" and r[2] == "(2)" for r in real)
