#!/usr/bin/env bash
# servers.sh starts throwaway PostgreSQL and RabbitMQ servers for the tests.
#
#   scripts/servers.sh run -- CMD ARGS...   start servers, run CMD, stop them
#   scripts/servers.sh start DIR            start servers, write DIR/env
#   scripts/servers.sh stop DIR             stop servers started by "start DIR"
#
# CMD (or whoever sources DIR/env) gets:
#   RELAY_TEST_DATABASE_URL   admin URL, database "postgres", user "postgres"
#   RELAY_TEST_AMQP_URL       amqp://guest:guest@127.0.0.1:PORT/
#   RELAY_TEST_RABBITMQ_API   http://guest:guest@127.0.0.1:PORT (management)
#   RELAY_TEST_RABBITMQ_NODE  node name for "rabbitmqctl -n"; empty when the
#                             broker is external
#
# A server whose variable is already set is used as it is and not started:
# RELAY_TEST_DATABASE_URL for PostgreSQL, RELAY_TEST_AMQP_URL (with
# RELAY_TEST_RABBITMQ_API) for RabbitMQ. The throwaway servers listen on
# 127.0.0.1 only, on free ports, with all their files in one temporary
# directory that is removed when they stop. They keep PostgreSQL's durability
# defaults (fsync, synchronous_commit) because tests check crash behaviour.
#
# When run as root, the servers run as the "postgres" and "rabbitmq" users,
# and missing server packages are installed with apt-get.
#
# SERVERS_BROKER_CPUS and SERVERS_OTHER_CPUS (taskset lists, e.g. 0 and 1-3)
# pin the throwaway broker to the first, and the throwaway PostgreSQL and
# CMD to the second, as if the broker ran on a machine of its own. Servers
# named by the variables above are never pinned.
set -euo pipefail

readonly start_timeout=90 # seconds to wait for each server to be ready

