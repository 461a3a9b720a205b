#!/usr/bin/env bash
# demo.sh runs one of the two demos of the transactional outbox.
#
#   scripts/demo.sh [shop]       the shop (examples/shop/README.md): an orders and an
#                                inventory service, each with its own database and relay,
#                                a saga between them through outboxes and inboxes, and a
#                                consistency check of every order at the end
#   scripts/demo.sh quickstart   the quickstart (examples/quickstart/README.md): one
#                                service, one relay, one consumer that checks each event
#
#   DEMO_DURATION=30s    stop by itself after 30 s (s, m or h); otherwise Ctrl-C stops it
#   DEMO_KILL_RELAY=1    also SIGKILL each relay once, in turn, and restart it
#
# The shop also replays both outboxes halfway (outbox-relay replay --all): every
# event published so far arrives a second time, and the inboxes must absorb it.
#
# Servers: with RELAY_DATABASE_URL and RELAY_AMQP_URL both set, the demo uses
# those servers and leaves them running; it creates its own databases (named
# after the demo and a random id) and broker objects, and deletes them at the
# end. Otherwise it starts throwaway servers with scripts/servers.sh and stops
# them at the end.
#
# Exit status: 0 every check passed; 1 a check or a component failed; 130
# stopped by Ctrl-C, checks passed.
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
	pid=${!var:-}
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

# ---- The two demos -------------------------------------------------------------
#
# Each demo declares its relays (one per database: name, database, exchange)
# and its processes, which the rest of the script starts, watches and stops
# alike. Processes are stopped in the order listed, then the relays.

demo=${1:-shop}
case $demo in
shop | quickstart) ;;
-h | --help | help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) die "unknown demo \"$demo\": use shop or quickstart" ;;
esac

run_id=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
relays=()                      # relay names, in start order
declare -A relay_db relay_exchange relay_pid relay_log
procs=()                       # process names, in stop order
declare -A proc_pid proc_limit # proc_limit: seconds SIGTERM may take

if [ "$demo" = shop ]; then
	app=shop
	relays=(orders inventory)
	databases=(shop_orders_$run_id shop_inventory_$run_id)
	relay_db[orders]=${databases[0]} relay_db[inventory]=${databases[1]}
	procs=(shop)
	proc_limit[shop]=90 # the shop waits up to a minute for the saga to finish, then checks
	stop_note="the customers; the services finish the saga, then the shop checks every order"
else
	app=quickstart
	relays=(orders)
	databases=(outbox_demo_$run_id)
	relay_db[orders]=${databases[0]}
	relay_exchange[orders]= # the quickstart's rows name their exchange
	procs=(service consumer)
	proc_limit[service]=10 proc_limit[consumer]=25 # the consumer drains and checks
	stop_note="the service, then the consumer (it drains and checks)"
fi

# app_setup creates the demo's tables and broker objects.
app_setup() {
	if [ "$demo" = shop ]; then
		"$tmp/shop" setup "${shop_flags[@]}"
	else
		RELAY_DATABASE_URL=$(db_url orders) "$tmp/quickstart" setup -queue "$queue"
	fi
}

# app_start starts the demo's processes, each in its own session (setsid),
# so that a Ctrl-C reaches only this script, which then stops them in order.
app_start() {
	if [ "$demo" = shop ]; then
		setsid "$tmp/shop" run "${shop_flags[@]}" </dev/null &
		proc_pid[shop]=$!
	else
		RELAY_DATABASE_URL=$(db_url orders) setsid "$tmp/quickstart" consumer -queue "$queue" </dev/null &
		proc_pid[consumer]=$!
		RELAY_DATABASE_URL=$(db_url orders) setsid "$tmp/quickstart" service </dev/null &
		proc_pid[service]=$!
	fi
}

# app_teardown deletes the demo's broker objects (on servers that stay up).
app_teardown() {
	if [ "$demo" = shop ]; then
		"$tmp/shop" teardown -amqp "$amqp_url" -prefix "$prefix"
	else
		"$tmp/quickstart" teardown -amqp "$amqp_url" -queue "$queue"
	fi
}

# ---- Cleanup ----------------------------------------------------------------

tmp= servers= admin_url= amqp_url= created=() interrupted=0 set_up=0

# interrupted: the main loop notices and stops everything in order.
trap 'interrupted=1' INT TERM HUP

# check_interrupt ends the set-up early on Ctrl-C; cleanup does the rest.
check_interrupt() { [ "$interrupted" = 0 ] || exit 130; }

