# redis-lib.sh: the helpers redis-cluster.sh, redis-sentinel.sh and
# redis-shard.sh share, sourced by each. The script sets HOST, BASE (one folder per port, with
# the node's redis.pid), RUN_DIR, WAIT, LOCK_NAME and LOCK_PORT, and
# defines say, warn, die and conf_of PORT before sourcing it.

# cli PORT ARGS... runs redis-cli against the node on PORT.
cli() {
	local port=$1
	shift
	timeout 5 redis-cli -h "$HOST" -p "$port" "$@" 2>/dev/null </dev/null | tr -d '\r'
}

# answers PORT succeeds when the node on PORT answers PING.
answers() { [[ $(cli "$1" ping || true) == PONG ]]; }

# field PORT SECTION NAME prints the value of NAME in INFO SECTION.
field() { cli "$1" info "$2" | sed -n "s/^$3://p" || true; }

# ours PORT succeeds when the node on PORT runs from this script's config.
ours() { [[ $(field "$1" server config_file) == "$(conf_of "$1")" ]]; }

# tcp_used PORT succeeds when anything accepts connections on PORT.
tcp_used() { timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# pid_of PORT prints the pid in the node's pid file when that process is a
# redis-server (or sentinel) on PORT (a pid file left by a killed node
# names nothing).
pid_of() {
	local f=$BASE/$1/redis.pid pid
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -Eq "redis-(server|sentinel).*:$1" || return 1
	printf '%s\n' "$pid"
}

# wait_until SECONDS CMD... runs CMD until it succeeds, for at most
# SECONDS.
wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.3
	done
}

# stop_nodes PORT... stops the processes on those ports that this script
# started: it asks them all first, then waits for each to be gone.
stop_nodes() {
	local port pid pids=()
	for port in "$@"; do
		pid=$(pid_of "$port" || true)
		if answers "$port"; then
			if ! ours "$port"; then
				warn "$port: a Redis that this script did not start; left alone"
				pids+=("skip")
				continue
			fi
			cli "$port" shutdown nosave >/dev/null || true
		elif [[ -n $pid ]]; then
			# Not answering, but alive (stopped, or hung): end it.
			kill -TERM "$pid" 2>/dev/null || true
			kill -CONT "$pid" 2>/dev/null || true
		fi
		pids+=("${pid:--}")
	done
	local i=0
	for port in "$@"; do
		pid=${pids[i]}
		i=$((i + 1))
		[[ $pid == skip ]] && continue
		if [[ $pid != - ]] && ! wait_until "$WAIT" bash -c "! kill -0 $pid 2>/dev/null"; then
			warn "$port: pid $pid still alive after ${WAIT}s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		if ! wait_until "$WAIT" bash -c "! timeout 3 bash -c 'exec 3<>/dev/tcp/$HOST/$port' 2>/dev/null"; then
			die "$port: still listening after ${WAIT}s"
		fi
		rm -f "$BASE/$port/redis.pid"
	done
}

# lock keeps two runs of the script apart, and waits while a test holds
# the deployment to kill nodes in it (internal/testenv takes that lock
# exclusively; GW_TESTENV_LOCK_HELD=1 is the test itself restoring).
lock() {
	mkdir -p "$RUN_DIR"
	command -v flock >/dev/null 2>&1 || return 0
	exec 9>"$RUN_DIR/$LOCK_NAME.lock"
	flock -w "$WAIT" 9 || die "another $LOCK_NAME.sh still runs after ${WAIT}s"
	if [[ -z ${GW_TESTENV_LOCK_HELD:-} ]]; then
		local test_lock=${TMPDIR:-/tmp}/gwtest-redis-$HOST-$LOCK_PORT.lock
		exec 8>>"$test_lock" 2>/dev/null || return 0 # not ours to open: no test of ours holds it
		if ! flock -n -s 8; then
			say "a test is killing nodes of it; waiting for it to end (at most ${WAIT}s) ..."
			flock -w "$WAIT" -s 8 || die "a test still holds $test_lock after ${WAIT}s"
		fi
	fi
}

# refuse_foreign PORT... dies when one of the ports is used by something
# else.
refuse_foreign() {
	local p cf
	for p in "$@"; do
		if answers "$p"; then
			if ! ours "$p"; then
				cf=$(field "$p" server config_file)
				die "port $p: a Redis that this script did not start (config file: ${cf:-none}); if another checkout's script started it, run that one (or set GW_RUN_DIR to its run folder), otherwise stop it or free the port"
			fi
		elif tcp_used "$p" && ! pid_of "$p" >/dev/null; then
			# (A node of ours that hangs is stopped and started again.)
			die "port $p: in use by something that is not a Redis answering PING; free the port"
		fi
	done
}

# node_conf PORT prints the settings every data node of these scripts
# shares: loopback only, a daemon whose files are in $BASE/PORT, every
# write fsynced before it is acknowledged (appendfsync always, as §7a's
# durable Redis), no eviction. The script adds its own (cluster,
# replicaof).
node_conf() {
	local dir=$BASE/$1
	cat <<-EOF
		port $1
		bind $HOST
		protected-mode yes
		daemonize yes
		dir $dir
		pidfile $dir/redis.pid
		logfile $dir/redis.log
		appendonly yes
		appendfsync always
		save ""
		maxmemory-policy noeviction
	EOF
}

# start_node PORT [ARGS...] starts the node (or sentinel) on PORT from its
# config (conf_of PORT) with ARGS, and waits until it answers.
start_node() {
	local port=$1 dir=$BASE/$1
	shift
	# 8>&- 9>&-: the daemon must not inherit (and hold forever) the locks of
	# lock().
	if ! redis-server "$(conf_of "$port")" "$@" >"$dir/start.log" 2>&1 </dev/null 8>&- 9>&-; then
		warn "$port: redis-server failed: $(tail -n 3 "$dir/start.log" "$dir/redis.log" 2>/dev/null)"
		return 1
	fi
	if ! wait_until "$WAIT" answers "$port"; then
		warn "$port: not answering after ${WAIT}s; see the log in $dir"
		return 1
	fi
}

# status_nodes PORT... prints a line for each: up (its role, pid, and
# whether this script started it) or down.
status_nodes() {
	local p role
	for p in "$@"; do
		if answers "$p"; then
			role=$(field "$p" server redis_mode)
			[[ $role == sentinel ]] || role=$(field "$p" replication role)
			printf '%s:%s  up    %-8s pid %s%s\n' "$HOST" "$p" "$role" \
				"$(field "$p" server process_id)" "$(ours "$p" || echo '  (not started by this script)')"
		else
			printf '%s:%s  down\n' "$HOST" "$p"
		fi
	done
}
