#!/usr/bin/env bash
# redis-sentinel.sh runs a local Redis with Sentinel on loopback, for
# development and for the tests that need one (DESIGN §7):
#
#   a primary on 127.0.0.1:7201 and its replica on 7202 (appendonly yes,
#   appendfsync always on both);
#   3 sentinels on 7211-7213 watching the master name "gw", quorum 2,
#   down-after-milliseconds 2000, failover-timeout 5000 (a failover takes a
#   few seconds);
#   files in ${GW_RUN_DIR:-<repo>/run}/redis-sentinel/<port>/.
#
# Usage: redis-sentinel.sh start|stop|status|url
#
#   start   makes it run and be healthy (the sentinels agree on the primary,
#           the other node replicates from it, CKQUORUM passes and every
#           sentinel sees the replica). Already healthy: nothing to do.
#           Created before but some processes down (a stop, a crash, a test
#           that killed the primary): they are started again from their files
#           and rejoin (a killed primary comes back as a replica of the one
#           the sentinels promoted). Anything else that is not healthy
#           (half-started, still broken after the restart): stopped, wiped and
#           created again from fresh config files (sentinels rewrite theirs),
#           with the data lost.
#   stop    shuts everything down (SHUTDOWN NOSAVE; sentinels first, so that
#           they do not fail over while the data nodes stop). Harmless when
#           nothing runs.
#   status  one line per process, then whether it is healthy; exits 0 only
#           when it is.
#   url     prints the GW_REDIS_URL for it (the Sentinel form: master_name=
#           and the sentinels' addresses, see deployments/README.md).
#
# start and stop wait while a test of internal/testenv kills nodes of the
# deployment (it holds ${TMPDIR:-/tmp}/gwtest-redis-127.0.0.1-<first port>.lock).
# Every wait is bounded by GW_SERVICES_WAIT seconds (default 90). The script
# only ever stops processes it started itself (their config file is under the
# run folder); a Redis of someone else on one of the ports is an error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_DIR=${GW_RUN_DIR:-$ROOT/run}
BASE=$RUN_DIR/redis-sentinel
WAIT=${GW_SERVICES_WAIT:-90}
HOST=127.0.0.1
MASTER=gw
DATA=(7201 7202)
SENTINELS=(7211 7212 7213)
ALL=("${DATA[@]}" "${SENTINELS[@]}")
# How long start waits for a restarted deployment to heal before it wipes it.
REPAIR_WAIT=$((WAIT < 30 ? WAIT : 30))

PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/opt/homebrew/sbin"

say() { printf 'redis-sentinel: %s\n' "$*"; }
warn() { printf 'redis-sentinel: %s\n' "$*" >&2; }
die() {
	warn "$*"
	exit 1
}

sentinel_url() {
	local u="redis://$HOST:${SENTINELS[0]}?master_name=$MASTER" p
	for p in "${SENTINELS[@]:1}"; do
		u+="&addr=$HOST:$p"
	done
	printf '%s\n' "$u"
}

is_sentinel() { [[ $1 == 721? ]]; }

# The helpers both local Redis scripts share: cli, answers, field, ours,
# tcp_used, pid_of, wait_until, stop_nodes, lock, refuse_foreign.
LOCK_NAME=redis-sentinel
LOCK_PORT=${SENTINELS[0]}
# shellcheck source=redis-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/redis-lib.sh"

conf_of() {
	if is_sentinel "$1"; then
		printf '%s/%s/sentinel.conf' "$BASE" "$1"
	else
		printf '%s/%s/redis.conf' "$BASE" "$1"
	fi
}

# after NAME reads redis-cli's flattened reply on stdin and prints every value
# that follows a line NAME.
after() { awk -v k="$1" 'prev == k { print } { prev = $0 }'; }

