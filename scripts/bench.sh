#!/usr/bin/env bash
# Benchmarks against the reference tools on the same generated data.
# Installs what it compares against (Debian packages), then runs
# `statesync bench manifest`. Extra arguments go to the bench command, e.g.
#   scripts/bench.sh --size 2GiB --rounds 5
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v b3sum >/dev/null 2>&1 || need+=(b3sum)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi
cargo build --release -q
exec ./target/release/statesync bench manifest "$@"
