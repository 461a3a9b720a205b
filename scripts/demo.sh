#!/usr/bin/env bash
# demo.sh runs the outbox quickstart (examples/quickstart/README.md): a sample
# order service writes events through the outbox, outbox-relay publishes them
# to RabbitMQ, a consumer receives and checks them.
#
#   scripts/demo.sh                       run until Ctrl-C, then summarize
#   DEMO_DURATION=30s scripts/demo.sh     stop by itself after 30 s (s, m or h)
#   DEMO_KILL_RELAY=1 scripts/demo.sh     also SIGKILL and restart the relay midway
#
# Servers: with RELAY_DATABASE_URL and RELAY_AMQP_URL both set, the demo uses
# those servers and leaves them running; it creates its own database
# (outbox_demo_<random>) and queue, and drops both at the end. Otherwise it
# starts throwaway servers with scripts/servers.sh and stops them at the end.
#
# Exit status: 0 every check passed; 1 an event was lost, unexpected or out of
# order, or a component failed; 130 stopped by Ctrl-C, checks passed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold= plain=; fi
say() { printf '%sdemo    : %s%s\n' "$bold" "$*" "$plain"; }
die() { say "error: $*" >&2; exit 1; }

# seconds DURATION prints DURATION (30, 30s, 2m, 1h) in seconds.
seconds() {
	[[ $1 =~ ^([0-9]+)([smh]?)$ ]] || die "DEMO_DURATION=$1: use a number of seconds, or e.g. 30s, 2m"
	local n=${BASH_REMATCH[1]}
	case ${BASH_REMATCH[2]} in m) n=$((n * 60)) ;; h) n=$((n * 3600)) ;; esac
	echo "$n"
}

# with_dbname URL NAME prints URL pointing at database NAME.
with_dbname() {
	local url=$1 name=$2 base query=
	case $url in
	postgres://* | postgresql://*)
		base=${url%%\?*}
		[ "$base" = "$url" ] || query="?${url#*\?}"
		local scheme=${base%%://*} rest=${base#*://}
		echo "$scheme://${rest%%/*}/$name$query"
		;;
	*) echo "$url dbname=$name" ;; # key=value DSN: the last dbname wins
	esac
}

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
	local stat
	stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
	[[ $stat != Z* ]]
}

# stop NAME PIDVAR SECONDS sends SIGTERM to the process in $PIDVAR, waits up
# to SECONDS for it (SIGKILL after that), reaps it, clears PIDVAR and leaves
# its exit status in $stopped_rc.
stop() {
	local name=$1 var=$2 limit=$3 pid i
	pid=${!var}
	stopped_rc=0
	[ -n "$pid" ] || return 0
	if alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < limit * 10; i++)); do
			alive "$pid" || break
			sleep 0.1
		done
		if alive "$pid"; then
			say "$name did not stop within ${limit}s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" 2>/dev/null || stopped_rc=$?
	printf -v "$var" '%s' ""
}

# ---- Cleanup ----------------------------------------------------------------

tmp= servers= admin_url= demo_db= queue= interrupted=0
relay_pid= service_pid= consumer_pid=

# interrupted: the main loop notices and stops everything in order.
trap 'interrupted=1' INT TERM HUP

# check_interrupt ends the set-up early on Ctrl-C; cleanup does the rest.
check_interrupt() { [ "$interrupted" = 0 ] || exit 130; }

# cleanup runs on every exit. After a normal stop only the servers and
# files are left; on an error it also stops whatever still runs.
cleanup() {
	local rc=$?
	set +e
	trap '' INT TERM HUP # finish cleaning up; every step below is bounded
	stop service service_pid 10
	stop consumer consumer_pid 15
	stop relay relay_pid 35
	[ "$stopped_rc" = 0 ] || say "relay exited with status $stopped_rc; see $relay_log"
	if [ -n "$queue" ] && [ -z "$servers" ] && [ -x "$tmp/quickstart" ]; then
		"$tmp/quickstart" teardown -queue "$queue" || say "warning: could not delete queue $queue"
	fi
	if [ -n "$demo_db" ] && [ -z "$servers" ]; then
		psql "$admin_url" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $demo_db WITH (FORCE)" &&
			say "dropped database $demo_db" || say "warning: could not drop database $demo_db"
	fi
	# A failed "servers.sh start" has already stopped what it started.
	if [ -n "$servers" ] && [ -f "$servers/env" ]; then
		say "stopping the throwaway servers"
		scripts/servers.sh stop "$servers" || say "warning: scripts/servers.sh stop $servers failed"
	fi
	if [ -n "$tmp" ]; then
		if [ -s "$tmp/relay.log" ]; then
			rm -rf "$tmp/outbox-relay" "$tmp/quickstart" "$tmp/servers"
			say "relay log kept: $tmp/relay.log"
		else
			rm -rf "$tmp"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT

# ---- Configuration ----------------------------------------------------------

duration=0
[ -z "${DEMO_DURATION:-}" ] || duration=$(seconds "$DEMO_DURATION")
kill_relay=${DEMO_KILL_RELAY:-0}
command -v go >/dev/null || die "go not found in PATH"
command -v psql >/dev/null || die "psql not found in PATH (install the PostgreSQL client)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/outbox-demo.XXXXXX")
run_id=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
relay_log=$tmp/relay.log

# ---- 1. Servers -------------------------------------------------------------

if [ -n "${RELAY_DATABASE_URL:-}" ] && [ -n "${RELAY_AMQP_URL:-}" ]; then
	say "using the servers named by RELAY_DATABASE_URL and RELAY_AMQP_URL"
	admin_url=$RELAY_DATABASE_URL
	amqp_url=$RELAY_AMQP_URL
