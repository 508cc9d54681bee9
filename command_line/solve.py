"""Command-line entry point of phai.solve."""
import sys

import phai_cctbx  # noqa: F401  (loads cctbx before torch)
from iotbx.cli_parser import run_program
from libtbx.utils import Sorry
from phai_cctbx.programs import solve as program_module
from phai_cctbx.programs.solve import Program, file_arguments_as_phil


def run(args=None):
  """Run phai.solve on command-line arguments (sys.argv[1:] by default).

  Returns None, so that the console script exits with status 0 on success;
  scripts wanting the results call iotbx.cli_parser.run_program directly.
  """
  if args is None:
    args = sys.argv[1:]
  # The run's wall time starts with the process (imports included).
  program_module.COMMAND_STARTED = program_module.process_start_time()
  try:
    run_program(program_class=Program, args=file_arguments_as_phil(args))
  except Sorry as e:
    # One line (libtbx.phil's own messages span several), without the
    # exceptions it was raised while handling.
    raise Sorry(" ".join(l.strip() for l in str(e).splitlines() if l.strip())) from None
  except RuntimeError as e:
    # libtbx.phil reports a value it cannot interpret (trials=abc) as a
    # RuntimeError; it is the user's input, so say it in one line.
    message = str(e).strip()
    if message.startswith("Error interpreting") or "command line argument" in message:
      raise Sorry(message.splitlines()[0] + " - give a valid value.") from None
    raise


if __name__ == "__main__":
  run()
