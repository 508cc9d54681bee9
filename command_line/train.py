"""Command-line entry point of phai.train."""
import phai_cctbx  # noqa: F401  (loads cctbx before torch)
from iotbx.cli_parser import run_program
from phai_cctbx.programs.train import Program


def run(args=None):
  """Run phai.train; returns None so that the console script exits with 0
  (scripts wanting the results call iotbx.cli_parser.run_program directly)."""
  run_program(program_class=Program, args=args)


if __name__ == "__main__":
  run()
