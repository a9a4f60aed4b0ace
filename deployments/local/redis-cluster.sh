#!/usr/bin/env bash
# redis-cluster.sh runs a local Redis Cluster on loopback, for development and
# for the tests that need one (DESIGN §7):
#
#   3 primaries and 1 replica each, on 127.0.0.1:7101-7106;
#   appendonly yes, appendfsync always, cluster-node-timeout 2000 ms (a
#   failover takes a few seconds);
#   files in ${GW_RUN_DIR:-<repo>/run}/redis-cluster/<port>/.
#
# Usage: redis-cluster.sh start|stop|status|url
#
#   start   makes the cluster run and be healthy (cluster_state:ok, 3
#           primaries each with a connected replica). Already healthy: nothing
#           to do. Created before but some nodes down (a stop, a crash, a test
#           that killed a primary): the missing nodes are started again from
#           their files and rejoin (a killed primary comes back as a replica).
#           Anything else that is not healthy (half-started, never formed,
#           still broken after the restart): its nodes are stopped, the files
#           wiped, and the cluster created again (its data is lost).
#   stop    shuts the nodes down (SHUTDOWN NOSAVE; the AOF keeps the data for
#           the next start). Harmless when nothing runs.
#   status  one line per node, then whether the cluster is healthy; exits 0
#           only when it is.
#   url     prints the GW_REDIS_URL of the cluster (the Cluster form: several
#           addr= parameters, see deployments/README.md).
#
# start and stop wait while a test of internal/testenv kills nodes of the
# deployment (it holds ${TMPDIR:-/tmp}/gwtest-redis-127.0.0.1-<first port>.lock).
# Every wait is bounded by GW_SERVICES_WAIT seconds (default 90). The script
# only ever stops nodes it started itself (their config file is under the run
# folder); a Redis of someone else on one of the ports is an error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_DIR=${GW_RUN_DIR:-$ROOT/run}
BASE=$RUN_DIR/redis-cluster
WAIT=${GW_SERVICES_WAIT:-90}
HOST=127.0.0.1
PORTS=(7101 7102 7103 7104 7105 7106)
NODE_TIMEOUT_MS=2000
# How long start waits for a restarted cluster to heal before it wipes it.
REPAIR_WAIT=$((WAIT < 30 ? WAIT : 30))

PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/opt/homebrew/sbin"

say() { printf 'redis-cluster: %s\n' "$*"; }
warn() { printf 'redis-cluster: %s\n' "$*" >&2; }
die() {
	warn "$*"
	exit 1
}

cluster_url() {
	local u="redis://$HOST:${PORTS[0]}" sep='?' p
	for p in "${PORTS[@]:1}"; do
		u+="${sep}addr=$HOST:$p"
		sep='&'
	done
	printf '%s\n' "$u"
}

# The helpers both local Redis scripts share: cli, answers, field, ours,
# tcp_used, pid_of, wait_until, stop_nodes, lock, refuse_foreign.
LOCK_NAME=redis-cluster
LOCK_PORT=${PORTS[0]}
# shellcheck source=redis-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/redis-lib.sh"

conf_of() { printf '%s/%s/redis.conf' "$BASE" "$1"; }

