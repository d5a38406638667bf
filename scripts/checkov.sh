#!/usr/bin/env bash
# checkov, a third-party scanner of Kubernetes manifests, in a virtualenv of its own
# (.venv-checkov): its pinned dependencies clash with the project's (it would downgrade
# `packaging`, which pytest and pip use), so it never shares .venv. Made on first use, remade
# when CHECKOV_VERSION changes; tests/helm/test_chart_network.py runs it on the rendered chart.
#
#   scripts/checkov.sh --framework kubernetes -f manifests.yaml -o json
set -euo pipefail
CHECKOV_VERSION=3.3.30
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${PHONESELLER_CHECKOV_VENV:-$ROOT/.venv-checkov}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.installed-$CHECKOV_VERSION"

if [ ! -f "$STAMP" ]; then
  # One installer at a time (two test runs may start together).
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
  if [ ! -f "$STAMP" ]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
    touch "$STAMP"
  fi
  exec 9>&-
fi
exec "$VENV/bin/checkov" "$@"
