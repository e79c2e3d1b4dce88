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
# TOMAAT_PG_DIR. Settings, all optional: TOMAAT_PG_DIR, TOMAAT_PG_PORT, TOMAAT_PG_USER,
# TOMAAT_PG_PASSWORD, TOMAAT_PG_DB, TOMAAT_PG_WAIT (seconds to wait for the server).
set -euo pipefail

PGDIR=${TOMAAT_PG_DIR:-/tmp/tomaat-postgres}
PORT=${TOMAAT_PG_PORT:-54329}
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
[[ $PORT =~ ^[0-9]+$ ]] || fail "TOMAAT_PG_PORT must be a number, got '$PORT'"

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

if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || fail "the postgres OS user is missing (it comes with the postgresql package)"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

DATA=$PGDIR/data
SOCKET=$PGDIR/socket
mkdir -p "$PGDIR"
if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$PGDIR"
fi
as_pg mkdir -p "$SOCKET"
chmod 700 "$PGDIR"

if [[ ! -s $DATA/PG_VERSION ]]; then
    say "initialising $DATA"
    as_pg rm -rf "$DATA"
    # Local socket connections (the superuser, for set-up) are trusted; TCP needs a password.
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >&2
fi

ready() { "$BIN/pg_isready" -q -h "$SOCKET" -p "$PORT" -U postgres; }

# Start the server unless one is running, and try again while waiting: a killed server can leave a
# zombie holding the lock file until something reaps it.
deadline=$((SECONDS + WAIT))
until ready; do
    if ! as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        say "starting PostgreSQL on 127.0.0.1:$PORT"
        as_pg "$BIN/pg_ctl" -D "$DATA" -l "$PGDIR/server.log" -w -t 10 \
            -o "-p $PORT -k $SOCKET -c listen_addresses=127.0.0.1" start >&2 || say "not started yet"
    fi
    ready && break
    ((SECONDS < deadline)) || fail "PostgreSQL is not accepting connections after ${WAIT}s; see $PGDIR/server.log"
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
    ((SECONDS < deadline)) || fail "cannot log in as $DB_USER over TCP; see $PGDIR/server.log"
    sleep 0.5
done
say "ready"
echo "$URL"
