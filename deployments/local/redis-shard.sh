#!/usr/bin/env bash
# redis-shard.sh runs one Redis server kept exactly like one shard of the
# local Redis Cluster (redis-cluster.sh), but not clustered: the single
# Redis that the benchmark compares the Cluster with, like for like
# (docs/DEVIATIONS.md, "The Cluster round trip is compared with one
# server kept like a shard"):
#
#   a primary on 127.0.0.1:7301 and its replica on 7302;
#   appendonly yes, appendfsync always, save "", maxmemory-policy
#   noeviction on both, as every node of the Cluster;
#   files in ${GW_RUN_DIR:-<repo>/run}/redis-shard/<port>/.
#
# Nothing watches it (no Sentinel): it is for measuring, not for failover.
# The shared Redis of `make services` (6379) is never touched.
#
# Usage: redis-shard.sh start|stop|status|url
#
#   start   makes it run and be healthy (7301 a primary, 7302 its replica
#           with the link up, both with the settings above). Already
#           healthy: nothing to do. Anything else (half-started, a node
#           down, settings changed by hand): stopped, wiped and created
#           again (its data is lost: it holds only a benchmark's keys).
#   stop    shuts both down (SHUTDOWN NOSAVE) and wipes the files.
#           Harmless when nothing runs.
#   status  one line per node, then whether it is healthy; exits 0 only
#           when it is.
#   url     prints the GW_REDIS_URL of the primary.
#
# Every wait is bounded by GW_SERVICES_WAIT seconds (default 90). The script
# only ever stops nodes it started itself (their config file is under the
# run folder); a Redis of someone else on one of the ports is an error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_DIR=${GW_RUN_DIR:-$ROOT/run}
BASE=$RUN_DIR/redis-shard
WAIT=${GW_SERVICES_WAIT:-90}
HOST=127.0.0.1
PORTS=(7301 7302)

PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/opt/homebrew/sbin"

say() { printf 'redis-shard: %s\n' "$*"; }
warn() { printf 'redis-shard: %s\n' "$*" >&2; }
die() {
	warn "$*"
	exit 1
}

# The helpers the local Redis scripts share: cli, answers, field, ours,
# tcp_used, pid_of, wait_until, stop_nodes, lock, refuse_foreign.
LOCK_NAME=redis-shard
LOCK_PORT=${PORTS[0]}
# shellcheck source=redis-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/redis-lib.sh"

conf_of() { printf '%s/%s/redis.conf' "$BASE" "$1"; }

# health succeeds when both nodes run as this script configures them, and
# otherwise prints why not.
health() {
	local p v
	for p in "${PORTS[@]}"; do
		if ! answers "$p"; then
			echo "node $p does not answer"
			return 1
		fi
		if ! ours "$p"; then
			echo "node $p was not started by this script"
			return 1
		fi
		v=$(cli "$p" config get appendfsync | sed -n 2p)
		if [[ $v != always || $(field "$p" persistence aof_enabled) != 1 ]]; then
			echo "node $p does not run appendonly yes, appendfsync always"
			return 1
		fi
	done
	if [[ $(field "${PORTS[0]}" replication role) != master ]]; then
		echo "${PORTS[0]} is not a primary"
		return 1
	fi
	if [[ $(field "${PORTS[1]}" replication role) != slave ||
		$(field "${PORTS[1]}" replication master_port) != "${PORTS[0]}" ||
		$(field "${PORTS[1]}" replication master_link_status) != up ]]; then
		echo "${PORTS[1]} does not replicate from ${PORTS[0]}"
		return 1
	fi
}

# write_conf PORT writes the node's config: the settings of a node of
# redis-cluster.sh, without cluster-enabled.
write_conf() {
	local port=$1 dir=$BASE/$1
	mkdir -p "$dir"
	{
		echo "# Written by deployments/local/redis-shard.sh; wiped with it."
		node_conf "$port"
	} >"$dir/redis.conf"
	if [[ $port != "${PORTS[0]}" ]]; then
		printf 'replicaof %s %s\n' "$HOST" "${PORTS[0]}" >>"$dir/redis.conf"
	fi
}

cmd_start() {
	local why p
	command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 ||
		die "redis-server and redis-cli are needed (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
	lock
	if why=$(health); then
		say "already running and healthy on $HOST:${PORTS[0]} (replica ${PORTS[1]}); nothing to do"
		return
	fi
	refuse_foreign "${PORTS[@]}"
	if [[ -d $BASE ]]; then
		say "not healthy ($why); wiping it and creating it again"
	fi
	stop_nodes "${PORTS[@]}"
	rm -rf "${BASE:?}"
	for p in "${PORTS[@]}"; do
		write_conf "$p"
		start_node "$p" || die "node $p: cannot start it"
	done
	if ! wait_until "$WAIT" health; then
		die "started, but not healthy after ${WAIT}s: $(health || true)"
	fi
	say "running on $HOST:${PORTS[0]} (replica ${PORTS[1]}; appendonly yes, appendfsync always); GW_REDIS_URL=redis://$HOST:${PORTS[0]}"
}

cmd_stop() {
	lock
	stop_nodes "${PORTS[@]}"
	rm -rf "${BASE:?}"
	say "stopped (nothing runs on $HOST:${PORTS[0]}-${PORTS[-1]} that this script started)"
}

cmd_status() {
	local why
	status_nodes "${PORTS[@]}"
	if why=$(health); then
		say "healthy"
	else
		say "not healthy: $why"
		return 1
	fi
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
url) printf 'redis://%s:%s\n' "$HOST" "${PORTS[0]}" ;;
*)
	warn "usage: $0 start|stop|status|url"
	exit 2
	;;
esac