# health succeeds when the cluster is healthy, and otherwise prints why not.
health() {
	local p info nodes verdict
	for p in "${PORTS[@]}"; do
		if ! answers "$p"; then
			echo "node $p does not answer"
			return 1
		fi
		info=$(cli "$p" cluster info || true)
		if ! grep -qx 'cluster_state:ok' <<<"$info"; then
			echo "node $p: cluster_state is not ok"
			return 1
		fi
		if ! grep -qx "cluster_known_nodes:${#PORTS[@]}" <<<"$info"; then
			echo "node $p does not know all ${#PORTS[@]} nodes"
			return 1
		fi
		if [[ $(field "$p" replication role) == slave && $(field "$p" replication master_link_status) != up ]]; then
			echo "replica $p is not in sync with its primary"
			return 1
		fi
	done
	nodes=$(cli "${PORTS[0]}" cluster nodes || true)
	# <id> <addr> <flags> <primary id> <ping> <pong> <epoch> <link> <slots>...
	verdict=$(awk '
		$3 ~ /fail|handshake|noaddr/ { bad = bad " " $2 " is " $3 }
		$3 ~ /master/ && NF >= 9 { primary[$1] = $2 }
		$3 ~ /slave/ && $8 == "connected" { replicas[$4]++ }
		END {
			if (bad != "") { print "nodes in trouble:" bad; exit }
			n = 0
			for (id in primary) {
				n++
				if (!(id in replicas)) { print "primary " primary[id] " has no replica"; exit }
			}
			if (n != 3) { print n " primaries serve slots, want 3"; exit }
			print "ok"
		}' <<<"$nodes")
	if [[ $verdict != ok ]]; then
		echo "$verdict"
		return 1
	fi
}

write_conf() {
	local port=$1 dir=$BASE/$1
	mkdir -p "$dir"
	{
		echo "# Written by deployments/local/redis-cluster.sh; wiped with the cluster."
		node_conf "$port"
		echo "cluster-enabled yes"
		echo "cluster-config-file nodes.conf"
		echo "cluster-node-timeout $NODE_TIMEOUT_MS"
	} >"$dir/redis.conf"
}

create() {
	local p addrs=()
	say "creating a cluster of 3 primaries and 3 replicas on $HOST:${PORTS[0]}-${PORTS[-1]} (files in $BASE) ..."
	mkdir -p "$BASE"
	for p in "${PORTS[@]}"; do
		rm -rf "${BASE:?}/$p"
		write_conf "$p"
		start_node "$p" || die "node $p: cannot start it"
		addrs+=("$HOST:$p")
	done
	if ! timeout "$WAIT" redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
		>"$BASE/create.log" 2>&1 </dev/null; then
		cat "$BASE/create.log" >&2
		die "redis-cli --cluster create failed or took more than ${WAIT}s (log above, also in $BASE/create.log)"
	fi
	if ! wait_until "$WAIT" health; then
		die "created, but not healthy after ${WAIT}s: $(health || true)"
	fi
	touch "$BASE/created"
}

cmd_start() {
	local why p
	command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 ||
		die "redis-server and redis-cli are needed (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
	lock
	if why=$(health); then
		say "already running and healthy on $HOST:${PORTS[0]}-${PORTS[-1]}; nothing to do"
		return
	fi
	refuse_foreign "${PORTS[@]}"
	if [[ -f $BASE/created ]]; then
		say "not healthy ($why); starting the nodes that are down ..."
		local started=ok
		for p in "${PORTS[@]}"; do
			if ! answers "$p"; then
				if pid_of "$p" >/dev/null; then
					stop_nodes "$p" # alive but not answering: hung
				fi
				start_node "$p" || started=failed
			fi
		done
		if [[ $started == ok ]] && wait_until "$REPAIR_WAIT" health; then
			say "healthy again on $HOST:${PORTS[0]}-${PORTS[-1]}"
			return
		fi
		why=$(health || true)
		say "still not healthy after ${REPAIR_WAIT}s (${why:-a node did not start}); wiping it and creating it again"
	elif [[ -d $BASE ]]; then
		say "half-started or never formed ($why); wiping it and creating it again"
	fi
	stop_nodes "${PORTS[@]}"
	rm -rf "${BASE:?}"
	create
	say "running on $HOST:${PORTS[0]}-${PORTS[-1]}; GW_REDIS_URL=$(cluster_url)"
}

cmd_stop() {
	lock
	stop_nodes "${PORTS[@]}"
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
url) cluster_url ;;
*)
	warn "usage: $0 start|stop|status|url"
	exit 2
	;;
esac
