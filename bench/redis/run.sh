#!/usr/bin/env bash
# Compares the kisgw Redis client with redis-benchmark on this machine:
# GET of a ~6 KB value, same concurrency, with and without pipelining.
# Starts its own redis-server on a free loopback port and stops it (by PID) at the end.
#   bench/redis/run.sh [CLIENTS] [REQUESTS]
# SCRATCH=path sets the build directory (default .build in bench/redis).
# Our client runs in three shapes: the default (MultiThreadedEventLoopGroup.singleton,
# one event-loop thread per core, the tasks on Swift's cooperative pool); the same loops
# with each driving task on one of them (`--on-loop`: the shape of a gateway miss, which
# runs on its connection's loop and uses the Redis connections of that loop); and on one
# event-loop thread with the driving tasks on that same thread (`--threads 1 --on-loop`,
# the shape of single-threaded redis-benchmark), each with one connection per client
# and with a pool of 8.
set -euo pipefail
cd "$(dirname "$0")"
CLIENTS=${1:-50}
REQUESTS=${2:-200000}
SIZE=6000
PIPELINE=16
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')

SCRATCH=${SCRATCH:-.build}
swift build -c release --product RedisBench --scratch-path "$SCRATCH" >/dev/null
BIN=$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/RedisBench

redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(redis-server --version | cut -d' ' -f3)"

# Runs a command and prints what it printed, then the CPU time (user + system) it used per GET: the steadier
# figure on shared cores, where requests/s swing with whatever else runs.
cpu_per_get() {
    python3 - "$REQUESTS" "$@" <<'PY'
import resource, subprocess, sys
subprocess.run(sys.argv[2:], check=False)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("    client CPU %.2f us per GET" % ((r.ru_utime + r.ru_stime) * 1e6 / int(sys.argv[1])))
PY
}

# The key redis-benchmark GETs, holding a SIZE-byte value (its GET test alone would read a missing key).
redis-benchmark -p "$PORT" -t set -d $SIZE -c 1 -n 1 >/dev/null 2>&1
for P in 1 $PIPELINE; do
    echo "--- pipeline $P ---"
    cpu_per_get redis-benchmark -p "$PORT" -t get -d $SIZE -c "$CLIENTS" -n "$REQUESTS" -P "$P" --csv 2>/dev/null \
        | awk -F'"' -v c="$CLIENTS" -v p="$P" '$2 == "GET" { printf "redis-benchmark GET: %d clients, pipeline %d: %s requests/s, p50 %s ms, p99 %s ms\n", c, p, $4, $10, $14 } /client CPU/ { print }'
    for SHAPE in "" "--on-loop" "--threads 1 --on-loop"; do
        # shellcheck disable=SC2086 # SHAPE is a list of flags
        cpu_per_get "$BIN" --url "redis://127.0.0.1:$PORT/0" -c "$CLIENTS" -n "$REQUESTS" -P "$P" -d $SIZE $SHAPE
        # shellcheck disable=SC2086
        cpu_per_get "$BIN" --url "redis://127.0.0.1:$PORT/0" -c "$CLIENTS" -n "$REQUESTS" -P "$P" -d $SIZE --pool 8 $SHAPE
    done
done
