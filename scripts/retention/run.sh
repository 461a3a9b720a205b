#!/usr/bin/env bash
# What retention does to the outbox table over a long run: its size and dead
# tuples, with retention on and off, under a steady write load while the
# relay publishes.
#
# Usage: scripts/retention/run.sh [DURATION_S [RATE [RETENTION]]]   (default 300 2000 30s)
#
# For each mode (RELAY_RETENTION=RETENTION, then RELAY_RETENTION=0) on a fresh
# database: pgbench writes RATE rows/s (RATE/10 transactions/s of 10 rows
# with a 256-byte payload) for DURATION_S seconds while the relay publishes
# them, and every SAMPLE_S seconds (default 10) it prints the outbox's live
# and dead tuples (pg_stat_user_tables), its total size with indexes
# (pg_total_relation_size), the rows not yet published and the autovacuum
# runs so far; then a summary per mode. With a retention of 30s the relay
# prunes every 7.5s (a quarter of it).
#
# PostgreSQL is a throwaway server of its own (initdb in a temp dir, stock
# settings, autovacuum at its defaults, Unix socket only). RabbitMQ is the one
# named by RELAY_TEST_AMQP_URL and RELAY_TEST_RABBITMQ_API (as for the tests;
# run under "scripts/servers.sh run --" to get a throwaway one): the script
# creates a vhost of its own with a queue that keeps the newest 10 000
# messages, and deletes the vhost on exit.
#
# Environment: PGBIN (default /usr/lib/postgresql/15/bin), PORT (54331),
# SAMPLE_S (10), MODES ("on off").
set -euo pipefail

DURATION=${1:-300}
RATE=${2:-2000}
RETENTION=${3:-30s}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${PORT:-54331}
SAMPLE_S=${SAMPLE_S:-10}
MODES=${MODES:-"on off"}
: "${RELAY_TEST_AMQP_URL:?set RELAY_TEST_AMQP_URL and RELAY_TEST_RABBITMQ_API, or run under scripts/servers.sh run --}"
: "${RELAY_TEST_RABBITMQ_API:?set RELAY_TEST_RABBITMQ_API}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../measure-postgres.sh
. "$ROOT/scripts/measure-postgres.sh"

TMP=$(mktemp -d /tmp/retention.XXXXXX)
VHOST=retention-$$
API=${RELAY_TEST_RABBITMQ_API%/}
cleanup() {
    set +e
    pg_stop "$TMP" # and the writer and the relay, if they run
    curl -fsS -X DELETE "$API/api/vhosts/$VHOST" >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pg_start "$TMP" "$PORT"

(cd "$ROOT" && go build -o "$TMP/outbox-relay" ./cmd/outbox-relay)

# The broker: a vhost of our own, a queue "events" capped at the newest
# 10 000 messages so a long run does not fill the broker.
amqp_user=$(sed -E 's#^amqps?://([^:@/]*).*#\1#' <<<"$RELAY_TEST_AMQP_URL")
curl -fsS -X PUT "$API/api/vhosts/$VHOST" >/dev/null
curl -fsS -X PUT -H 'content-type: application/json' "$API/api/permissions/$VHOST/${amqp_user:-guest}" \
    -d '{"configure":".*","write":".*","read":".*"}' >/dev/null
curl -fsS -X PUT -H 'content-type: application/json' "$API/api/queues/$VHOST/events" \
    -d '{"durable":true,"arguments":{"x-queue-type":"classic","x-max-length":10000,"x-overflow":"drop-head"}}' >/dev/null
AMQP_URL=${RELAY_TEST_AMQP_URL%/}/$VHOST

cat >"$TMP/write.sql" <<'EOF'
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload)
SELECT 'order', (random() * 1000)::int::text, 'OrderPlaced', 'events', convert_to(repeat('x', 256), 'UTF8')
  FROM generate_series(1, 10);
EOF

sample_sql="SELECT s.n_live_tup, s.n_dead_tup, pg_total_relation_size('outbox'),
       (SELECT count(*) FROM outbox o, outbox_relay_position p WHERE (o.txid, o.id) > (p.txid, p.id)),
       s.autovacuum_count
  FROM pg_stat_user_tables s WHERE s.relname = 'outbox'"

run_mode() {   # mode -> prints samples and a summary line
    local mode=$1 retention=0 db=retention_$1 samples=$TMP/samples_$1 t began
    [ "$mode" = on ] && retention=$RETENTION
    psql_ -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    local dsn="host=$TMP port=$PORT user=postgres dbname=$db"
    RELAY_DATABASE_URL=$dsn "$TMP/outbox-relay" migrate >/dev/null
    RELAY_DATABASE_URL=$dsn RELAY_AMQP_URL=$AMQP_URL RELAY_RETENTION=$retention \
        "$TMP/outbox-relay" run 2>"$TMP/relay_$mode.log" &
    RELAY_PID=$!
    "$PGBIN/pgbench" "${CONN[@]}" -n -M prepared -c 2 -j 1 -R $((RATE / 10)) -T "$DURATION" \
        -f "$TMP/write.sql" "$db" >"$TMP/pgbench_$mode.out" 2>&1 &
    WRITER_PID=$!
    began=$(date +%s)

    echo "## RELAY_RETENTION=$retention"
    echo "| s | live tuples | dead tuples | total size (MB) | unpublished | autovacuums |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
    : >"$samples"
    while kill -0 "$WRITER_PID" 2>/dev/null; do
        sleep "$SAMPLE_S"
        t=$(($(date +%s) - began))
        read -r live dead size pending avac < <(psql_ -d "$db" -At -F ' ' -c "$sample_sql")
        echo "$t $live $dead $size $pending $avac" >>"$samples"
        awk -v t="$t" -v l="$live" -v d="$dead" -v s="$size" -v p="$pending" -v a="$avac" \
            'BEGIN { printf "| %d | %d | %d | %.1f | %d | %d |\n", t, l, d, s / 1048576, p, a }'
    done
    wait "$WRITER_PID" || { cat "$TMP/pgbench_$mode.out" >&2; exit 1; }
    kill -TERM "$RELAY_PID"; wait "$RELAY_PID" || true
    local written
    written=$(psql_ -d "$db" -At -c "SELECT coalesce(max(id), 0) FROM outbox")
    awk -v mode="$retention" -v written="$written" '
        { size[NR] = $4; if ($3 > maxdead) maxdead = $3; if ($4 > maxsize) maxsize = $4; if ($5 > maxpend) maxpend = $5 }
        END { printf "summary RELAY_RETENTION=%s: rows written %d; total size at half time %.1f MB, at the end %.1f MB, peak %.1f MB; dead tuples peak %d; unpublished peak %d\n",
                     mode, written, size[int((NR + 1) / 2)] / 1048576, size[NR] / 1048576, maxsize / 1048576, maxdead, maxpend }' "$samples"
    { grep -o 'msg="retention: deleted published rows" rows=[0-9]*' "$TMP/relay_$mode.log" || true; } |
        awk -F= '{ n++; s += $NF; if ($NF > m) m = $NF } END { if (n) printf "retention passes that deleted rows: %d, rows deleted %d, most in one pass %d\n", n, s, m }'
    echo
    if grep -q 'level=WARN\|level=ERROR' "$TMP/relay_$mode.log"; then
        echo "relay warnings:"; grep 'level=WARN\|level=ERROR' "$TMP/relay_$mode.log" | head -20
    fi
}

echo "# retention: ${DURATION}s at $RATE rows/s, samples every ${SAMPLE_S}s, $(nproc) cores"
for mode in $MODES; do run_mode "$mode"; done
