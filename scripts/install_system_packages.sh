#!/usr/bin/env bash
# Installs the Debian packages of scripts/system-packages.txt that are missing: `apt-get update`
# once, then `apt-get install` of what is not there yet. Without root or without apt it says so
# loudly and exits 0: the tests that need a package then skip, saying which (in CI they fail).
set -euo pipefail
cd "$(dirname "$0")"

packages=()
while IFS= read -r line; do
  name="${line%%#*}"
  name="${name//[[:space:]]/}"
  [[ -n "$name" ]] && packages+=("$name")
done < system-packages.txt

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

warn() {
  echo "!!! $*" >&2
  echo "!!! the tests that need ${missing[*]} will be SKIPPED (see scripts/system-packages.txt)" >&2
}
if ! command -v apt-get >/dev/null 2>&1; then
  warn "no apt-get here: cannot install the Debian packages ${missing[*]}"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  warn "not root: cannot install ${missing[*]} (sudo $0 would)"
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# No recommends (prometheus would bring node-exporter); services are not started by installing.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
