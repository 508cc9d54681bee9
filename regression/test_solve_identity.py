"""What the installed phai.solve says about itself: version, citations, help
and the parameters' explanations."""
import re

import phai_cctbx

from conftest import run_solve


def test_version_names_phai_cctbx(phai_solve, tmp_path):
  proc = run_solve(phai_solve, ["--version"], tmp_path)
  assert proc.returncode == 0
  assert "phai_cctbx %s" % phai_cctbx.__version__ in proc.stdout


def test_citations(phai_solve, tmp_path):
  proc = run_solve(phai_solve, ["--citations"], tmp_path)
  assert proc.returncode == 0
  text = " ".join(proc.stdout.split())
  assert "Larsen AS, Rekis T, Madsen A" in text and "Science 385:522-528" in text
  assert "Grosse-Kunstleve RW" in text and "J. Appl. Cryst. 35:126-136" in text
  assert "Oszl" in text and "charge flipping" in text and "A60:134-141" in text


def test_help_says_how_to_see_the_explanations(phai_solve, tmp_path):
  proc = run_solve(phai_solve, ["--help"], tmp_path)
  assert proc.returncode == 0
  assert "phai.solve --show-defaults --attributes-level=2" in proc.stdout


def test_parameter_help_reads_as_sentences(phai_solve, tmp_path):
  proc = run_solve(phai_solve, ["--show-defaults", "--attributes-level=2"], tmp_path)
  assert proc.returncode == 0
  helps = re.findall(r'\.help = ((?:"[^"\n]*(?:\\"[^"\n]*)*"\s*)+)', proc.stdout)
  assert len(helps) >= 15
  for h in helps:
    text = " ".join(part for part in re.findall(r'"((?:[^"\\]|\\.)*)"', h))
    assert "  " not in text, text
  assert "composition of the input files" in proc.stdout