log() { printf 'servers.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# pin_other prefixes a command that should run on SERVERS_OTHER_CPUS.
pin_other=()
if [ -n "${SERVERS_OTHER_CPUS:-}" ]; then pin_other=(taskset -c "$SERVERS_OTHER_CPUS"); fi


# as_user USER CMD... runs CMD as USER when we are root, else as ourselves.
as_user() {
	local user=$1; shift
	if is_root; then runuser -u "$user" -- "$@"; else "$@"; fi
}

# free_port prints a TCP port on 127.0.0.1 that nothing listens on and that
# this script has not handed out yet, below the kernel's range of ephemeral
# ports: a port in that range can be held by any outgoing connection, and
# the server's bind then fails with EADDRINUSE. Another process may still
# take it before the server binds it; the servers then fail to start,
# loudly.
used_ports=" "
free_port() {
	local port i low=32768
	if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
		read -r low _ </proc/sys/net/ipv4/ip_local_port_range
	fi
	[ "$low" -gt 11000 ] || low=32768
	for i in $(seq 100); do
		port=$((10000 + RANDOM % (low - 10000)))
		case $used_ports in *" $port "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			used_ports="$used_ports$port "
			echo "$port"
			return
		fi
	done
	die "no free TCP port found"
}

# wait_pid PID SECONDS waits for a process that is not our child to exit.
wait_pid() {
	local pid=$1 i
	for i in $(seq $(($2 * 10))); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

# ---- Installation -----------------------------------------------------------

pg_bindir() {
	local d
	if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
		dirname "$(readlink -f "$(command -v pg_ctl)")"
		return
	fi
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; fi
}

# rabbit_bindir prefers Debian's real scripts in /usr/lib/rabbitmq/bin over
# the /usr/sbin wrappers: those switch to the rabbitmq user through "su",
# cd to /var/lib/rabbitmq, and, when already running as rabbitmq, redirect
# the server's output to the system node's /var/log/rabbitmq/startup_log.
rabbit_bindir() {
	if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
		echo /usr/lib/rabbitmq/bin
	elif command -v rabbitmq-server >/dev/null; then
		dirname "$(readlink -f "$(command -v rabbitmq-server)")"
	fi
}

# install_packages installs PKGS with apt-get without letting their init
# scripts start the system-wide services (policy-rc.d exit 101 = "forbidden").
install_packages() {
	is_root || die "$* not installed; install them (e.g. apt-get install $*) or set RELAY_TEST_DATABASE_URL / RELAY_TEST_AMQP_URL"
	command -v apt-get >/dev/null || die "$* not installed and apt-get not available; install them by hand"
	log "installing $* with apt-get"
	local policy=/usr/sbin/policy-rc.d made_policy=
	if [ ! -e $policy ]; then
		printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy && made_policy=1
	fi
	local rc=0
	{ DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; } || rc=$?
	[ -z "$made_policy" ] || rm -f $policy
	[ $rc = 0 ] || die "apt-get install $* failed"
}

# ---- PostgreSQL -------------------------------------------------------------

# pg_start DIR starts PostgreSQL with its data in DIR and sets
# RELAY_TEST_DATABASE_URL.
pg_start() {
	local dir=$1 bin port
	bin=$(pg_bindir)
	[ -n "$bin" ] || { install_packages postgresql; bin=$(pg_bindir); }
	[ -n "$bin" ] || die "initdb not found after installing postgresql"
	mkdir -p "$dir/sock"
	if is_root; then chown -R postgres: "$dir"; fi
	if ! as_user postgres "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
		--locale=C --no-sync >"$dir/initdb.log" 2>&1; then
		cat "$dir/initdb.log" >&2
		die "initdb failed"
	fi
	port=$(free_port)
	# -w waits until the server accepts connections (pg_isready's check).
	if ! as_user postgres "${pin_other[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t $start_timeout \
		-o "-p $port -k $dir/sock -c listen_addresses=127.0.0.1 -c max_connections=300 -c wal_level=logical -c max_replication_slots=200 -c max_wal_senders=200 -c log_min_messages=warning" \
		start >"$dir/pg_ctl.log" 2>&1; then
		cat "$dir/pg_ctl.log" "$dir/postgres.log" >&2 || true
		die "PostgreSQL did not start on port $port"
	fi
	echo "$bin" >"$dir/bindir"
	RELAY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# pg_stop DIR stops the PostgreSQL started by pg_start DIR.
pg_stop() {
	local dir=$1 pid
	[ -f "$dir/data/postmaster.pid" ] || return 0
	if ! as_user postgres "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
		pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)
		log "pg_ctl stop failed; killing postmaster $pid"
		[ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true
	fi
}

# ---- RabbitMQ ---------------------------------------------------------------

# rabbitctl DIR ARGS... runs rabbitmqctl against the node in DIR.
rabbitctl() {
	local dir=$1; shift
	local -a env
	mapfile -t env <"$dir/env.list"
	as_user "$(cat "$dir/user")" env "${env[@]}" "$(cat "$dir/bindir")/rabbitmqctl" \
		-n "$(cat "$dir/node")" "$@"
}

# rabbit_start DIR starts a RabbitMQ node with its files in DIR, in the
# background; rabbit_wait DIR waits for it and sets the RELAY_TEST_ variables.
rabbit_start() {
	local dir=$1 bin user node amqp_port dist_port api_port home
	bin=$(rabbit_bindir)
	[ -n "$bin" ] || { install_packages rabbitmq-server; bin=$(rabbit_bindir); }
	[ -n "$bin" ] || die "rabbitmq-server not found after installing rabbitmq-server"
	user=$(id -un)
	home=$HOME
	if is_root; then
		# The node and every rabbitmqctl must share an Erlang cookie. Root's
		# rabbitmqctl is Debian's wrapper, which runs as rabbitmq with
		# HOME=/var/lib/rabbitmq, so use that home and its cookie.
		user=rabbitmq
		home=$(getent passwd rabbitmq | cut -d: -f6)
	fi
	node="relaytest-$$@localhost"
	amqp_port=$(free_port)
	dist_port=$(free_port)
	api_port=$(free_port)
	mkdir -p "$dir/mnesia" "$dir/log"
	cat >"$dir/rabbitmq.conf" <<-CONF
		listeners.tcp.default = 127.0.0.1:$amqp_port
		management.tcp.ip = 127.0.0.1
		management.tcp.port = $api_port
		# The management API lists a new connection only after the node has
		# emitted its statistics (collect_statistics_interval, default 5 s)
		# and the management agent has collected them (every smallest
		# sample interval below, default 5 s). Make both short so that
		# testenv.Broker.CloseConnections sees connections within ~1 s.
		collect_statistics_interval = 500
		management.rates_mode = none
		management.sample_retention_policies.global.minute = 1
		management.sample_retention_policies.global.hour = 60
		management.sample_retention_policies.basic.minute = 1
		management.sample_retention_policies.basic.hour = 60
		management.sample_retention_policies.detailed.10 = 1
		log.console = false
		log.file.level = info
	CONF
	echo '[rabbitmq_management].' >"$dir/enabled_plugins"
	: >"$dir/rabbitmq-env.conf" # keeps /etc/rabbitmq/rabbitmq-env.conf out
	cat >"$dir/env.list" <<-ENV
		HOME=$home
		RABBITMQ_NODENAME=$node
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
		RABBITMQ_NODE_PORT=$amqp_port
		RABBITMQ_DIST_PORT=$dist_port
		RABBITMQ_MNESIA_BASE=$dir/mnesia
		RABBITMQ_LOG_BASE=$dir/log
		RABBITMQ_PID_FILE=$dir/rabbit.pid
		RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
		RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
		RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
		RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
		RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}
		ERL_EPMD_ADDRESS=127.0.0.1
	ENV
	echo "$bin" >"$dir/bindir"
	echo "$user" >"$dir/user"
	echo "$node" >"$dir/node"
	echo "$amqp_port $api_port" >"$dir/ports"
	if is_root; then chown -R rabbitmq: "$dir"; fi
	# epmd is started by the first node that needs it and outlives it; note
	# whether it ran before so that rabbit_stop can stop one we started.
	if epmd -names >/dev/null 2>&1; then echo yes >"$dir/epmd_was_running"; fi

	local -a env
	mapfile -t env <"$dir/env.list"
	# In its own session, so that a Ctrl-C meant for the test command does not
	# reach it and rabbit_stop can kill the whole process group at once.
	# (-detached would lose the server's early output and its exit status.)
	local -a launch=(env "${env[@]}" "$bin/rabbitmq-server")
	if is_root; then launch=(runuser -u "$user" -- "${launch[@]}"); fi
	if [ -n "${SERVERS_BROKER_CPUS:-}" ]; then launch=(taskset -c "$SERVERS_BROKER_CPUS" "${launch[@]}"); fi
	setsid "${launch[@]}" >"$dir/server.out" 2>&1 </dev/null &
	echo $! >"$dir/launcher.pid"
}

rabbit_wait() {
	local dir=$1 amqp_port api_port
	# "wait PIDFILE" waits for the node to write its pid file, then for the
	# broker to boot; await_startup alone gives up at once if the node has not
	# registered with epmd yet.
	if ! rabbitctl "$dir" wait "$dir/rabbit.pid" --timeout $start_timeout >"$dir/await.out" 2>&1; then
		cat "$dir/await.out" "$dir/server.out" >&2 || true
		tail -n 50 "$dir"/log/*.log >&2 || true
		die "RabbitMQ node $(cat "$dir/node") did not start"
	fi
	read -r amqp_port api_port <"$dir/ports"
	# The broker is up; the management listener follows within moments.
	local i
	for i in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$api_port") 2>/dev/null; then break; fi
		[ "$i" -lt 100 ] || die "RabbitMQ management API not listening on port $api_port"
		sleep 0.1
	done
	RELAY_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$amqp_port/"
	RELAY_TEST_RABBITMQ_API="http://guest:guest@127.0.0.1:$api_port"
	RELAY_TEST_RABBITMQ_NODE=$(cat "$dir/node")
}

# rabbit_stop DIR kills the node started by rabbit_start DIR. A graceful
# "rabbitmqctl stop" takes 8 s or more; a throwaway node has nothing worth
# the wait, and its files are deleted next.
rabbit_stop() {
	local dir=$1 pgid
	pgid=$(cat "$dir/launcher.pid" 2>/dev/null || true)
	[ -n "$pgid" ] || return 0
	kill -KILL -- "-$pgid" 2>/dev/null || true
	wait "$pgid" 2>/dev/null || true # reaps it when it is our child ("run")
	wait_pid "$pgid" 10 || log "RabbitMQ launcher $pgid did not exit"
	if [ ! -f "$dir/epmd_was_running" ]; then
		# Refused (harmlessly) while other nodes are registered.
		epmd -kill >/dev/null 2>&1 || true
	fi
}

# ---- Commands ---------------------------------------------------------------

# start_servers DIR starts what the environment does not name already.
start_servers() {
	local dir=$1 t0=$SECONDS
	if [ -n "${SERVERS_BROKER_CPUS:-}${SERVERS_OTHER_CPUS:-}" ] &&
		{ [ -z "${SERVERS_BROKER_CPUS:-}" ] || [ -z "${SERVERS_OTHER_CPUS:-}" ]; }; then
		die "set both SERVERS_BROKER_CPUS and SERVERS_OTHER_CPUS, or neither (pinning needs two CPUs)"
	fi
	if [ -n "${SERVERS_BROKER_CPUS:-}${SERVERS_OTHER_CPUS:-}" ] &&
		[ -n "${RELAY_TEST_AMQP_URL:-}${RELAY_TEST_DATABASE_URL:-}" ]; then
		die "SERVERS_BROKER_CPUS and SERVERS_OTHER_CPUS pin only servers started here; unset RELAY_TEST_AMQP_URL and RELAY_TEST_DATABASE_URL"
	fi
	mkdir -p "$dir"
	chmod 755 "$dir" # the server users must reach their subdirectories
	if [ -z "${RELAY_TEST_AMQP_URL:-}" ]; then
		mkdir -p "$dir/rabbit"
		rabbit_start "$dir/rabbit"
	else
		log "using the RabbitMQ at RELAY_TEST_AMQP_URL"
		if [ -z "${RELAY_TEST_RABBITMQ_API:-}" ]; then
			RELAY_TEST_RABBITMQ_API=http://guest:guest@127.0.0.1:15672
			log "warning: RELAY_TEST_RABBITMQ_API unset; using $RELAY_TEST_RABBITMQ_API (needs the rabbitmq_management plugin)"
		fi
		RELAY_TEST_RABBITMQ_NODE=${RELAY_TEST_RABBITMQ_NODE:-}
	fi
	if [ -z "${RELAY_TEST_DATABASE_URL:-}" ]; then
		mkdir -p "$dir/pg"
		pg_start "$dir/pg" # while RabbitMQ boots
	else
		log "using the PostgreSQL at RELAY_TEST_DATABASE_URL"
	fi
	if [ -d "$dir/rabbit" ]; then rabbit_wait "$dir/rabbit"; fi
	export RELAY_TEST_DATABASE_URL RELAY_TEST_AMQP_URL RELAY_TEST_RABBITMQ_API RELAY_TEST_RABBITMQ_NODE
	log "servers ready in $((SECONDS - t0)) s"
}

stop_servers() {
	local dir=$1
	if [ -d "$dir/rabbit" ]; then rabbit_stop "$dir/rabbit"; fi
	if [ -d "$dir/pg" ]; then pg_stop "$dir/pg"; fi
	rm -rf "$dir"
}

cmd_run() {
	[ "${1:-}" = -- ] && shift
	[ $# -gt 0 ] || die "usage: $0 run -- CMD ARGS..."
	# A global with a name no function uses for a local: the EXIT trap runs
	# in the scope of whatever function called exit.
	SERVERS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/relaytest.XXXXXX")
	# The reaper stops the servers if this script dies without running its
	# EXIT trap (SIGKILL, e.g. from a CI timeout killing the process group):
	# both servers run in sessions of their own and would outlive it.
	setsid "$BASH" "$0" reap $$ "$SERVERS_DIR" </dev/null >/dev/null 2>&1 &
	REAPER_PID=$!
	trap 'rc=$?; trap - EXIT INT TERM; kill "$REAPER_PID" 2>/dev/null; stop_servers "$SERVERS_DIR"; exit $rc' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	start_servers "$SERVERS_DIR"
	local rc=0
	"${pin_other[@]}" "$@" || rc=$?
	exit $rc
}

cmd_start() {
	local dir=${1:?usage: $0 start DIR}
	[ ! -e "$dir/env" ] || die "$dir/env exists; run \"$0 stop $dir\" first"
	dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
	SERVERS_DIR=$dir/servers # global, as in cmd_run
	trap 'rc=$?; trap - EXIT INT TERM; [ $rc = 0 ] || stop_servers "$SERVERS_DIR"; exit $rc' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	start_servers "$SERVERS_DIR"
	{
		for v in RELAY_TEST_DATABASE_URL RELAY_TEST_AMQP_URL RELAY_TEST_RABBITMQ_API RELAY_TEST_RABBITMQ_NODE; do
			printf 'export %s=%q\n' "$v" "${!v}"
		done
	} >"$dir/env"
	log "wrote $dir/env; stop with: $0 stop $dir"
}

cmd_stop() {
	local dir=${1:?usage: $0 stop DIR}
	[ -d "$dir/servers" ] || die "no servers started in $dir"
	stop_servers "$dir/servers"
	rm -f "$dir/env"
}

# cmd_reap PID DIR waits for process PID to end, then stops the servers in
# DIR, if they are still there.
cmd_reap() {
	trap '' INT HUP
	while kill -0 "$1" 2>/dev/null; do sleep 1; done
	if [ -d "$2" ]; then stop_servers "$2"; fi
}

case ${1:-} in
run) shift; cmd_run "$@" ;;
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
reap) shift; cmd_reap "$@" ;; # internal, see cmd_run
*) die "usage: $0 run -- CMD ARGS... | start DIR | stop DIR" ;;
esac
