#!/usr/bin/env bash
# Writer-side cost of the relay: what the outbox schema (txid xid8 default,
# keyed by (txid, id), headers CHECK), the ordering lock, the optional NOTIFY
# wake-up trigger and a 1 ms poller cost the transactions that write to the
# outbox.
#
# Usage: scripts/writer-cost/run.sh [DURATION_S [ROUNDS [PORT]]]   (default 20 3 54329;
# DURATION and ROUNDS may also come from the environment, as make bench passes them)
#
# Starts a throwaway PostgreSQL (initdb in a temp dir, Unix socket only, stock
# durability: fsync=on, synchronous_commit=on), runs every variant once per
# round, interleaved (A B C ... A B C ...), each with pgbench -c 16 -j 2 -T
# DURATION, then prints a markdown table of median writer tps per variant.
# The server, the LISTEN session and the temp dir are removed on exit.
#
# Environment: PGBIN (default: the newest /usr/lib/postgresql/*/bin), CLIENTS
# (16), JOBS (2), VARIANTS (space-separated subset of the names below).
#
# Variants (each transaction: upsert one `orders` row + insert outbox row(s)
# with a 256-byte payload, then COMMIT):
#   A           outbox_plain: keyed by id, no txid column, no CHECK
#   B           schema.sql's outbox as is, no trigger
#   L           B with the ordering lock first (SELECT outbox_lock('order', id))
#   C           B + statement-level outbox_notify trigger (one NOTIFY per transaction)
#   D           B + row-level trigger notifying the new id (one NOTIFY per row, never folded)
#   A10 .. D10  the same with 10 outbox rows per transaction (one multi-row INSERT)
#   B+poll      B while one more session runs the relay's read every 1 ms, caught up
#               (each read starts after the previous read's last row)
#   B+pollfixed B while one more session runs the relay's read every 1 ms from a fixed
#               position taken before the run (returns full 1000-row batches: a lagging relay)
#   S           B read by a logical replication slot (pgoutput, a publication of the
#               outbox's inserts), as RELAY_SOURCE=logical reads it: pg_recvlogical
#               streams the slot throughout and confirms every second. With S among the
#               variants the server runs with wal_level = logical, for every variant.
# A session LISTENs on outbox_relay throughout (as the relay always does) and
# consumes notifications every 50 ms, so the notification queue never fills.
set -euo pipefail

DURATION=${1:-${DURATION:-20}}
ROUNDS=${2:-${ROUNDS:-3}}
PORT=${3:-54329}
CLIENTS=${CLIENTS:-16}
JOBS=${JOBS:-2}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$PGBIN/pgbench" ] || { echo "writer-cost: pgbench not found; set PGBIN" >&2; exit 1; }
VARIANTS=${VARIANTS:-"A B L C D A10 B10 C10 D10 B+poll B+pollfixed"}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCHEMA=$(cd "$HERE/../.." && pwd)/schema.sql
# shellcheck source=../measure-postgres.sh
. "$HERE/../measure-postgres.sh"

TMP=$(mktemp -d /tmp/writer-cost.XXXXXX)
cleanup() {
    set +e
    pg_stop "$TMP" # and the LISTEN session, and a poller still running
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The writer transactions. write1_outbox.sql and write10_outbox.sql are
# variant B's; the other variants' scripts are made from them here, so that
# they differ from B in nothing but the one thing they measure:
#   write1_plain.sql, write10_plain.sql  (A, A10) the INSERT goes to outbox_plain
#   write1_locked.sql                    (L) the ordering lock is taken first, as
#                                        docs/design.md (Ordering) asks of writers
#                                        that need commit order per aggregate
derive() {   # sed-program source target: $TMP/target is source edited by sed-program
    sed "$1" "$HERE/$2" >"$TMP/$3"
    if cmp -s "$HERE/$2" "$TMP/$3"; then
        echo "writer-cost: making $3 from $2 changed nothing; fix derive's pattern" >&2
        exit 1
    fi
}
derive 's/^INSERT INTO outbox (/INSERT INTO outbox_plain (/' write1_outbox.sql write1_plain.sql
derive 's/^INSERT INTO outbox (/INSERT INTO outbox_plain (/' write10_outbox.sql write10_plain.sql
derive "/^BEGIN;\$/a SELECT outbox_lock('order', CAST(:oid AS text));" write1_outbox.sql write1_locked.sql

server_opts=
case " $VARIANTS " in *" S "*) server_opts="-c wal_level=logical" ;; esac
pg_start "$TMP" "$PORT" "$server_opts"

"$PGBIN/createdb" "${CONN[@]}" bench
psql_ -d bench -f "$SCHEMA" >/dev/null
psql_ -d bench -f "$HERE/setup.sql" >/dev/null
if [ -n "$server_opts" ]; then
    psql_ -d bench -c "CREATE PUBLICATION writer_cost FOR TABLE outbox WITH (publish = 'insert')" >/dev/null
fi

# The relay's LISTEN session: \watch makes psql fetch (and drop) pending
# notifications every 50 ms.
"$PGBIN/psql" "${CONN[@]}" -X -q -d bench >/dev/null 2>&1 \
    < <(printf 'LISTEN outbox_relay;\nSELECT 1 \\watch 0.05\n') &

