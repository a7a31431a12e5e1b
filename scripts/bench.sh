#!/usr/bin/env bash
# Benchmarks against the reference tools on the same generated data.
# Installs what it compares against (Debian packages: b3sum, rsync), then runs
# `statesync bench manifest` (default), `statesync bench sync` or
# `statesync bench blocks`:
#   scripts/bench.sh [manifest] --size 2GiB --rounds 5
#   scripts/bench.sh sync --size 2GiB --rounds 3
#   scripts/bench.sh blocks --blocks 3000 --rounds 3
#   scripts/bench.sh gossip --nodes 512 --block 2MB   (simulation; HTML CDFs)
#   scripts/bench.sh scale --small 1GiB --large 8GiB --changed 100MiB
#     (the same change on two state sizes: incremental checkpoint and
#      in-place sync; prints the large / small ratios)
#   scripts/bench.sh hostile   (real processes: hostile peers, a half-open
#     stream attack and 32 concurrent fetchers; crates/cli/tests/bench_hostile.rs)
#   scripts/bench.sh sync --xfs --size 2GiB --rounds 3
#     (same, on an XFS filesystem with reflinks in a loop-mounted image under
#      /var/tmp: seeded syncs clone unchanged chunks; needs root, installs
#      xfsprogs)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v b3sum >/dev/null 2>&1 || need+=(b3sum)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi
if [ "${1:-}" = hostile ]; then
  shift
  exec cargo test --release -q -p statesync \
    --test bench_hostile -- --ignored --nocapture --test-threads 1 "$@"
fi
cargo build --release -q
what=manifest
case "${1:-}" in manifest|sync|blocks|gossip|scale) what=$1; shift;; esac
if [ "$what" = sync ] && [ "${1:-}" = --xfs ]; then
  shift
  command -v mkfs.xfs >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq xfsprogs; }
  img=/var/tmp/statesync-bench-xfs.img
  mnt=/var/tmp/statesync-bench-xfs
  mkdir -p "$mnt"
  mountpoint -q "$mnt" && umount "$mnt"
  rm -f "$img"
  truncate -s 24G "$img"
  mkfs.xfs -q -m reflink=1 "$img"
  mount -o loop "$img" "$mnt"
  trap 'umount "$mnt"; rm -f "$img"' EXIT
  ./target/release/statesync bench sync --dir "$mnt/bench-data-sync" "$@"
  exit
fi
exec ./target/release/statesync bench "$what" "$@"
