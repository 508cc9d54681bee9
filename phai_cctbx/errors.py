"""The user-facing error type: libtbx's Sorry where cctbx is installed.

libtbx prints an uncaught Sorry as one line with no traceback.  Training
machines may run without cctbx, so a plain Exception subclass stands in there.
"""
try:
  from libtbx.utils import Sorry
except ImportError:  # training without cctbx
  class Sorry(Exception):
    """A problem with the user's input, reported as one line."""

__all__ = ["Sorry"]