# health succeeds when everything is healthy, and otherwise prints why not.
health() {
	local p s addr primary="" mport other="" flags
	for p in "${ALL[@]}"; do
		if ! answers "$p"; then
			echo "$p does not answer"
			return 1
		fi
	done
	for s in "${SENTINELS[@]}"; do
		addr=$(cli "$s" sentinel get-master-addr-by-name "$MASTER" | paste -sd: || true)
		if [[ -z $addr ]]; then
			echo "sentinel $s does not know the master $MASTER"
			return 1
		fi
		if [[ -z $primary ]]; then
			primary=$addr
		elif [[ $addr != "$primary" ]]; then
			echo "the sentinels disagree on the primary ($primary, $addr)"
			return 1
		fi
	done
	mport=${primary##*:}
	for p in "${DATA[@]}"; do
		[[ $p == "$mport" ]] || other=$p
	done
	if [[ $primary != "$HOST:${DATA[0]}" && $primary != "$HOST:${DATA[1]}" ]]; then
		echo "the sentinels name $primary as the primary, not one of ours"
		return 1
	fi
	if [[ $(field "$mport" replication role) != master ]]; then
		echo "$mport is named the primary but is not a master"
		return 1
	fi
	if [[ $(field "$other" replication role) != slave ||
		$(field "$other" replication master_port) != "$mport" ||
		$(field "$other" replication master_link_status) != up ]]; then
		echo "$other does not replicate from $mport"
		return 1
	fi
	for s in "${SENTINELS[@]}"; do
		if ! cli "$s" sentinel ckquorum "$MASTER" | grep -q "^OK ${#SENTINELS[@]} usable"; then
			echo "sentinel $s: CKQUORUM does not see ${#SENTINELS[@]} usable sentinels"
			return 1
		fi
		flags=$(cli "$s" sentinel master "$MASTER" | after flags || true)
		if [[ $flags != master ]]; then
			echo "sentinel $s: the primary's flags are ${flags:-unknown}"
			return 1
		fi
		if ! cli "$s" sentinel replicas "$MASTER" | after name | grep -qx "$HOST:$other"; then
			echo "sentinel $s does not see the replica $other"
			return 1
		fi
		flags=$(cli "$s" sentinel replicas "$MASTER" | after flags | sort -u | paste -sd' ' || true)
		if [[ $flags != slave ]]; then
			echo "sentinel $s: replica flags are ${flags:-unknown}"
			return 1
		fi
	done
}

write_confs() {
	local p dir
	for p in "${DATA[@]}"; do
		dir=$BASE/$p
		mkdir -p "$dir"
		{
			echo "# Written by deployments/local/redis-sentinel.sh; wiped with the rest."
			echo "# The sentinels rewrite replicaof here after a failover."
			node_conf "$p"
		} >"$dir/redis.conf"
		if [[ $p != "${DATA[0]}" ]]; then
			printf 'replicaof %s %s\n' "$HOST" "${DATA[0]}" >>"$dir/redis.conf"
		fi
	done
	for p in "${SENTINELS[@]}"; do
		dir=$BASE/$p
		mkdir -p "$dir"
		# Sentinels rewrite this file (known replicas, sentinels, epochs).
		cat >"$dir/sentinel.conf" <<-EOF
			port $p
			bind $HOST
			daemonize yes
			dir $dir
			pidfile $dir/redis.pid
			logfile $dir/sentinel.log
			sentinel resolve-hostnames no
			sentinel monitor $MASTER $HOST ${DATA[0]} 2
			sentinel down-after-milliseconds $MASTER 2000
			sentinel failover-timeout $MASTER 5000
			sentinel parallel-syncs $MASTER 1
		EOF
	done
}

# start_one PORT starts the data node or sentinel on PORT (start_node).
start_one() {
	if is_sentinel "$1"; then
		start_node "$1" --sentinel
	else
		start_node "$1"
	fi
}

create() {
	local p
	say "creating a primary on $HOST:${DATA[0]}, a replica on ${DATA[1]} and sentinels on ${SENTINELS[0]}-${SENTINELS[-1]} (files in $BASE) ..."
	write_confs
	for p in "${DATA[@]}" "${SENTINELS[@]}"; do
		start_one "$p" || die "$p: cannot start it"
	done
	if ! wait_until "$WAIT" health; then
		die "started, but not healthy after ${WAIT}s: $(health || true)"
	fi
	touch "$BASE/created"
}

cmd_start() {
	local why p
	command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 ||
		die "redis-server and redis-cli are needed (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
	lock
	if why=$(health); then
		say "already running and healthy (sentinels on $HOST:${SENTINELS[0]}-${SENTINELS[-1]}); nothing to do"
		return
	fi
	refuse_foreign "${ALL[@]}"
	if [[ -f $BASE/created ]]; then
		say "not healthy ($why); starting what is down ..."
		local started=ok restarted=() primary
		# Data nodes first: a sentinel that starts before them may count the
		# primary as down for a moment.
		for p in "${DATA[@]}" "${SENTINELS[@]}"; do
			if ! answers "$p"; then
				if pid_of "$p" >/dev/null; then
					stop_nodes "$p" # alive but not answering: hung
				fi
				start_one "$p" || started=failed
				restarted+=("$p")
			fi
		done
		# A data node that comes back while the sentinels name the other one
		# (a killed primary) starts as a master of its own; the sentinels
		# would make it a replica within about 10 s, this does it at once.
		primary=$(cli "${SENTINELS[0]}" sentinel get-master-addr-by-name "$MASTER" | paste -sd: || true)
		for p in "${restarted[@]}"; do
			if ! is_sentinel "$p" && [[ -n $primary && $primary != "$HOST:$p" ]] &&
				[[ $(field "${primary##*:}" replication role) == master ]]; then
				say "$p: making it a replica of $primary, the primary the sentinels name"
				cli "$p" replicaof "$HOST" "${primary##*:}" >/dev/null || true
				cli "$p" config rewrite >/dev/null || true
			fi
		done
		if [[ $started == ok ]] && wait_until "$REPAIR_WAIT" health; then
			say "healthy again; primary $(cli "${SENTINELS[0]}" sentinel get-master-addr-by-name "$MASTER" | paste -sd:)"
			return
		fi
		why=$(health || true)
		say "still not healthy after ${REPAIR_WAIT}s (${why:-a process did not start}); wiping it and creating it again"
	elif [[ -d $BASE ]]; then
		say "half-started ($why); wiping it and creating it again"
	fi
	stop_nodes "${SENTINELS[@]}"
	stop_nodes "${DATA[@]}"
	rm -rf "${BASE:?}"
	create
	say "running; GW_REDIS_URL=$(sentinel_url)"
}

cmd_stop() {
	lock
	stop_nodes "${SENTINELS[@]}"
	stop_nodes "${DATA[@]}"
	say "stopped (nothing runs on the ports ${ALL[*]} that this script started)"
}

cmd_status() {
	local why
	status_nodes "${ALL[@]}"
	if why=$(health); then
		say "healthy; primary $(cli "${SENTINELS[0]}" sentinel get-master-addr-by-name "$MASTER" | paste -sd:)"
	else
		say "not healthy: $why"
		return 1
	fi
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
url) sentinel_url ;;
*)
	warn "usage: $0 start|stop|status|url"
	exit 2
	;;
esac