writer_script() {   # variant -> pgbench file
    case $1 in
        A) echo "$TMP/write1_plain.sql" ;;
        A10) echo "$TMP/write10_plain.sql" ;;
        L) echo "$TMP/write1_locked.sql" ;;
        *10) echo "$HERE/write10_outbox.sql" ;;
        *) echo "$HERE/write1_outbox.sql" ;;
    esac
}

tps_of() { sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' "$1"; }

run_variant() {   # variant -> appends "variant writer_tps [poller_qps]" to $TMP/results
    local v=$1 out=$TMP/pgbench.out pollout=$TMP/poll.out pos
    psql_ -d bench -f "$HERE/reset.sql" >/dev/null
    case $v in
        C|C10) psql_ -d bench -c 'CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();' ;;
        D|D10) psql_ -d bench -c 'CREATE TRIGGER outbox_notify_row AFTER INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_notify_row();' ;;
    esac
    POLLER_PID=
    case $v in
        S)
            psql_ -d bench -c "SELECT pg_create_logical_replication_slot('writer_cost', 'pgoutput')" >/dev/null
            "$PGBIN/pg_recvlogical" "${CONN[@]}" -d bench --slot writer_cost --start -s 1 \
                -o proto_version=1 -o publication_names=writer_cost -f /dev/null >"$pollout" 2>&1 &
            POLLER_PID=$!
            for _ in $(seq 50); do   # until it streams
                [ "$(psql_ -d bench -At -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'writer_cost'")" = t ] && break
                sleep 0.1
            done
            ;;
        B+poll*)
            # A recent position: this moment's txid and the last id handed out.
            pos=$(psql_ -d bench -At -F ' ' -c "SELECT pg_current_xact_id(), coalesce((SELECT last_value FROM pg_sequences WHERE sequencename = 'outbox_id_seq'), 0)")
            local pollsql=poll_follow.sql
            [ "$v" = B+pollfixed ] && pollsql=poll_fixed.sql
            "$PGBIN/pgbench" "${CONN[@]}" -n -M prepared -c 1 -j 1 -T "$DURATION" \
                -D ptx="${pos% *}" -D pid="${pos#* }" -f "$HERE/$pollsql" bench >"$pollout" 2>&1 &
            POLLER_PID=$!
            ;;
    esac
    "$PGBIN/pgbench" "${CONN[@]}" -n -M prepared -c "$CLIENTS" -j "$JOBS" -T "$DURATION" \
        -f "$(writer_script "$v")" bench >"$out" 2>&1 || { cat "$out" >&2; exit 1; }
    local tps qps=
    tps=$(tps_of "$out")
    if [ "$v" = S ]; then
        kill "$POLLER_PID" 2>/dev/null; wait "$POLLER_PID" 2>/dev/null || true
        POLLER_PID=
        psql_ -d bench -c "SELECT pg_drop_replication_slot('writer_cost')" >/dev/null
    fi
    if [ -n "$POLLER_PID" ]; then
        wait "$POLLER_PID" || { cat "$pollout" >&2; exit 1; }
        POLLER_PID=
        qps=$(tps_of "$pollout")
    fi
    [ -n "$tps" ] || { cat "$out" >&2; exit 1; }
    case $v in   # the LISTEN session must keep the notification queue near empty
        C*|D*) printf '  (notification queue usage after %s: %s)\n' "$v" \
                   "$(psql_ -d bench -At -c 'SELECT pg_notification_queue_usage()')" >&2 ;;
    esac
    echo "$v $tps $qps" >>"$TMP/results"
    printf '  %-12s %10s tps%s\n' "$v" "$tps" "${qps:+   poller $qps q/s}" >&2
}

echo "writer-cost: $("$PGBIN/postgres" --version), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
     "$CLIENTS clients, ${DURATION}s x $ROUNDS rounds" >&2
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS" >&2
    for v in $VARIANTS; do run_variant "$v"; done
done
echo "done, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# Medians (mean of the middle two for an even count), min, max per variant.
stats() {   # variant column -> "median min max"
    awk -v v="$1" -v c="$2" '$1 == v && $c != "" { print $c }' "$TMP/results" | sort -g |
        awk '{ x[NR] = $1 } END { if (NR == 0) exit;
             m = (NR % 2) ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2;
             printf "%.0f %.0f %.0f\n", m, x[1], x[NR] }'
}
base_of() { case $1 in *10) echo A10 ;; *) echo A ;; esac; }

echo
echo "pgbench -c $CLIENTS -j $JOBS -M prepared, ${DURATION} s per run, $ROUNDS rounds (interleaved); writer tps = transactions/s"
echo
echo "| variant | median tps | min | max | vs A (A10 for 10-row) | poller q/s (median) |"
echo "|---|---:|---:|---:|---:|---:|"
for v in $VARIANTS; do
    read -r med min max < <(stats "$v" 2)
    b=$(base_of "$v")
    read -r bmed _ < <(stats "$b" 2 || true) || bmed=
    ratio=-
    if [ -n "${bmed:-}" ] && [ "$bmed" != 0 ]; then ratio=$(awk -v a="$med" -v b="$bmed" 'BEGIN { printf "%.3f", a / b }'); fi
    q=-
    if [[ $v == B+poll* ]]; then read -r q _ < <(stats "$v" 3); fi
    echo "| $v | $med | $min | $max | $ratio | $q |"
done
