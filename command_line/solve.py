"""Command-line entry point of phai.solve."""
import sys

import phai_cctbx  # noqa: F401  (loads cctbx before torch)
from iotbx.cli_parser import run_program
from phai_cctbx.programs.solve import Program, file_arguments_as_phil


def run(args=None):
  """Run phai.solve on command-line arguments (sys.argv[1:] by default).

  Returns None, so that the console script exits with status 0 on success;
  scripts wanting the results call iotbx.cli_parser.run_program directly.
  """
  if args is None:
    args = sys.argv[1:]
  run_program(program_class=Program, args=file_arguments_as_phil(args))


if __name__ == "__main__":
  run()