# cleanup runs on every exit. After a normal stop only the servers and
# files are left; on an error it also stops whatever still runs.
cleanup() {
	local rc=$? p r db
	set +e
	trap '' INT TERM HUP # finish cleaning up; every step below is bounded
	for p in "${procs[@]}"; do stop "$p" "proc_pid[$p]" "${proc_limit[$p]}"; done
	for r in "${relays[@]}"; do stop "relay $r" "relay_pid[$r]" 35; done
	if [ "$set_up" = 1 ] && [ -z "$servers" ]; then
		app_teardown || say "warning: could not delete the demo's queues and exchanges"
	fi
	if [ -z "$servers" ]; then
		for db in "${created[@]}"; do
			psql "$admin_url" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" &&
				say "dropped database $db" || say "warning: could not drop database $db"
		done
	fi
	# A failed "servers.sh start" has already stopped what it started.
	if [ -n "$servers" ] && [ -f "$servers/env" ]; then
		say "stopping the throwaway servers"
		scripts/servers.sh stop "$servers" || say "warning: scripts/servers.sh stop $servers failed"
	fi
	if [ -n "$tmp" ]; then
		rm -rf "$tmp/outbox-relay" "$tmp/$app" "$tmp/servers"
		if compgen -G "$tmp/relay-*.log" >/dev/null; then
			say "relay logs kept: $tmp/relay-*.log"
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

# ---- 1. Servers and databases -----------------------------------------------

if [ -n "${RELAY_DATABASE_URL:-}" ] && [ -n "${RELAY_AMQP_URL:-}" ]; then
	say "using the servers named by RELAY_DATABASE_URL and RELAY_AMQP_URL"
	admin_url=$RELAY_DATABASE_URL
	amqp_url=$RELAY_AMQP_URL
	prefix=shop-$run_id # apart from whatever else uses the broker
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
	prefix=shop
fi
check_interrupt
for db in "${databases[@]}"; do
	psql "$admin_url" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" || die "could not create database $db"
	created+=("$db")
	say "created database $db"
done
check_interrupt

# db_url RELAY prints the URL of that relay's database.
db_url() { with_dbname "$admin_url" "${relay_db[$1]}"; }

queue=demo.orders.$run_id # the quickstart's
if [ "$demo" = shop ]; then
	relay_exchange[orders]=$prefix.orders relay_exchange[inventory]=$prefix.inventory
	shop_flags=(-orders-db "$(db_url orders)" -inventory-db "$(db_url inventory)" -amqp "$amqp_url" -prefix "$prefix")
fi

# Everything below reads these, like a real deployment would; each relay
# also gets its own RELAY_DATABASE_URL, RELAY_EXCHANGE and RELAY_REPLICA_NAME.
export RELAY_AMQP_URL=$amqp_url RELAY_LOG_FORMAT=text RELAY_TABLE=outbox RELAY_HTTP_ADDR=
unset RELAY_DATABASE_URL RELAY_EXCHANGE

# ---- 2. Build, migrate, set up, start the relays ------------------------------

say "building outbox-relay and examples/$app into $tmp"
go build -o "$tmp/outbox-relay" ./cmd/outbox-relay || die "go build ./cmd/outbox-relay failed"
go build -o "$tmp/$app" "./examples/$app" || die "go build ./examples/$app failed"
check_interrupt

for r in "${relays[@]}"; do
	say "outbox-relay migrate (${relay_db[$r]})"
	RELAY_DATABASE_URL=$(db_url "$r") "$tmp/outbox-relay" migrate || die "outbox-relay migrate failed"
done
app_setup || die "$app setup failed"
set_up=1
check_interrupt

# start_relay NAME starts (or restarts) that relay, appending to its log. Its
# replica name stays the same, so a restarted relay takes over its killed
# predecessor's lease at once.
start_relay() {
	local r=$1
	RELAY_DATABASE_URL=$(db_url "$r") RELAY_EXCHANGE=${relay_exchange[$r]} RELAY_REPLICA_NAME=$r-relay \
		setsid "$tmp/outbox-relay" run >>"${relay_log[$r]}" 2>&1 </dev/null &
	relay_pid[$r]=$!
}

for r in "${relays[@]}"; do
	relay_log[$r]=$tmp/relay-$r.log
	start_relay "$r"
	say "relay $r started (pid ${relay_pid[$r]}, exchange \"${relay_exchange[$r]}\"); its log: ${relay_log[$r]}"
	for ((i = 0; i < 50; i++)); do
		grep -q 'msg=started' "${relay_log[$r]}" 2>/dev/null && break
		alive "${relay_pid[$r]}" || break
		sleep 0.1
	done
	sed "s/^/relay $r: /" "${relay_log[$r]}"
	alive "${relay_pid[$r]}" || die "relay $r exited at start; see ${relay_log[$r]}"
done
check_interrupt

# ---- 3. Run ------------------------------------------------------------------

app_start
if [ "$duration" -gt 0 ]; then
	say "running for ${duration}s (Ctrl-C stops earlier)"
else
	say "running until Ctrl-C"
fi

# What happens when: each relay killed once, in turn, spread over the run;
# the shop's replay halfway. Without a duration, every 10 s.
declare -A kill_at
span=$((duration > 0 ? duration : 10 * (${#relays[@]} + 1)))
if [ "$kill_relay" = 1 ]; then
	for i in "${!relays[@]}"; do
		kill_at[${relays[$i]}]=$((span * (i + 1) / (${#relays[@]} + 1)))
		say "will SIGKILL relay ${relays[$i]} after ${kill_at[${relays[$i]}]}s and restart it"
	done
fi
replay_at=-1
if [ "$demo" = shop ]; then
	replay_at=$((duration > 0 ? duration / 2 : 15))
	say "will replay both outboxes after ${replay_at}s: every event so far is published again"
fi

failed=0 t0=$SECONDS
while [ "$interrupted" = 0 ]; do
	elapsed=$((SECONDS - t0))
	[ "$duration" -eq 0 ] || [ "$elapsed" -lt "$duration" ] || break
	for r in "${!kill_at[@]}"; do
		[ "$elapsed" -ge "${kill_at[$r]}" ] || continue
		unset "kill_at[$r]"
		say "SIGKILL relay $r (pid ${relay_pid[$r]}): events in flight may be published twice, none lost"
		kill -KILL "${relay_pid[$r]}"
		wait "${relay_pid[$r]}" 2>/dev/null || true
		sleep 1 || true # events committed meanwhile wait in the outbox table
		start_relay "$r"
		say "relay $r restarted (pid ${relay_pid[$r]}), appending to ${relay_log[$r]}"
	done
	if [ "$replay_at" -ge 0 ] && [ "$elapsed" -ge "$replay_at" ]; then
		replay_at=-1
		for r in "${relays[@]}"; do
			# Its log lines go to the relay's log; it prints "replayed N rows ...".
			if ! out=$(RELAY_DATABASE_URL=$(db_url "$r") RELAY_EXCHANGE=${relay_exchange[$r]} \
				"$tmp/outbox-relay" replay --all 2>>"${relay_log[$r]}"); then
				say "outbox-relay replay --all on the $r database failed; see ${relay_log[$r]}"
				failed=1
				break 2
			fi
			say "outbox-relay replay --all on the $r database: ${out%%$'\n'*}"
		done
	fi
	for p in "${procs[@]}"; do
		if ! alive "${proc_pid[$p]}"; then
			say "$p exited unexpectedly"
			failed=1
			break 2
		fi
	done
	for r in "${relays[@]}"; do
		if ! alive "${relay_pid[$r]}"; then
			say "relay $r exited unexpectedly; see ${relay_log[$r]}"
			failed=1
			break 2
		fi
	done
	sleep 0.2 || true # Ctrl-C kills the sleep too; the loop then sees it
done

# ---- Stop in order ------------------------------------------------------------

trap '' INT TERM HUP # the steps below are bounded; let them finish
say "stopping: $stop_note, then the relays"
for p in "${procs[@]}"; do
	stop "$p" "proc_pid[$p]" "${proc_limit[$p]}"
	case $stopped_rc in
	0) ;;
	1) say "checks FAILED (see the summary)"; failed=1 ;;
	*) say "$p exited with status $stopped_rc"; failed=1 ;;
	esac
done
for r in "${relays[@]}"; do
	stop "relay $r" "relay_pid[$r]" 35
	if [ "$stopped_rc" = 0 ]; then
		say "relay $r stopped cleanly (exit 0); last log lines:"
		tail -n 2 "${relay_log[$r]}" | sed "s/^/relay $r: /"
	else
		say "relay $r exited with status $stopped_rc; last log lines:"
		tail -n 20 "${relay_log[$r]}" | sed "s/^/relay $r: /"
		failed=1
	fi
done

if [ "$failed" = 1 ]; then exit 1; fi
if [ "$interrupted" = 1 ]; then
	say "stopped by Ctrl-C; all checks passed"
	exit 130
fi
say "demo passed"
