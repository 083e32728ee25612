#!/usr/bin/env bash
# On one machine, what a user runs across several (deploy/README.md):
#   PostgreSQL (the OS build) for the store, a Prefect server and a process worker on a
#   work pool, a Ray cluster of a head and a second node, and the gateway (2 replicas)
#   joined to that cluster by `autopilot serve --ray-address`.
#
#   scripts/cluster_up.sh up   STATE_DIR   # start; writes STATE_DIR/cluster.env, prints it
#   scripts/cluster_up.sh down STATE_DIR   # stop what `up` started (by recorded PID), only that
#
# Environment (optional): AUTOPILOT_CLUSTER_FLEET (fleet manifest for `autopilot init`;
# default: the starter fleet), AUTOPILOT_CLUSTER_STUB_TIERS=1 (engine-less tiers, for tests
# of the wiring: no vLLM engine starts), AUTOPILOT_CLUSTER_POOL (work pool, default
# autopilot-cluster), AUTOPILOT_CLUSTER_GATEWAY_PORT (default: a free port).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
VENV_BIN="${AUTOPILOT_VENV_BIN:-$ROOT/.venv/bin}"
PY="$VENV_BIN/python"

usage() { echo "usage: $0 up|down STATE_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION="$1"
mkdir -p "$2"
STATE="$(cd "$2" && pwd)"
PIDS="$STATE/pids"
LOGS="$STATE/logs"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

as_postgres() {  # the server refuses to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

wait_http() {  # URL SECONDS WHAT
  local deadline=$((SECONDS + $2))
  until "$PY" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)" "$1" \
      2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then echo "cluster_up: $3 did not answer $1 in $2 s" >&2; return 1; fi
    sleep 0.5
  done
}

started_at() { cut -d')' -f2- "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }
# NAME PID: kept as PID:START (its start time), so a PID reused since is never touched
record() { echo "$2:$(started_at "$2")" >> "$PIDS/$1"; }

descendants() {  # PID:START...: those still the same process, and every process below them
  ps -eo pid=,ppid= | "$PY" -c '
import sys
def started(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
roots = {int(p) for p, _, s in (a.partition(":") for a in sys.argv[1:]) if started(p) == s}
children = {}
for line in sys.stdin:
    pid, ppid = map(int, line.split())
    children.setdefault(ppid, []).append(pid)
seen, todo = set(), [p for p in roots]
while todo:
    p = todo.pop()
    if p in seen:
        continue
    seen.add(p)
    todo.extend(children.get(p, []))
print(" ".join(map(str, sorted(seen))))' "$@"
}

alive() { local p out=""; for p in "$@"; do kill -0 "$p" 2>/dev/null && out="$out $p"; done; echo $out; }

stop_recorded() {  # NAME: SIGTERM its processes and their children, SIGKILL what stays
  local file="$PIDS/$1" pids left i
  [ -s "$file" ] || return 0
  pids="$(alive $(descendants $(cat "$file")))"
  [ -n "$pids" ] || { rm -f "$file"; return 0; }
  echo "$pids" >> "$PIDS/.stopped"
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 1 ${2:-40}); do
    left="$(alive $pids)"; [ -z "$left" ] && break; sleep 0.5
  done
  left="$(alive $pids)"
  if [ -n "$left" ]; then kill -KILL $left 2>/dev/null || true; sleep 0.5; fi
  rm -f "$file"
}

down() {
  [ -d "$PIDS" ] || { echo "cluster_up: nothing recorded under $STATE"; return 0; }
  stop_recorded gateway 60      # deletes the fleet's own Serve applications on SIGTERM
  stop_recorded worker 20
  stop_recorded prefect 20
  if [ -s "$PIDS/ray" ]; then   # the nodes with every worker and actor they started
    stop_recorded ray 20
  fi
  if [ -f "$STATE/pg.dir" ]; then
    local pgdir; pgdir="$(cat "$STATE/pg.dir")"
    as_postgres pg_ctl -D "$pgdir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    stop_recorded postgres 10
    rm -rf "$pgdir"; rm -f "$STATE/pg.dir"
  fi
  if [ -f "$STATE/ray.dir" ]; then rm -rf "$(cat "$STATE/ray.dir")"; rm -f "$STATE/ray.dir"; fi
  # What was stopped, and whether any of it survived (the test asserts on this).
  if [ -s "$PIDS/.stopped" ]; then
    local survivors; survivors="$(alive $(cat "$PIDS/.stopped"))"
    if [ -n "$survivors" ]; then echo "cluster_up: still running: $survivors" >&2; return 1; fi
  fi
  echo "cluster_up: stopped everything started under $STATE"
}

start_bg() {  # NAME LOGFILE CMD...: in its own session, PID recorded
  local name="$1" log="$2"; shift 2
  setsid "$@" > "$log" 2>&1 < /dev/null &
  record "$name" $!
}

up() {
  if [ -d "$PIDS" ] && ls "$PIDS"/* >/dev/null 2>&1; then
    echo "cluster_up: $STATE already has a running cluster ($PIDS); run down first" >&2; exit 1
  fi
  mkdir -p "$PIDS" "$LOGS"
  trap 'echo "cluster_up: start failed; stopping what started (logs: $LOGS)" >&2; down || true' ERR

  # -- PostgreSQL: the OS build, a throwaway cluster on loopback, databases for the store and
  # for the Prefect server.
  # Its files live under /tmp (short, and reachable by the postgres user when run as root).
  local pgdir pgport
  pgdir="$(mktemp -d "${TMPDIR:-/tmp}/autopilot-pg.XXXXXX")"; echo "$pgdir" > "$STATE/pg.dir"
  [ "$(id -u)" = 0 ] && chown postgres "$pgdir"
  pgport="$(free_port)"
  as_postgres initdb -D "$pgdir/data" -U autopilot --auth=trust -E UTF8 > "$LOGS/initdb.log" 2>&1
  as_postgres pg_ctl -D "$pgdir/data" -w -t 60 -l "$pgdir/log" \
    -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1" start > "$LOGS/pg_ctl.log" 2>&1
  record postgres "$(head -1 "$pgdir/data/postmaster.pid")"
  "$PY" -c "import psycopg,sys; c=psycopg.connect(sys.argv[1], autocommit=True); c.execute('CREATE DATABASE autopilot'); c.execute('CREATE DATABASE prefect')" \
    "host=127.0.0.1 port=$pgport user=autopilot dbname=postgres"
  export AUTOPILOT_STORE_URL="postgresql+psycopg://autopilot@127.0.0.1:$pgport/autopilot"
  echo "postgres: $AUTOPILOT_STORE_URL"

  # -- the autopilot state directory, its store in PostgreSQL
  local home="$STATE/autopilot"
  local fleet_arg=()
  [ -n "${AUTOPILOT_CLUSTER_FLEET:-}" ] && fleet_arg=(--fleet "$AUTOPILOT_CLUSTER_FLEET")
  "$VENV_BIN/autopilot" --state-dir "$home" init "${fleet_arg[@]}" > "$LOGS/init.log"
  export PREFECT_HOME="$STATE/prefect"

  # -- Prefect server and a process worker on a work pool with the three flows deployed
  local prefect_port pool="${AUTOPILOT_CLUSTER_POOL:-autopilot-cluster}"
  prefect_port="$(free_port)"
  export PREFECT_API_URL="http://127.0.0.1:$prefect_port/api"
  # Prefect's own database in the same PostgreSQL (its SQLite default locks under a worker)
  PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://autopilot@127.0.0.1:$pgport/prefect" \
  PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false \
    start_bg prefect "$LOGS/prefect-server.log" \
    "$VENV_BIN/prefect" server start --host 127.0.0.1 --port "$prefect_port"

  # -- Ray: a head and a second node (one machine: the second raylet shares the head's
  # session directory; its temp dir is short because Unix socket paths are limited)
  local raydir ray_port
  raydir="$(mktemp -d "${TMPDIR:-/tmp}/autopilot-ray.XXXXXX")"; echo "$raydir" > "$STATE/ray.dir"
  ray_port="$(free_port)"
  export RAY_ADDRESS="127.0.0.1:$ray_port"
  # Ray 2.60 wants a token on a cluster `ray start` makes; this one's stays in STATE (not
  # ~/.ray), and every node and client must be given it (the env file does).
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/ray-auth-token"
  (umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32))' > "$RAY_AUTH_TOKEN_PATH")
  "$VENV_BIN/ray" start --head --node-ip-address 127.0.0.1 --port "$ray_port" \
    --include-dashboard false --num-cpus 2 --temp-dir "$raydir" --disable-usage-stats \
    > "$LOGS/ray-head.log" 2>&1
  record_ray() { local pid; for pid in $(pgrep -f -- "$raydir"); do record ray "$pid"; done; }
  record_ray
  "$VENV_BIN/ray" start --address "$RAY_ADDRESS" --node-ip-address 127.0.0.1 --num-cpus 2 \
    --disable-usage-stats > "$LOGS/ray-node.log" 2>&1
  record_ray
  "$PY" -c "import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); n=[x for x in ray.nodes() if x['Alive']]; print(f'ray: {len(n)} nodes at', sys.argv[1]); sys.exit(len(n) != 2)" "$RAY_ADDRESS"

  wait_http "$PREFECT_API_URL/health" 120 "the Prefect server"
  "$VENV_BIN/autopilot" --state-dir "$home" --json schedule --work-pool "$pool" > "$LOGS/schedule.log"
  PREFECT_WORKER_QUERY_SECONDS=1 PREFECT_WORKER_PREFETCH_SECONDS=5 \
    start_bg worker "$LOGS/worker.log" \
    "$VENV_BIN/autopilot" --state-dir "$home" worker --work-pool "$pool"

  # -- the gateway, 2 replicas, joined to the cluster (tiers: vLLM, or stubs when asked)
  local gw_port="${AUTOPILOT_CLUSTER_GATEWAY_PORT:-$(free_port)}"
  if [ "${AUTOPILOT_CLUSTER_STUB_TIERS:-0}" = 1 ]; then
    "$PY" -m serving.stub_tiers --ray-address "$RAY_ADDRESS" --port "$gw_port" \
      --manifest "$home/fleet.yaml" --store-url "$AUTOPILOT_STORE_URL" > "$LOGS/stub-tiers.log" 2>&1
  fi
  start_bg gateway "$LOGS/serve.log" \
    "$VENV_BIN/autopilot" --state-dir "$home" serve --ray-address "$RAY_ADDRESS" \
    --replicas 2 --port "$gw_port"
  local gateway_url="http://127.0.0.1:$gw_port"
  wait_http "$gateway_url/healthz" "${AUTOPILOT_CLUSTER_SERVE_TIMEOUT:-600}" "the gateway"

  cat > "$STATE/cluster.env" <<EOF
AUTOPILOT_HOME=$home
AUTOPILOT_STORE_URL=$AUTOPILOT_STORE_URL
PREFECT_API_URL=$PREFECT_API_URL
PREFECT_HOME=$PREFECT_HOME
RAY_ADDRESS=$RAY_ADDRESS
RAY_AUTH_MODE=token
RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH
AUTOPILOT_GATEWAY_URL=$gateway_url
AUTOPILOT_WORK_POOL=$pool
EOF
  trap - ERR
  echo "cluster up; environment in $STATE/cluster.env (stop: $0 down $STATE):"
  cat "$STATE/cluster.env"
}

case "$ACTION" in
  up) up ;;
  down) down ;;
  *) usage ;;
esac
