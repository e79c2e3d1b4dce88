#!/usr/bin/env bash
# A throwaway PostgreSQL for the registry's tests, on a fresh Debian 12 machine or a reused one.
#
#   export TOMAAT_TEST_POSTGRES_URL=$(bash scripts/postgres.sh | tail -1)
#
# Idempotent: installs Debian's postgresql package when it is missing, initialises a data
# folder of its own (not the distribution's cluster, so nothing else on the machine is touched),
# starts a server on 127.0.0.1 only, creates the test user and database, waits until they accept
# connections, and prints the URL as the last line of stdout. Everything else goes to stderr.
# Run as root (the server runs as the postgres OS user) or as an unprivileged user who owns
# TOMAAT_PG_DIR. Settings, all optional: TOMAAT_PG_DIR (default .services/postgres in this checkout),
# TOMAAT_PG_PORT (default: the port recorded in TOMAAT_PG_DIR/port, else a free one picked from the
# folder's path, so that two checkouts' servers never share one), TOMAAT_PG_USER, TOMAAT_PG_PASSWORD,
# TOMAAT_PG_DB, TOMAAT_PG_WAIT (seconds to wait for the server). A second run reuses the running
# server; scripts/stop-services.sh stops it.
# As root, where the postgres OS user cannot reach TOMAAT_PG_DIR (a checkout under /root), the data,
# socket and log go to a folder of that user's home named after TOMAAT_PG_DIR, written in TOMAAT_PG_DIR/rundir.
set -euo pipefail

PGDIR=${TOMAAT_PG_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.services/postgres}
PORT=${TOMAAT_PG_PORT:-}
DB_USER=${TOMAAT_PG_USER:-tomaat_test}
# A test database reachable from 127.0.0.1 only; the password exists because the tests connect over TCP.
DB_PASSWORD=${TOMAAT_PG_PASSWORD:-tomaat_test}
DB_NAME=${TOMAAT_PG_DB:-tomaat_test}
WAIT=${TOMAAT_PG_WAIT:-60}

say() { echo "postgres.sh: $*" >&2; }
fail() {
    say "$*"
    exit 1
}

for name in DB_USER DB_NAME; do
    [[ ${!name} =~ ^[a-z_][a-z0-9_]*$ ]] || fail "$name must be a plain lower-case SQL identifier, got '${!name}'"
done
[[ $DB_PASSWORD != *"'"* ]] || fail "TOMAAT_PG_PASSWORD must not contain a single quote"
[[ -z $PORT || $PORT =~ ^[0-9]+$ ]] || fail "TOMAAT_PG_PORT must be a number, got '$PORT'"
[[ $PGDIR == /* ]] || fail "TOMAAT_PG_DIR must be an absolute path, got '$PGDIR'"

bindir() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [[ -n $found && -x $found/initdb ]] && echo "$found"
}

BIN=$(bindir || true)
if [[ -z $BIN ]]; then
    [[ $(id -u) -eq 0 ]] || fail "PostgreSQL is not installed and only root can install it (apt-get install postgresql)"
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y --no-install-recommends postgresql >&2
    BIN=$(bindir) || fail "postgresql installed, but no initdb under /usr/lib/postgresql/*/bin"
fi

# From /, since the postgres OS user may not enter the caller's folder (psql and pg_ctl complain when they
# cannot go back to it: "could not change directory ...: Permission denied"); every path here is absolute.
if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || fail "the postgres OS user is missing (it comes with the postgresql package)"
    as_pg() { (cd / && runuser -u postgres -- "$@"); }
else
    as_pg() { (cd / && "$@"); }
fi

mkdir -p "$PGDIR"
chmod 700 "$PGDIR"
# RUN holds what the server writes: the data, its socket and its log.
RUN=$PGDIR
if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$PGDIR"
    if ! as_pg test -w "$PGDIR"; then
        RUN=$(getent passwd postgres | cut -d: -f6)/tomaat-test-$(cksum <<<"$PGDIR" | cut -d' ' -f1)
        mkdir -p "$RUN"
        chown postgres: "$RUN"
        chmod 700 "$RUN"
        echo "$RUN" >"$PGDIR/rundir"
    fi
fi
[[ $RUN != "$PGDIR" ]] || rm -f "$PGDIR/rundir"
DATA=$RUN/data
SOCKET=$RUN/socket
as_pg mkdir -p "$SOCKET"

if [[ ! -s $DATA/PG_VERSION ]]; then
    say "initialising $DATA"
    as_pg rm -rf "$DATA"
    # Local socket connections (the superuser, for set-up) are trusted; TCP needs a password.
    if ! as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >"$PGDIR/initdb.log" 2>&1; then
        cat "$PGDIR/initdb.log" >&2
        fail "initdb failed (its output above, and in $PGDIR/initdb.log)"
    fi
fi

ready() { "$BIN/pg_isready" -q -h "$SOCKET" -p "$PORT" -U postgres; }
# Whether something listens on 127.0.0.1:$1.
taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The port: the one asked for, else the one this folder's server has used (unless another program took it
# while this server was stopped), else the first free one from a start that depends on the folder's path.
if [[ -z $PORT ]]; then
    PORT=$(cat "$PGDIR/port" 2>/dev/null || true)
    if [[ ! $PORT =~ ^[0-9]+$ ]] || { ! ready && taken "$PORT"; }; then
        PORT=$((24000 + $(cksum <<<"$PGDIR" | cut -d' ' -f1) % 1000))
        while taken "$PORT"; do PORT=$((PORT + 1)); done
    fi
fi
echo "$PORT" >"$PGDIR/port"

# Start the server unless one is running, and try again while waiting: a killed server can leave a
# zombie holding the lock file until something reaps it.
deadline=$((SECONDS + WAIT))
until ready; do
    if ! as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        say "starting PostgreSQL on 127.0.0.1:$PORT"
        as_pg "$BIN/pg_ctl" -D "$DATA" -l "$RUN/server.log" -w -t 10 \
            -o "-p $PORT -k $SOCKET -c listen_addresses=127.0.0.1" start >/dev/null || say "not started yet"
    fi
    ready && break
    ((SECONDS < deadline)) || fail "PostgreSQL is not accepting connections after ${WAIT}s; see $RUN/server.log"
    sleep 0.5
done

psql_admin() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET" -p "$PORT" -U postgres -d postgres "$@"; }

psql_admin >&2 <<SQL
SELECT format('CREATE ROLE %I LOGIN', '$DB_USER')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER')\gexec
ALTER ROLE $DB_USER WITH LOGIN PASSWORD '$DB_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', '$DB_NAME', '$DB_USER')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME')\gexec
SQL

URL="postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB_NAME"
deadline=$((SECONDS + WAIT))
until PGPASSWORD=$DB_PASSWORD "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U "$DB_USER" -d "$DB_NAME" \
    -c 'SELECT 1' >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "cannot log in as $DB_USER over TCP; see $RUN/server.log"
    sleep 0.5
done
say "ready"
echo "$URL"
