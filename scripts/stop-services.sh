#!/usr/bin/env bash
# Stops the services scripts/test.sh leaves running for its next run: the PostgreSQL of scripts/postgres.sh and
# the Orthancs of scripts/orthanc.sh whose folders are under this checkout's .services/ (or TOMAAT_PG_DIR and
# TOMAAT_ORTHANC_DIR, where those were used). Services of other checkouts are left alone.
#
#   bash scripts/stop-services.sh            # stop them; their data stays for the next run
#   bash scripts/stop-services.sh --delete   # stop them and delete their folders (the test PACS and database)
#
# Idempotent: what is not running is skipped, and a second call stops nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WAIT=${TOMAAT_STOP_WAIT:-30}

say() { echo "stop-services.sh: $*"; }
fail() {
    echo "stop-services.sh: $*" >&2
    exit 1
}
case "${1:-}" in
"") DELETE=false ;;
--delete) DELETE=true ;;
*) fail "unknown argument '$1'; expected nothing or --delete" ;;
esac

folders=()
for folder in "$ROOT"/.services/*/ "${TOMAAT_PG_DIR:-}" "${TOMAAT_ORTHANC_DIR:-}"; do
    folder=${folder%/}
    [[ -n $folder && -d $folder ]] || continue
    [[ " ${folders[*]} " == *" $folder "* ]] || folders+=("$folder")
done

stopped=0
stop_postgres() {
    local folder=$1 run data bin
    run=$(cat "$folder/rundir" 2>/dev/null || echo "$folder")
    data=$run/data
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [[ -n $bin && -x $bin/pg_ctl ]] || fail "PostgreSQL's pg_ctl is missing, so the server of $folder cannot be stopped"
    as_owner() {
        if [[ $(id -u) -eq 0 ]]; then (cd / && runuser -u postgres -- "$@"); else (cd / && "$@"); fi
    }
    if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$data" -w -t "$WAIT" -m fast stop >/dev/null
        say "stopped PostgreSQL of $folder"
        stopped=$((stopped + 1))
    fi
    if $DELETE && [[ $run != "$folder" ]]; then
        rm -rf "$run"
    fi
}
stop_orthanc() {
    local folder=$1 pid deadline
    pid=$(cat "$folder/orthanc.pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    # Only an Orthanc started with this folder's configuration: a recycled pid is someone else's process.
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == "/usr/sbin/Orthanc $folder/orthanc.json " ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$((SECONDS + WAIT))
    while [[ -e /proc/$pid && $(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
        ((SECONDS < deadline)) || fail "Orthanc $pid of $folder did not stop within ${WAIT}s"
        sleep 0.2
    done
    rm -f "$folder/orthanc.pid"
    say "stopped Orthanc $pid of $folder"
    stopped=$((stopped + 1))
}

for folder in "${folders[@]}"; do
    if [[ -f $folder/orthanc.json ]]; then
        stop_orthanc "$folder"
    elif [[ -f $folder/port || -f $folder/rundir || -d $folder/data ]]; then
        stop_postgres "$folder"
    else
        continue
    fi
    if $DELETE; then
        rm -rf "$folder"
        say "deleted $folder"
    fi
done
((stopped > 0)) || say "no service of this checkout was running"
