#!/usr/bin/env bash
# Installs the Debian 12 packages Liaison needs, if any are missing.
# Uses sudo when not run as root. Safe to run again.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config openssl
  libboost1.81-dev libssl-dev libprotobuf-dev protobuf-compiler libsqlite3-dev sqlite3
  libyaml-cpp-dev libcli11-dev libspdlog-dev libfmt-dev libunistring-dev libjemalloc-dev libsodium-dev catch2 sslscan
)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "installing missing packages: ${missing[*]}"
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "error: run as root or install sudo" >&2; exit 1; }
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
