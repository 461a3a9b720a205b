# A PostgreSQL server of a measuring script's own: sourced, not run, by
# scripts/writer-cost/run.sh and scripts/retention/run.sh.
#
# Unlike the test servers of scripts/servers.sh, it keeps stock settings
# (fsync=on, synchronous_commit=on, autovacuum at its defaults), because the
# scripts measure what writers and vacuum cost. It listens on a Unix socket
# only, so that nothing else reaches it.
#
# The sourcing script sets PGBIN (PostgreSQL's bin directory), then calls:
#   pg_start DIR PORT   initdb in DIR/data, start the server with its socket
#                       in DIR and its log in DIR/server.log; sets CONN to
#                       the connection options of psql and pgbench
#   psql_ ARGS...       psql on CONN, quiet, stopping at the first error
#   pg_stop DIR         for the EXIT trap: stop the script's background jobs
#                       (its clients: pgbench, psql, the relay), then the
#                       server, if it runs
# initdb and postgres refuse to run as root: as root, the server runs as the
# postgres account, which then owns DIR.

as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {   # dir port [server options, e.g. "-c wal_level=logical"]
    local dir=$1 port=$2 opts=${3:-}
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi
    chmod 755 "$dir"
    as_server_user "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
    as_server_user "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses='' $opts" start >/dev/null
    CONN=(-h "$dir" -p "$port" -U postgres)
}

psql_() { "$PGBIN/psql" "${CONN[@]}" -X -q -v ON_ERROR_STOP=1 "$@"; }

pg_stop() {   # dir
    local pid
    for pid in $(jobs -p); do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    if [ -f "$1/data/postmaster.pid" ]; then
        as_server_user "$PGBIN/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null
    fi
}
