# cctbx must be loaded before torch in every process (see phai_cctbx/__init__.py).
import phai_cctbx  # noqa: F401
