#!/usr/bin/env bash
# Unit tests, then end-to-end runs of the installed commands on real data.
# Run from the repository root; the tests import the installed package.
set -euo pipefail
cd "$(dirname "$0")"
pytest -q -p no:cacheprovider tests regression "$@"
