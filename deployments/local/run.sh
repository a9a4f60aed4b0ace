#!/usr/bin/env bash
# run.sh starts the whole gateway on this machine, without Docker:
# RabbitMQ and Redis (through services.sh), the apiserver on
# 127.0.0.1:8080, two msgworkers, three pushservers on free ports from
# 1884 up, and a simulated fleet of 100 devices. Logs go to one run
# folder. Ctrl-C stops everything in order.
#
# Settings (environment): GW_AUTH_SECRET (generated when unset),
# GW_NAMESPACE (gw), GW_HTTP_ADDR (127.0.0.1:8080), GW_REDIS_URL
# (redis://127.0.0.1:6379/0), GW_DURABILITY (see below), FLEET_DEVICES
# (100), PUSH_SERVERS (3), WORKERS (2), RUN_DIR (run/<timestamp>).
#
# Durability (DESIGN §7): the services refuse readiness on a Redis that is
# not durable (appendonly yes with appendfsync always, or
# GW_REDIS_WAIT_REPLICAS replicas connected) unless GW_DURABILITY=relaxed.
# When GW_DURABILITY is unset, run.sh checks the Redis it uses and sets
# relaxed when it is not durable (or when it cannot tell: a Cluster or
# Sentinel URL, no redis-cli), and says so in its banner.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

export GW_NAMESPACE="${GW_NAMESPACE:-gw}"
export GW_HTTP_ADDR="${GW_HTTP_ADDR:-127.0.0.1:8080}"
fleet_devices="${FLEET_DEVICES:-100}"
push_servers="${PUSH_SERVERS:-3}"
workers="${WORKERS:-2}"
run_dir="${RUN_DIR:-run/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$run_dir"
run_dir="$(cd "$run_dir" && pwd)"

if [[ -z "${GW_AUTH_SECRET:-}" ]]; then
  GW_AUTH_SECRET="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi
export GW_AUTH_SECRET
printf '%s\n' "$GW_AUTH_SECRET" > "$run_dir/secret"
chmod 600 "$run_dir/secret"

bash deployments/local/services.sh

# redis_durable URL: whether the one Redis server at URL keeps every write
# (appendonly yes and appendfsync always, or at least
# GW_REDIS_WAIT_REPLICAS ≥ 1 replicas connected). Fails when it cannot
# tell.
redis_durable() {
  local url="$1" cfg replicas want="${GW_REDIS_WAIT_REPLICAS:-0}"
  [[ "$url" == *\?* ]] && return 1 # Cluster or Sentinel: not checked here
  command -v redis-cli >/dev/null 2>&1 || return 1
  if (( want >= 1 )); then
    replicas="$(redis-cli -u "$url" info replication 2>/dev/null | tr -d '\r' | sed -n 's/^connected_slaves://p')"
    [[ -n "$replicas" ]] && (( replicas >= want )) && return 0
  fi
  cfg="$(redis-cli -u "$url" config get 'append*' 2>/dev/null | tr -d '\r' | paste -sd ' ')" || return 1
  [[ " $cfg " == *" appendonly yes "* && " $cfg " == *" appendfsync always "* ]]
}

durability_note=""
if [[ -z "${GW_DURABILITY:-}" ]]; then
  if redis_durable "${GW_REDIS_URL:-redis://127.0.0.1:6379/0}"; then
    export GW_DURABILITY=strict
  else
    export GW_DURABILITY=relaxed
    durability_note="
  Durability:    RELAXED (GW_DURABILITY=relaxed): this Redis is not durable
                 (or run.sh could not tell), so a Redis crash can lose the
                 last second of commands and answers. Set GW_DURABILITY=strict
                 to make readiness require appendonly yes + appendfsync always.
"
    echo "Redis is not durable (or could not be checked): running with GW_DURABILITY=relaxed"
  fi
fi

echo "building into bin/ ..."
make -s build
for b in apiserver msgworker pushserver devicesim; do
  if [[ ! -x bin/$b ]]; then
    echo "bin/$b was not built; see the build output above" >&2
    exit 1
  fi
done

pids=()
names=()
start() { # start NAME CMD...: runs CMD in the background, logging to the run folder
  local name="$1"; shift
  "$@" >>"$run_dir/$name.log" 2>&1 &
  pids+=("$!")
  names+=("$name")
}

stopping=0
stop_all() {
  [[ $stopping == 1 ]] && return
  stopping=1
  echo
  echo "stopping (logs stay in $run_dir) ..."
  # Reverse order: the fleet first, then the apiserver, workers, push servers.
  local i
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  local deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  echo "stopped."
}
trap stop_all EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port=1884
for (( n=0; n<push_servers; n++ )); do
  while ! port_free "$port"; do port=$((port + 1)); done
  start "pushserver-$n" bin/pushserver --mqtt-addr "127.0.0.1:$port" --node-id "push-$n"
  port=$((port + 1))
done
for (( n=0; n<workers; n++ )); do
  start "msgworker-$n" bin/msgworker
done
start apiserver bin/apiserver

api="http://$GW_HTTP_ADDR"
echo "waiting for the apiserver at $api ..."
ok=0
for _ in $(seq 1 100); do
  if curl -fsS "$api/readyz" >/dev/null 2>&1; then ok=1; break; fi
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "a service exited during start; see the logs in $run_dir:" >&2
      tail -n 5 "$run_dir"/*.log >&2
      exit 1
    fi
  done
  sleep 0.2
done
if [[ $ok != 1 ]]; then
  echo "the apiserver did not become ready within 20s; see $run_dir/apiserver.log" >&2
  exit 1
fi

operator="$(bin/devicesim token --role operator --sub operator --ttl 24h)"
client="$(bin/devicesim token --role client --sub app-1 --devices 'dev-*' --ttl 24h)"
printf '%s\n' "$operator" > "$run_dir/operator.token"
printf '%s\n' "$client" > "$run_dir/client.token"

start fleet bin/devicesim --api "$api" fleet --devices "$fleet_devices" --prefix dev- --progress=false

cat <<MSG

The gateway is running (namespace $GW_NAMESPACE, logs in $run_dir).
$durability_note
  Dashboard:     $api/#token=$operator
  API:           $api  (OpenAPI: $api/openapi.yaml)
  Client token:  $client
                 (sub app-1, may command dev-*; also in $run_dir/client.token)

Send a command to a simulated device:

  bin/devicesim send --api $api --secret $GW_AUTH_SECRET --device dev-1 --method echo --params '{"hello":"world"}'

Watch queue depth:   bin/devicesim stats --watch --api $api --secret $GW_AUTH_SECRET
Generate load:       bin/devicesim load --api $api --secret $GW_AUTH_SECRET --devices $fleet_devices --rate 200 --duration 20s

Press Ctrl-C to stop everything.
MSG

# Stay up until interrupted or until a service dies.
while true; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${names[$i]} exited; see $run_dir/${names[$i]}.log" >&2
      tail -n 20 "$run_dir/${names[$i]}.log" >&2 || true
      exit 1
    fi
  done
  sleep 1
done