else
	say "starting throwaway PostgreSQL and RabbitMQ (scripts/servers.sh)"
	servers=$tmp/servers
	# When run as root, servers.sh runs the servers as the postgres and
	# rabbitmq users, who must be able to reach their directories inside
	# ours (mktemp -d makes it 0700).
	chmod 711 "$tmp"
	scripts/servers.sh start "$servers" || { check_interrupt; die "scripts/servers.sh start failed"; }
	# shellcheck source=/dev/null
	. "$servers/env"
	admin_url=$RELAY_TEST_DATABASE_URL
	amqp_url=$RELAY_TEST_AMQP_URL # the broker's default vhost
fi
check_interrupt
demo_db=outbox_demo_$run_id
queue=demo.orders.$run_id
psql "$admin_url" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $demo_db" || {
	demo_db=
	die "could not create database outbox_demo_$run_id"
}
say "created database $demo_db"

# Everything below reads these, like a real deployment would.
export RELAY_DATABASE_URL RELAY_AMQP_URL RELAY_LOG_FORMAT=text RELAY_TABLE=outbox RELAY_EXCHANGE= RELAY_HTTP_ADDR=
RELAY_DATABASE_URL=$(with_dbname "$admin_url" "$demo_db")
RELAY_AMQP_URL=$amqp_url
check_interrupt

# ---- 2. Build, migrate, start the relay -------------------------------------

say "building outbox-relay and examples/quickstart into $tmp"
go build -o "$tmp/outbox-relay" ./cmd/outbox-relay || die "go build ./cmd/outbox-relay failed"
go build -o "$tmp/quickstart" ./examples/quickstart || die "go build ./examples/quickstart failed"
check_interrupt

say "outbox-relay migrate"
"$tmp/outbox-relay" migrate || die "outbox-relay migrate failed"
"$tmp/quickstart" setup -queue "$queue" || die "quickstart setup failed"
check_interrupt

# Each long-running process gets its own session (setsid), so that a Ctrl-C
# reaches only this script, which then stops them in order: a relay that got
# the terminal's SIGINT and then our SIGTERM would take the second signal as
# "abort".
start_relay() {
	setsid "$tmp/outbox-relay" run >>"$relay_log" 2>&1 </dev/null &
	relay_pid=$!
}
start_relay
say "outbox-relay run started (pid $relay_pid); its log: $relay_log"
for ((i = 0; i < 50; i++)); do
	grep -q 'msg=started' "$relay_log" 2>/dev/null && break
	alive "$relay_pid" || break
	sleep 0.1
done
sed 's/^/relay   : /' "$relay_log"
alive "$relay_pid" || die "outbox-relay exited at start; see $relay_log"
check_interrupt

# ---- 3. The sample service and the consumer ----------------------------------

setsid "$tmp/quickstart" consumer -queue "$queue" </dev/null &
consumer_pid=$!
setsid "$tmp/quickstart" service </dev/null &
service_pid=$!

if [ "$duration" -gt 0 ]; then
	say "running for ${duration}s (Ctrl-C stops earlier)"
else
	say "running until Ctrl-C"
fi
kill_at=-1
if [ "$kill_relay" = 1 ]; then
	kill_at=$((duration > 0 ? duration / 2 : 10))
	say "will SIGKILL the relay after ${kill_at}s and restart it"
fi

failed=0 t0=$SECONDS
while [ "$interrupted" = 0 ]; do
	elapsed=$((SECONDS - t0))
	[ "$duration" -eq 0 ] || [ "$elapsed" -lt "$duration" ] || break
	if [ "$kill_at" -ge 0 ] && [ "$elapsed" -ge "$kill_at" ]; then
		kill_at=-1
		say "SIGKILL the relay (pid $relay_pid): in-flight events may be published twice, none lost"
		kill -KILL "$relay_pid"
		wait "$relay_pid" 2>/dev/null || true
		sleep 1 || true # events committed meanwhile wait in the outbox table
		start_relay
		say "relay restarted (pid $relay_pid), appending to $relay_log"
	fi
	for p in relay:$relay_pid service:$service_pid consumer:$consumer_pid; do
		if ! alive "${p#*:}"; then
			say "${p%%:*} exited unexpectedly"
			failed=1
			break 2
		fi
	done
	sleep 0.2 || true # Ctrl-C kills the sleep too; the loop then sees it
done

# ---- Stop in order ------------------------------------------------------------

trap '' INT TERM HUP # the steps below are bounded; let them finish
say "stopping: the service, then the consumer (it drains and checks), then the relay"
stop service service_pid 10
[ "$stopped_rc" = 0 ] || { say "service exited with status $stopped_rc"; failed=1; }
stop consumer consumer_pid 25
consumer_rc=$stopped_rc
stop relay relay_pid 35
if [ "$stopped_rc" = 0 ]; then
	say "relay stopped cleanly (exit 0); last log lines:"
	tail -n 2 "$relay_log" | sed 's/^/relay   : /'
else
	say "relay exited with status $stopped_rc; last log lines:"
	tail -n 20 "$relay_log" | sed 's/^/relay   : /'
	failed=1
fi
case $consumer_rc in
0) ;;
1) say "checks FAILED: events lost or out of order (see the summary)"; failed=1 ;;
*) say "consumer exited with status $consumer_rc"; failed=1 ;;
esac

if [ "$failed" = 1 ]; then exit 1; fi
if [ "$interrupted" = 1 ]; then
	say "stopped by Ctrl-C; all checks passed"
	exit 130
fi
say "demo passed"
