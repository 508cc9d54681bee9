"""Command-line entry point of phai.benchmark."""
import phai_cctbx  # noqa: F401  (loads cctbx before torch)
from iotbx.cli_parser import run_program
from phai_cctbx.programs.benchmark import Program, add_positional_structures


def run(args=None):
  """Run phai.benchmark; returns None so that the console script exits 0."""
  run_program(program_class=Program, args=args,
              custom_process_arguments=add_positional_structures)


if __name__ == "__main__":
  run()
