"""phai_cctbx: PhAI neural-network phasing for cctbx.

The repository's top-level ``command_line/`` and ``phil/`` folders are
installed inside the package (``phai_cctbx.command_line``, ``phai_cctbx.phil``)
so that no generic top-level name lands in site-packages.

torch is deliberately not pinned to a newer release: install the build you
want first (``pip install torch==2.13.0`` for the CPU build), then this package.
"""
from setuptools import setup

setup(
  name="phai_cctbx",
  version="0.1.0",
  description="PhAI deep-learning phasing of centrosymmetric small-molecule data, "
              "as cctbx programs (phai.solve, phai.train, phai.benchmark)",
  long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
  long_description_content_type="text/markdown",
  license="MIT",
  python_requires=">=3.9",
  packages=[
    "phai_cctbx",
    "phai_cctbx.programs",
    "phai_cctbx.training",
    "phai_cctbx.command_line",
    "phai_cctbx.phil",
  ],
  package_dir={
    "phai_cctbx.command_line": "command_line",
    "phai_cctbx.phil": "phil",
  },
  package_data={
    "phai_cctbx": ["data/*", "weights/*", "examples/*"],
    "phai_cctbx.phil": ["*.phil"],
  },
  install_requires=[
    "cctbx-base",
    "numpy",
    "torch>=2.0,<=2.13.0",
  ],
  extras_require={
    "benchmark": ["matplotlib"],
    "train": ["rdkit"],
  },
  entry_points={
    "console_scripts": [
      "phai.solve = phai_cctbx.command_line.solve:run",
      "phai.train = phai_cctbx.command_line.train:run",
      "phai.benchmark = phai_cctbx.command_line.benchmark:run",
    ],
  },
)
