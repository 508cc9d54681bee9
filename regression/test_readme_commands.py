"""The README's phai.solve commands, as written and in order, in a fresh folder
that holds what a fresh clone has at those paths (phai_cctbx/examples).

pip install steps are left out (the package is installed); a command that
stops, e.g. on an output of an earlier command that already exists, fails
the test.  The whole run's wall times in the logs add up.
"""
import os
import re
import shlex
import shutil
import subprocess

import pytest

from conftest import ROOT, installed_command

README = os.path.join(ROOT, "README.md")


def readme_solve_commands(text):
  """phai.solve commands of a README text, in order.

  From indented and fenced code blocks (lines joined at a trailing
  backslash, split at && and ;) and from inline code; a line that is log
  output (no command at its start) is skipped.
  """
  commands = []
  lines = text.splitlines()
  in_fence = False
  pending = ""
  for line in lines:
    if line.strip().startswith("```"):
      in_fence = not in_fence
      continue
    if in_fence or line.startswith("    "):
      code = pending + line.strip()
      if code.endswith("\\"):
        pending = code[:-1] + " "
        continue
      pending = ""
      for part in re.split(r"&&|;", code):
        if part.strip().startswith("phai.solve "):
          commands.append(part.strip())
      continue
    for inline in re.findall(r"`([^`]+)`", line):
      if inline.startswith("phai.solve "):
        commands.append(inline.strip())
  return commands


def test_readme_commands_are_found():
  with open(README) as f:
    commands = readme_solve_commands(f.read())
  assert len(commands) >= 2
  assert commands[0].startswith("phai.solve phai_cctbx/examples/epoxide.hkl")
  prefixes = [re.search(r"output\.prefix=(\S+)", c).group(1) for c in commands
              if "output.prefix=" in c]
  assert len(prefixes) == len(set(prefixes)), prefixes


def test_readme_phai_solve_commands_run_in_order(tmp_path):
  exe = installed_command("phai.solve")
  from phai_cctbx.weights import default_weights_available
  if not default_weights_available():
    pytest.skip("the shipped weights are not installed")
  with open(README) as f:
    commands = readme_solve_commands(f.read())
  shutil.copytree(os.path.join(ROOT, "phai_cctbx", "examples"),
                  str(tmp_path / "phai_cctbx" / "examples"))
  logs = []
  for command in commands:
    args = shlex.split(command)
    proc = subprocess.run([exe] + args[1:], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, "%s\n%s" % (command, (proc.stderr + proc.stdout)[-2000:])
    assert "Traceback" not in proc.stderr
    m = re.search(r"output\.prefix=(\S+)", command)
    if m:
      logs.append(str(tmp_path / (m.group(1) + ".log")))
  assert logs
  for log in logs:
    text = open(log).read()
    line = [l for l in text.splitlines() if l.startswith("Timings (wall clock):")][-1]
    steps = [float(v) for v in re.findall(r"(\d+\.\d+) s", line.split(";")[0])]
    total = float(re.search(r"total (\d+\.\d+) s", line).group(1))
    assert "start-up" in line and "phasing" in line and "writing" in line
    assert abs(sum(steps) - total) < 0.005   # printed steps add up to the printed total
