#!/usr/bin/env bash
# Compares the kisgw Redis client with redis-benchmark on this machine:
# GET of a ~6 KB value, same concurrency, with and without pipelining.
# Starts its own redis-server on a free loopback port and stops it (by PID) at the end.
#   bench/redis/run.sh [CLIENTS] [REQUESTS] [ROUNDS]
# SCRATCH=path sets the build directory (default .build in bench/redis).
# PIN=0 lets the scheduler place every process (the default pins, see below).
#
# Our client runs in three shapes: the default (MultiThreadedEventLoopGroup.singleton,
# one event-loop thread per core, the tasks on Swift's cooperative pool); the same loops
# with each driving task on one of them (`--on-loop`: the shape of a gateway request, which
# runs on its connection's loop and uses the Redis connections of that loop); and on one
# event-loop thread with the driving tasks on that same thread (`--threads 1 --on-loop`,
# the shape of single-threaded redis-benchmark), each with one connection per client
# (pool = CLIENTS, as redis-benchmark connects) and with the default pool of 8.
#
# Pinning: with 2 or more cores, redis-server runs on core 0 and each client — redis-benchmark
# or ours, one at a time — on core 1. Both clients then get the same CPU (one core) and
# the server a core of its own, whatever the scheduler would do: unpinned, redis-benchmark's
# own figure swung from 225k to 428k GET/s between runs minutes apart, with whether it and
# redis-server happened to share a core. The rounds alternate all clients; the summary gives
# each one's median requests/s and the median of its per-round ratios to redis-benchmark.
set -euo pipefail
cd "$(dirname "$0")"
CLIENTS=${1:-50}
REQUESTS=${2:-200000}
ROUNDS=${3:-5}
SIZE=6000
PIPELINE=16
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')

SCRATCH=${SCRATCH:-.build}
swift build -c release --product RedisBench --scratch-path "$SCRATCH" >/dev/null
BIN=$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/RedisBench

SERVER_CPU=() CLIENT_CPU=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=(taskset -c 0) CLIENT_CPU=(taskset -c 1)
fi

"${SERVER_CPU[@]}" redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null &
SERVER=$!
OUT=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(redis-server --version | cut -d' ' -f3)"
if [ ${#SERVER_CPU[@]} -gt 0 ]; then
    echo "pinned: redis-server on core 0, each client on core 1"
else
    echo "not pinned"
fi
echo "$CLIENTS clients, $REQUESTS GETs per run, $SIZE-byte value, $ROUNDS rounds"

# Runs a client and appends "LABEL<TAB>requests/s<TAB>p50<TAB>p99<TAB>µs CPU per GET" to $OUT/results.
# CPU is user + system time from getrusage: the steadier figure on shared cores.
measure() {
    local label=$1
    shift
    python3 - "$REQUESTS" "$label" "$@" >>"$OUT/results" <<'PY'
import re, resource, subprocess, sys
requests, label, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
out = subprocess.run(argv, check=False, capture_output=True, text=True).stdout
r = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = (r.ru_utime + r.ru_stime) * 1e6 / requests
m = re.search(r'"GET","([\d.]+)","[\d.]+","[\d.]+","([\d.]+)","[\d.]+","([\d.]+)"', out)  # redis-benchmark --csv: rps, avg, min, p50, p95, p99
if not m:
    m = re.search(r"([\d.]+) requests/s, p50 ([\d.]+) ms, p99 ([\d.]+) ms", out)  # RedisBench
if not m:
    sys.exit("no figures from %s: %s" % (argv[0], out.strip()[:300]))
print("\t".join([label, m.group(1), m.group(2), m.group(3), "%.2f" % cpu]))
PY
}

# The key redis-benchmark GETs, holding a SIZE-byte value (its GET test alone would read a missing key).
redis-benchmark -p "$PORT" -t set -d $SIZE -c 1 -n 1 >/dev/null 2>&1
SHAPES=("" "--on-loop" "--threads 1 --on-loop")
for round in $(seq "$ROUNDS"); do
    for P in 1 $PIPELINE; do
        measure "P$P redis-benchmark ($CLIENTS connections)" \
            "${CLIENT_CPU[@]}" redis-benchmark -p "$PORT" -t get -d $SIZE -c "$CLIENTS" -n "$REQUESTS" -P "$P" --csv
        for SHAPE in "${SHAPES[@]}"; do
            for POOL in "$CLIENTS" 8; do
                # shellcheck disable=SC2086 # SHAPE is a list of flags
                measure "P$P kisgw ${SHAPE:-default}, pool $POOL" \
                    "${CLIENT_CPU[@]}" "$BIN" --url "redis://127.0.0.1:$PORT/0" -c "$CLIENTS" -n "$REQUESTS" -P "$P" -d $SIZE --pool "$POOL" $SHAPE
            done
        done
    done
    echo "round $round done"
done

python3 - "$OUT/results" "$ROUNDS" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
rounds = int(sys.argv[2])
labels = list(dict.fromkeys(r[0] for r in rows))
for pipeline in sorted({l.split()[0] for l in labels}, key=lambda p: int(p[1:])):
    print(f"\n| GET, pipeline {pipeline[1:]} | requests/s, median (all rounds) | ratio to redis-benchmark, median (range) | p50 ms | p99 ms | µs CPU/GET |")
    print("|---|---|---|---:|---:|---:|")
    group = [l for l in labels if l.split()[0] == pipeline]
    anchor = [float(r[1]) for r in rows if r[0] == group[0]]
    for label in group:
        mine = [r for r in rows if r[0] == label]
        rps = [float(r[1]) for r in mine]
        ratios = [a / b for a, b in zip(rps, anchor)]
        med = lambda i: statistics.median(float(r[i]) for r in mine)
        ratio = "1" if label == group[0] else "**%.2f×** (%.2f–%.2f)" % (statistics.median(ratios), min(ratios), max(ratios))
        print("| %s | %.0fk (%s) | %s | %.3f | %.3f | %.2f |" % (
            label.split(" ", 1)[1], statistics.median(rps) / 1000, " / ".join("%.0fk" % (x / 1000) for x in rps),
            ratio, med(2), med(3), med(4)))
PY
