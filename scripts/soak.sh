#!/usr/bin/env bash
# Soak test: a local network of chain nodes with churn for a long time,
# sampling the resident memory (RSS) and CPU of the nodes that stay up.
#
#   scripts/soak.sh [--minutes 30] [--dir /tmp/soak] [--warmup 5] [--bin PATH]
#
# One validator and two steady followers run the whole time; a churn loop
# kills (SIGKILL or SIGTERM, alternately) and restarts a third follower,
# and starts fresh joiners that catch up by state sync, follow for a while
# and leave, so connections, discovery (Kademlia), state syncs and
# backfills keep happening. Every 10 s each steady process's RSS (and its
# anonymous part) and CPU time are sampled. After the warm-up, the median
# anonymous memory and the CPU rate of the first third of the run are
# compared with the last third: both must stay within 10% (plus a small
# absolute slack for tiny values), else exit 1. Total RSS is printed too;
# its file-backed part is the executable's code pages, which grow once as
# code paths first run.
# Only 127.0.0.1 is used; every process is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=30; dir=/tmp/statesync-soak; warmup=5; bin=
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2;;
    --dir) dir=$2; shift 2;;
    --warmup) warmup=$2; shift 2;;
    --bin) bin=$2; shift 2;;
    *) echo "usage: $0 [--minutes N] [--dir DIR] [--warmup MIN]" >&2; exit 2;;
  esac
done
if [ -z "$bin" ]; then
  cargo build --release -q
  bin=$PWD/target/release/statesync
fi
rm -rf "$dir"; mkdir -p "$dir"
cd "$dir"
$bin --quiet genesis --out g --state-mib 32 --block-ms 250 --checkpoint-interval 20 >/dev/null
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f -- "--data $dir/churn" 2>/dev/null || true
  pkill -f -- "--data $dir/joiner-" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
pid=0
start() { # name args... ; sets $pid
  local name=$1; shift
  rm -f "$name.addr"
  $bin --quiet node --genesis g/genesis.json --data "$dir/$name" --addr-file "$name.addr" "$@" >"$name.out" 2>"$name.log" &
  pid=$!
  for _ in $(seq 1 600); do [ -s "$name.addr" ] && break; sleep 0.1; done
}
start validator --role validator --validator-key g/validator-0.key --validator-key g/validator-1.key --validator-key g/validator-2.key; v=$pid; pids+=($v)
va=$(cat validator.addr)
start steady-1 --peer "$va"; f1=$pid; pids+=($f1)
start steady-2 --peer "$va" --peer "$(cat steady-1.addr)"; f2=$pid; pids+=($f2)
echo "soak: validator $v, steady followers $f1 $f2; $minutes min, warm-up $warmup min; data in $dir"

# Churn: a follower killed and restarted, fresh joiners coming and going.
(
  i=0
  while true; do
    i=$((i+1))
    start churn --peer "$va" --peer "$(cat steady-1.addr)"; c=$pid
    sleep $((20 + RANDOM % 20))
    if [ $((i % 2)) -eq 0 ]; then kill -9 "$c" 2>/dev/null || true; else kill "$c" 2>/dev/null || true; fi
    wait "$c" 2>/dev/null || true
    start "joiner-$i" --peer "$(cat steady-2.addr)" --exit-after-following 10 --timeout 120; j=$pid
    wait "$j" 2>/dev/null || true
    rm -rf "$dir/joiner-$i" "joiner-$i".*
  done
) &
churn=$!; pids+=($churn)

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# Resident memory, and its anonymous part (the heap and stacks: what the
# process allocates). The rest is file-backed, mostly the executable's code
# pages, which grow as code paths run for the first time (serving a state
# sync, a backfill) and are clean and shared.
rss() { awk '/VmRSS/ {r=$2} /RssAnon/ {a=$2} END {print r "," a}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)
echo "t_s,name,rss_kib,anon_kib,cpu_ticks" > samples.csv
end=$(( $(date +%s) + minutes * 60 )); t0=$(date +%s)
while [ "$(date +%s)" -lt "$end" ]; do
  now=$(( $(date +%s) - t0 ))
  for pair in "validator:$v" "steady-1:$f1" "steady-2:$f2"; do
    name=${pair%%:*}; p=${pair##*:}
    if [ ! -d "/proc/$p" ]; then echo "soak: $name ($p) died; see $dir/$name.log" >&2; exit 1; fi
    echo "$now,$name,$(rss "$p"),$(ticks "$p")" >> samples.csv
  done
  sleep 10
done
python3 - "$warmup" "$hz" <<'EOF'
import csv, statistics, sys
warm = float(sys.argv[1]) * 60; hz = float(sys.argv[2])
rows = list(csv.DictReader(open("samples.csv")))
ok = True
print(f"{'process':<10} {'RSS MiB early':>14} {'late':>6} {'anon MiB early':>15} {'late':>6} {'CPU % early':>12} {'late':>6}")
for name in sorted({r["name"] for r in rows}):
    rs = [(float(r["t_s"]), float(r["rss_kib"]) / 1024, float(r["cpu_ticks"]) / hz, float(r["anon_kib"]) / 1024) for r in rows if r["name"] == name and float(r["t_s"]) >= warm]
    if len(rs) < 9:
        print(f"{name}: too few samples after the warm-up"); ok = False; continue
    third = len(rs) // 3
    early, late = rs[:third], rs[-third:]
    def cpu(seg):  # CPU share over the segment, percent of one core
        return 100 * (seg[-1][2] - seg[0][2]) / max(seg[-1][0] - seg[0][0], 1)
    r0, r1 = statistics.median(x[1] for x in early), statistics.median(x[1] for x in late)
    a0, a1 = statistics.median(x[3] for x in early), statistics.median(x[3] for x in late)
    c0, c1 = cpu(early), cpu(late)
    # Judged on the anonymous part: the file-backed rest is code pages.
    flat_rss = abs(a1 - a0) <= 0.10 * a0 + 2
    flat_cpu = abs(c1 - c0) <= 0.10 * c0 + 0.5
    ok &= flat_rss and flat_cpu
    print(f"{name:<10} {r0:>14.1f} {r1:>6.1f} {a0:>15.1f} {a1:>6.1f} {c0:>12.2f} {c1:>6.2f}  {'flat' if flat_rss and flat_cpu else 'NOT FLAT'}")
print("soak:", "memory (anonymous) and CPU flat within 10% after the warm-up" if ok else "FAILED: growth after the warm-up")
sys.exit(0 if ok else 1)
EOF
