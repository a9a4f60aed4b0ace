#!/usr/bin/env bash
# services.sh makes RabbitMQ (with the management plugin) and Redis run on
# loopback, for local development and for `make test`.
#
# For each service:
#   - already reachable              -> nothing to do (one line of output);
#   - installed but not running      -> start it, bound to 127.0.0.1;
#   - missing, Debian/Ubuntu as root -> apt-get install it, then start it;
#   - missing otherwise              -> print what to install and exit 1.
# The RabbitMQ management plugin is enabled when it does not answer.
#
# GW_AMQP_URL, GW_AMQP_MGMT_URL and GW_REDIS_URL are honoured: when one points
# to a host other than loopback, this script only checks that it is reachable
# and never tries to start or change anything there.
#
# It also installs helm (HELM_VERSION, pinned below) into <repo>/bin when no
# helm is in PATH or there: `go test ./deployments/` renders and lints the
# chart deployments/helm/iotgw with it (the test never installs anything).
#
# Every wait is bounded by GW_SERVICES_WAIT seconds (default 90). Running it
# again is harmless. Redis started by this script keeps its files in
# <repo>/run/redis (or $GW_RUN_DIR/redis).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_DIR=${GW_RUN_DIR:-$ROOT/run}
WAIT=${GW_SERVICES_WAIT:-90}

