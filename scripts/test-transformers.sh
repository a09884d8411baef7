#!/usr/bin/env bash
# Run the test suite against one transformers release, in a virtual environment of its own:
#
#   scripts/test-transformers.sh 5.25.0            # a candidate release, before raising the pin
#   scripts/test-transformers.sh oldest            # the pin's lower bound (pyproject.toml)
#
# Extra arguments go to pytest. The project's own .venv is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: scripts/test-transformers.sh VERSION|oldest [pytest args]}
shift
if [ "$version" = oldest ]; then
    version=$(python3 - <<'PY'
import re, tomllib
with open("pyproject.toml", "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
spec = next(d for d in dependencies if d.startswith("transformers"))
print(re.search(r">=\s*([0-9.]+)", spec).group(1))
PY
)
fi
venv=.venv-transformers-$version
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -e ".[dev]"
# A candidate above the pin's upper bound installs with a resolver warning; that is the point.
"$venv/bin/pip" install -q "transformers==$version"
"$venv/bin/python" - "$version" <<'PY'
import sys

import transformers
from packaging.version import Version

if Version(transformers.__version__) != Version(sys.argv[1]):
    sys.exit(f"transformers {transformers.__version__} installed, not {sys.argv[1]}")
PY
echo "transformers $version: running the test suite"
"$venv/bin/python" -m pytest -q "$@"
