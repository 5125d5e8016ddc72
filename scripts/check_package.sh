#!/usr/bin/env bash
# Build the sdist and the wheel into dist/ and check them as PyPI would (twine check
# --strict renders the README), then check that the wheel holds what users need: py.typed,
# the migrations, and the version drf_llm_keys.__version__ says.
#   scripts/check_package.sh        with $PYTHON (default .venv/bin/python), needs build and twine
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

rm -rf dist
"$PYTHON" -m build --outdir dist . >/dev/null
"$PYTHON" -m twine check --strict dist/*
"$PYTHON" - <<'PY'
import ast, glob, sys, zipfile

source = open("drf_llm_keys/__init__.py").read()
version = next(
    node.value.value
    for node in ast.parse(source).body
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__version__"
)
wheels = glob.glob(f"dist/drf_llm_keys-{version}-py3-none-any.whl")
sdists = glob.glob(f"dist/drf_llm_keys-{version}.tar.gz")
if len(wheels) != 1 or len(sdists) != 1:
    sys.exit(f"package: expected one wheel and one sdist of version {version}, found {glob.glob('dist/*')}")
names = set(zipfile.ZipFile(wheels[0]).namelist())
required = {
    "drf_llm_keys/py.typed",
    "drf_llm_keys/migrations/0001_initial.py",
    "drf_llm_keys/contrib/spectacular.py",
    "drf_llm_keys/throttling.py",
}
missing = sorted(required - names)
stray = sorted(name for name in names if name.startswith("tests/"))
if missing or stray:
    sys.exit(f"package: wheel misses {missing} or holds test files {stray}")
print(f"package: {wheels[0]} and {sdists[0]} OK ({len(names)} files in the wheel)")
PY