AMQP_URL=${GW_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
MGMT_URL=${GW_AMQP_MGMT_URL:-http://guest:guest@127.0.0.1:15672}
REDIS_URL=${GW_REDIS_URL:-redis://127.0.0.1:6379/0}

# RabbitMQ and Redis install their servers in sbin folders that are often not
# in a normal user's PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/opt/homebrew/sbin:/usr/lib/rabbitmq/bin"

say() { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
die() {
	warn "$*"
	exit 1
}

# hostport URL DEFAULT_PORT prints "host port" of URL.
hostport() {
	local rest=${1#*://} host port
	rest=${rest%%/*}
	rest=${rest%%\?*}
	rest=${rest##*@}
	if [[ $rest == \[* ]]; then # [ipv6]:port
		host=${rest%%]*}
		host=${host#[}
		port=${rest#*]}
	else
		host=${rest%%:*}
		port=${rest#"$host"}
	fi
	port=${port#:}
	printf '%s %s\n' "${host:-127.0.0.1}" "${port:-$2}"
}

is_loopback() {
	case $1 in
	127.* | localhost | ::1 | 0:0:0:0:0:0:0:1) return 0 ;;
	*) return 1 ;;
	esac
}

# tcp_up HOST PORT succeeds when something accepts TCP connections there.
tcp_up() {
	local host=$1
	[[ $host == *:* ]] && host="[$host]" # bash wants brackets around IPv6
	if command -v timeout >/dev/null 2>&1; then
		timeout 3 bash -c "exec 3<>/dev/tcp/$host/$2" 2>/dev/null
	else
		bash -c "exec 3<>/dev/tcp/$host/$2" 2>/dev/null
	fi
}

# http_up URL succeeds when an HTTP server answers at URL (any status).
http_up() {
	if command -v curl >/dev/null 2>&1; then
		local code
		code=$(curl -s -o /dev/null --max-time 3 -w '%{http_code}' "$1" 2>/dev/null) || true
		[[ -n $code && $code != 000 ]]
	else
		local hp
		hp=$(hostport "$1" 80)
		tcp_up ${hp}
	fi
}

# wait_for DESCRIPTION COMMAND... retries COMMAND each second for WAIT seconds.
wait_for() {
	local what=$1 deadline=$((SECONDS + WAIT))
	shift
	until "$@"; do
		if ((SECONDS >= deadline)); then
			return 1
		fi
		sleep 1
	done
	say "$what: up after $((SECONDS - deadline + WAIT))s"
}

read -r AMQP_HOST AMQP_PORT < <(hostport "$AMQP_URL" 5672)
read -r MGMT_HOST MGMT_PORT < <(hostport "$MGMT_URL" 15672)
read -r REDIS_HOST REDIS_PORT < <(hostport "$REDIS_URL" 6379)
[[ $AMQP_URL == amqps://* ]] && read -r AMQP_HOST AMQP_PORT < <(hostport "$AMQP_URL" 5671)
MGMT_BASE=${MGMT_URL%/}

failed=0

# --- What is there, what is missing -----------------------------------------

rabbit_state=running # running | remote-down | start | missing
redis_state=running

if ! tcp_up "$AMQP_HOST" "$AMQP_PORT"; then
	if ! is_loopback "$AMQP_HOST"; then
		rabbit_state=remote-down
	elif command -v rabbitmq-server >/dev/null 2>&1; then
		rabbit_state=start
	else
		rabbit_state=missing
	fi
fi
if ! tcp_up "$REDIS_HOST" "$REDIS_PORT"; then
	if ! is_loopback "$REDIS_HOST"; then
		redis_state=remote-down
	elif command -v redis-server >/dev/null 2>&1; then
		redis_state=start
	else
		redis_state=missing
	fi
fi

# --- Install what is missing -------------------------------------------------

if [[ $rabbit_state == missing || $redis_state == missing ]]; then
	apt_pkgs="" brew_pkgs="" dnf_pkgs=""
	if [[ $rabbit_state == missing ]]; then
		apt_pkgs+=" rabbitmq-server" brew_pkgs+=" rabbitmq" dnf_pkgs+=" rabbitmq-server"
	fi
	if [[ $redis_state == missing ]]; then
		apt_pkgs+=" redis-server" brew_pkgs+=" redis" dnf_pkgs+=" redis"
	fi
	os_id="" os_like=""
	if [[ -r /etc/os-release ]]; then
		os_id=$(. /etc/os-release && printf '%s' "${ID:-}")
		os_like=$(. /etc/os-release && printf '%s' "${ID_LIKE:-}")
	fi
	if [[ $os_id == debian || $os_id == ubuntu || " $os_like " == *" debian "* || " $os_like " == *" ubuntu "* ]] &&
		[[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
		say "installing${apt_pkgs} with apt-get (this takes a minute) ..."
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq || die "apt-get update failed; install${apt_pkgs} by hand and run $0 again"
		# shellcheck disable=SC2086 # the package list is meant to split
		apt-get install -y -qq $apt_pkgs >/dev/null ||
			die "apt-get install${apt_pkgs} failed; install them by hand and run $0 again"
		# The packages may have started the services themselves.
		if [[ $rabbit_state == missing ]]; then
			rabbit_state=start
			tcp_up "$AMQP_HOST" "$AMQP_PORT" && rabbit_state=running
		fi
		if [[ $redis_state == missing ]]; then
			redis_state=start
			tcp_up "$REDIS_HOST" "$REDIS_PORT" && redis_state=running
		fi
	else
		warn "missing:${apt_pkgs}. Install, then run $0 again:"
		warn "  Debian/Ubuntu: sudo apt-get install -y${apt_pkgs}"
		warn "  macOS:         brew install${brew_pkgs}"
		warn "  Fedora:        sudo dnf install -y${dnf_pkgs}"
		exit 1
	fi
fi

# --- RabbitMQ ----------------------------------------------------------------

start_rabbitmq() {
	if command -v rabbitmq-diagnostics >/dev/null 2>&1 &&
		rabbitmq-diagnostics -q ping >/dev/null 2>&1 </dev/null; then
		die "rabbitmq: the node is running but nothing accepts connections on $AMQP_HOST:$AMQP_PORT; check its listeners (rabbitmq.conf) or GW_AMQP_URL"
	fi
	mkdir -p "$RUN_DIR"
	local log=$RUN_DIR/rabbitmq-start.log
	say "rabbitmq: starting on 127.0.0.1:$AMQP_PORT (rabbitmq-server -detached) ..."
	# Loopback only, unless the caller's environment says otherwise. These are
	# read by rabbitmq-server; rabbitmq.conf may still override them.
	export RABBITMQ_NODE_IP_ADDRESS=${RABBITMQ_NODE_IP_ADDRESS:-127.0.0.1}
	export RABBITMQ_NODE_PORT=${RABBITMQ_NODE_PORT:-$AMQP_PORT}
	export ERL_EPMD_ADDRESS=${ERL_EPMD_ADDRESS:-127.0.0.1}
	export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS:-} -rabbitmq_management tcp_config [{ip,\"127.0.0.1\"},{port,$MGMT_PORT}]"
	# The output goes to a file: the detached node must not hold our stdout.
	if ! rabbitmq-server -detached >"$log" 2>&1 </dev/null; then
		cat "$log" >&2
		die "rabbitmq: cannot start it (see above; as a normal user on Linux, try: sudo $0)"
	fi
	if ! wait_for rabbitmq tcp_up "$AMQP_HOST" "$AMQP_PORT"; then
		cat "$log" >&2
		die "rabbitmq: not listening on $AMQP_HOST:$AMQP_PORT after ${WAIT}s; see $log and RabbitMQ's log folder (/var/log/rabbitmq on Debian)"
	fi
}

# enable_management enables the management plugin on the running local node
# and waits until its HTTP API answers.
enable_management() {
	say "rabbitmq: enabling the management plugin ..."
	mkdir -p "$RUN_DIR"
	local log=$RUN_DIR/rabbitmq-plugins.log
	# A node started elsewhere would serve management on all interfaces: when
	# its configuration does not say where, ask for loopback. This lasts until
	# the node restarts; it has no effect if the plugin is already running.
	if rabbitmqctl eval 'case {application:get_env(rabbitmq_management, tcp_config), application:get_env(rabbitmq_management, listener)} of {undefined, undefined} -> application:set_env(rabbitmq_management, tcp_config, [{ip, "127.0.0.1"}, {port, '"$MGMT_PORT"'}], [{persistent, true}]); _ -> configured end.' >"$log" 2>&1 </dev/null; then
		:
	else
		warn "rabbitmq: could not ask for a loopback-only management listener (continuing; see $log)"
	fi
	if ! rabbitmq-plugins enable rabbitmq_management >"$log" 2>&1 </dev/null; then
		cat "$log" >&2
		die "rabbitmq: cannot enable the management plugin (as a normal user on Linux, try: sudo rabbitmq-plugins enable rabbitmq_management)"
	fi
	if ! wait_for "rabbitmq management" http_up "$MGMT_BASE/api/overview"; then
		die "rabbitmq: management API not answering at http://$MGMT_HOST:$MGMT_PORT after ${WAIT}s; see $log"
	fi
}

case $rabbit_state in
remote-down)
	warn "rabbitmq: cannot reach $AMQP_HOST:$AMQP_PORT (GW_AMQP_URL is not loopback, so nothing is started here)"
	failed=1
	;;
start)
	start_rabbitmq
	;;
esac

if [[ $rabbit_state != remote-down ]]; then
	if http_up "$MGMT_BASE/api/overview"; then
		say "rabbitmq: running on $AMQP_HOST:$AMQP_PORT, management on http://$MGMT_HOST:$MGMT_PORT"
	elif is_loopback "$AMQP_HOST" && is_loopback "$MGMT_HOST"; then
		enable_management
		say "rabbitmq: running on $AMQP_HOST:$AMQP_PORT, management on http://$MGMT_HOST:$MGMT_PORT"
	else
		say "rabbitmq: running on $AMQP_HOST:$AMQP_PORT"
		warn "rabbitmq: management API not answering at http://$MGMT_HOST:$MGMT_PORT (GW_AMQP_MGMT_URL); stats and test cleanup will be limited"
	fi
fi

# --- Redis -------------------------------------------------------------------

start_redis() {
	local dir=$RUN_DIR/redis bind="127.0.0.1" major minor
	mkdir -p "$dir"
	# "-::1" (an optional IPv6 bind) needs Redis 6.2 or later.
	major=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\.\([0-9]*\).*/\1/p')
	minor=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\.\([0-9]*\).*/\2/p')
	if ((${major:-0} > 6 || (${major:-0} == 6 && ${minor:-0} >= 2))); then
		bind="127.0.0.1 -::1"
	fi
	say "redis: starting on 127.0.0.1:$REDIS_PORT (files in $dir) ..."
	# shellcheck disable=SC2086 # $bind is meant to split
	if ! redis-server --daemonize yes --bind $bind --port "$REDIS_PORT" \
		--dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" \
		>"$dir/start.log" 2>&1 </dev/null; then
		cat "$dir/start.log" >&2
		die "redis: cannot start it (see above and $dir/redis.log)"
	fi
	if ! wait_for redis tcp_up "$REDIS_HOST" "$REDIS_PORT"; then
		die "redis: not listening on $REDIS_HOST:$REDIS_PORT after ${WAIT}s; see $dir/redis.log"
	fi
}

case $redis_state in
remote-down)
	warn "redis: cannot reach $REDIS_HOST:$REDIS_PORT (GW_REDIS_URL is not loopback, so nothing is started here)"
	failed=1
	;;
start)
	start_redis
	say "redis: running on $REDIS_HOST:$REDIS_PORT"
	;;
running)
	say "redis: running on $REDIS_HOST:$REDIS_PORT"
	;;
esac

# --- helm (for the chart's test) ---------------------------------------------

# The version deployments/deployments_test.go names in its message; built
# from source through the Go module proxy (a few minutes the first time).
HELM_VERSION=v3.21.4

if command -v helm >/dev/null 2>&1; then
	say "helm: $(command -v helm)"
elif [[ -x $ROOT/bin/helm ]]; then
	say "helm: $ROOT/bin/helm"
elif command -v go >/dev/null 2>&1; then
	say "helm: installing helm $HELM_VERSION into $ROOT/bin (go install, a few minutes) ..."
	start=$SECONDS
	if GOBIN=$ROOT/bin go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; then
		say "helm: $ROOT/bin/helm, installed in $((SECONDS - start))s"
	else
		# Not fatal for the services: the chart's tests fail by themselves,
		# naming this command.
		warn "helm: go install failed; the chart's tests (go test ./deployments/) fail until helm is in PATH or $ROOT/bin"
	fi
else
	warn "helm: not found and no go to build it; install helm $HELM_VERSION into PATH (the chart's tests fail without it)"
fi

# --- MQTT.js (for the push server's WebSocket test) --------------------------

# pushserver/websocket_node_test.go runs MQTT.js under Node against the
# WebSocket listener, and devicesim/browser_test.go serves its browser
# bundle (dist/mqtt.min.js) to a page in Chromium; its npm packages are
# pinned in the lock file there.
MQTTJS_DIR=$ROOT/pushserver/testdata/mqttjs
if [[ -f $MQTTJS_DIR/node_modules/mqtt/package.json && $MQTTJS_DIR/node_modules/.package-lock.json -nt $MQTTJS_DIR/package-lock.json ]]; then
	say "mqtt.js: $MQTTJS_DIR/node_modules"
elif command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
	say "mqtt.js: npm ci in $MQTTJS_DIR ..."
	if npm ci --no-audit --no-fund --prefix "$MQTTJS_DIR" >/dev/null; then
		say "mqtt.js: installed"
	else
		# Not fatal for the services: the test fails by itself, naming the
		# command.
		warn "mqtt.js: npm ci failed; go test ./pushserver/ -run TestMQTTJS fails until it succeeds"
	fi
else
	warn "mqtt.js: node and npm not found; install Node.js 18 or later with npm (TestMQTTJS in ./pushserver fails without them)"
fi

# --- mosquitto_sub, curl and paho-mqtt (for the examples' test) -------------

# examples/examples_test.go runs examples/curl/send.sh (curl, mosquitto_sub)
# and the Python examples (paho-mqtt, Debian's python3-paho-mqtt for
# /usr/bin/python3); the test never installs them.
example_pkgs=""
command -v mosquitto_sub >/dev/null 2>&1 || example_pkgs+=" mosquitto-clients"
command -v curl >/dev/null 2>&1 || example_pkgs+=" curl"
if ! { [[ -n ${GW_PYTHON:-} ]] && "$GW_PYTHON" -c 'import paho.mqtt.client' 2>/dev/null; } &&
	! python3 -c 'import paho.mqtt.client' 2>/dev/null &&
	! /usr/bin/python3 -c 'import paho.mqtt.client' 2>/dev/null; then
	example_pkgs+=" python3-paho-mqtt"
fi
if [[ -z $example_pkgs ]]; then
	say "examples: mosquitto_sub, curl and paho-mqtt found"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
	say "examples: installing${example_pkgs} (apt-get install -y) ..."
	# shellcheck disable=SC2086 # a list of package names
	if DEBIAN_FRONTEND=noninteractive apt-get install -y -q $example_pkgs >/dev/null 2>&1 ||
		{ DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q $example_pkgs >/dev/null 2>&1; }; then
		say "examples: installed${example_pkgs}"
	else
		warn "examples: apt-get install${example_pkgs} failed; go test ./examples/ fails until they are installed"
	fi
else
	warn "examples: missing${example_pkgs}; install them (as root: apt-get install -y${example_pkgs}) for go test ./examples/"
fi

# --- Chromium (for the dashboard's browser test) -----------------------------

# apiserver/dashboard_test.go drives the dashboard, and
# devicesim/browser_test.go a browser client, in a headless Chromium
# (Debian package chromium, found by testenv.Chromium); no test installs it.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 ||
	command -v google-chrome-stable >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; then
	say "chromium: found"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
	say "chromium: installing it (apt-get install -y chromium) ..."
	if DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ||
		{ DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; then
		say "chromium: installed"
	else
		warn "chromium: apt-get install failed; the dashboard test fails until chromium is installed"
	fi
else
	warn "chromium: not found; install it (as root: apt-get install -y chromium) for the dashboard test"
fi

# --- bash-completion (for devicesim's completion test) ------------------------

# devicesim/completion_test.go loads `devicesim completion bash` into bash;
# cobra's script needs the bash-completion package (_get_comp_words_by_ref),
# as it does on a user's machine. The test never installs it.
if [[ -f /usr/share/bash-completion/bash_completion ]]; then
	say "bash-completion: found"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
	say "bash-completion: installing it (apt-get install -y bash-completion) ..."
	if DEBIAN_FRONTEND=noninteractive apt-get install -y -q bash-completion >/dev/null 2>&1 ||
		{ DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q bash-completion >/dev/null 2>&1; }; then
		say "bash-completion: installed"
	else
		warn "bash-completion: apt-get install failed; devicesim's completion test fails until it is installed"
	fi
else
	warn "bash-completion: not found; install it (as root: apt-get install -y bash-completion) for devicesim's completion test"
fi

exit "$failed"
