#!/usr/bin/env bash
# A/B of two statesync binaries on a 1-server full fetch, alternating
# A, rsync daemon, B for ROUNDS rounds, each after re-reading the state,
# touching free memory and sync(2) (as `statesync bench sync` does).
# Prints per run: wall s, fetcher user s, fetcher system s, server CPU ticks.
#   scripts/bench.sh sync --dir /tmp/bsync --rounds 1   # generates the data once
#   cp target/release/statesync /tmp/statesync-A; (change, rebuild)
#   scripts/ab-sync.sh 5 /tmp/statesync-A target/release/statesync [/tmp/bsync]
set -u
R=$1; A=$2; B=$3; D=${4:-/tmp/bsync}
V1=$D/server-store/checkpoints/00000000000000000001/state
root=$($A --json --quiet checkpoint list --store $D/server-store | python3 -c 'import json,sys; print(json.load(sys.stdin)["checkpoints"][0]["root"])')
N=$(du -sb $V1 | cut -f1)
start_srv() { rm -f $D/ab$1.addr; $2 --quiet serve --store $D/server-store --data $D/absrv$1 --addr-file $D/ab$1.addr >/dev/null 2>&1 & echo $! > $D/ab$1.pid; while [ ! -s $D/ab$1.addr ]; do sleep 0.2; done; }
start_srv A $A; start_srv B $B
PA=$(cat $D/abA.pid); PB=$(cat $D/abB.pid)
port=$((20000 + RANDOM % 20000))
printf "use chroot = no\nread only = yes\npid file = $D/abrsync.pid\n[v1]\npath = $V1\n" > $D/abrsync.conf
rm -f $D/abrsync.pid
rsync --daemon --no-detach --address=127.0.0.1 --port=$port --config=$D/abrsync.conf & RP=$!
sleep 1
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
prep() { rm -rf $D/out $D/client-data $D/out.manifest; find $V1 -type f -exec cat {} + > /dev/null; python3 -c "b=b'\x01'*($N+(512<<20)); del b"; sync; }
run() { # name cmd... ; prints wall user sys server-ticks
  local name=$1 pid=$2; shift 2; prep; local c0=0; [ "$pid" != 0 ] && c0=$(cpu $pid)
  /usr/bin/time -o /tmp/ab.time -f "%e %U %S" "$@" >/dev/null 2>/dev/null; local t=$(tail -1 /tmp/ab.time)
  local c1=0; [ "$pid" != 0 ] && c1=$(cpu $pid)
  echo "$name $t srv_cpu=$(( (c1-c0) ))" ; }
for i in $(seq 1 $R); do
  run A $PA $A --quiet fetch --root $root --out $D/out --data $D/client-data --peer $(cat $D/abA.addr)
  run rsync 0 rsync -a rsync://127.0.0.1:$port/v1/ $D/out/
  run B $PB $B --quiet fetch --root $root --out $D/out --data $D/client-data --peer $(cat $D/abB.addr)
done
kill $PA $PB $RP; wait 2>/dev/null
