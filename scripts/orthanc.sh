#!/usr/bin/env bash
# A throwaway Orthanc PACS with its DICOMweb plugin for the PACS loop's tests, on a fresh Debian 12 machine
# or a reused one.
#
#   export TOMAAT_TEST_DICOMWEB_URL=$(bash scripts/orthanc.sh | tail -1)
#
# Idempotent: installs Debian's orthanc and orthanc-dicomweb packages when they are missing (root, as on CI),
# without letting the package start its system service, and never uses that service, its configuration or its
# ports (8042, 4242). Runs a private Orthanc in the background with a configuration file, storage, pid file and
# log of its own in TOMAAT_ORTHANC_DIR, HTTP on TOMAAT_ORTHANC_PORT for local clients only and no DICOM (C-STORE)
# server; reuses the one already running from that folder when its settings are the same and restarts it when
# they changed; waits until DICOMweb answers and prints the DICOMweb root URL as the last line of stdout.
# Everything else goes to stderr. Settings, all optional: TOMAAT_ORTHANC_DIR (default .services/orthanc in
# this checkout), TOMAAT_ORTHANC_PORT (default: the port recorded in TOMAAT_ORTHANC_DIR/port, else a free one
# picked from the folder's path, so that two checkouts' or two folders' servers never share one),
# TOMAAT_ORTHANC_USER and TOMAAT_ORTHANC_PASSWORD (both or neither: HTTP basic authentication),
# TOMAAT_ORTHANC_WAIT (seconds to wait for the server). Two instances need two folders.
# Opt-in, for the DICOM gateway's tests (docs/gateway.md): TOMAAT_ORTHANC_DICOM_PORT turns Orthanc's DICOM server
# on at that port, with AE title TOMAAT_ORTHANC_AET (default ORTHANC); it then takes C-ECHO and C-STORE only from
# the modalities declared, by AE title and host: TOMAAT_ORTHANC_MODALITIES (a JSON object, Orthanc's
# DicomModalities, default {}) or later through its REST API (PUT /modalities/NAME).
# The storage is a test store: a restart may keep what it holds; scripts/stop-services.sh stops the server
# (--delete also deletes the folder, emptying it).
set -euo pipefail

DIR=${TOMAAT_ORTHANC_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.services/orthanc}
PORT=${TOMAAT_ORTHANC_PORT:-}
AUTH_USER=${TOMAAT_ORTHANC_USER:-}
# A test store reachable from this machine only; the password exists to test basic authentication.
AUTH_PASSWORD=${TOMAAT_ORTHANC_PASSWORD:-}
WAIT=${TOMAAT_ORTHANC_WAIT:-60}
DICOM_PORT=${TOMAAT_ORTHANC_DICOM_PORT:-}
DICOM_AET=${TOMAAT_ORTHANC_AET:-ORTHANC}
MODALITIES=${TOMAAT_ORTHANC_MODALITIES:-"{}"}

say() { echo "orthanc.sh: $*" >&2; }
fail() {
    say "$*"
    exit 1
}

[[ $DIR == /* && $DIR != *[\"\\]* ]] || fail "TOMAAT_ORTHANC_DIR must be an absolute path without quotes or backslashes, got '$DIR'"
if [[ -n $PORT ]]; then
    [[ $PORT =~ ^[0-9]+$ ]] && ((10#$PORT > 0 && 10#$PORT < 65536)) || fail "TOMAAT_ORTHANC_PORT must be a port number, got '$PORT'"
    PORT=$((10#$PORT))
    ((PORT != 8042 && PORT != 4242)) || fail "TOMAAT_ORTHANC_PORT must not be $PORT, the system Orthanc's port"
fi
if [[ -n $DICOM_PORT ]]; then
    [[ $DICOM_PORT =~ ^[0-9]+$ ]] && ((10#$DICOM_PORT > 0 && 10#$DICOM_PORT < 65536)) || fail "TOMAAT_ORTHANC_DICOM_PORT must be a port number, got '$DICOM_PORT'"
    DICOM_PORT=$((10#$DICOM_PORT))
    ((DICOM_PORT != 4242)) || fail "TOMAAT_ORTHANC_DICOM_PORT must not be 4242, the system Orthanc's port"
fi
[[ $DICOM_AET =~ ^[A-Za-z0-9._-]{1,16}$ ]] || fail "TOMAAT_ORTHANC_AET must be 1 to 16 letters, digits, '.', '_' or '-', got '$DICOM_AET'"
[[ $MODALITIES == \{*\} && $MODALITIES != *\\* ]] || fail "TOMAAT_ORTHANC_MODALITIES must be a JSON object without backslashes, got '$MODALITIES'"
[[ $WAIT =~ ^[0-9]+$ ]] || fail "TOMAAT_ORTHANC_WAIT must be a number of seconds, got '$WAIT'"
[[ -n $AUTH_USER || -z $AUTH_PASSWORD ]] || fail "TOMAAT_ORTHANC_PASSWORD is set but TOMAAT_ORTHANC_USER is not"
[[ -z $AUTH_USER || -n $AUTH_PASSWORD ]] || fail "TOMAAT_ORTHANC_USER is set but TOMAAT_ORTHANC_PASSWORD is not"
[[ -z $AUTH_USER || $AUTH_USER =~ ^[A-Za-z0-9._-]+$ ]] || fail "TOMAAT_ORTHANC_USER must be letters, digits, '.', '_' or '-', got '$AUTH_USER'"
[[ -z $AUTH_PASSWORD || ($AUTH_PASSWORD =~ ^[[:graph:]]+$ && $AUTH_PASSWORD != *[\"\\]*) ]] ||
    fail "TOMAAT_ORTHANC_PASSWORD must be printable ASCII without spaces, quotes or backslashes"

ORTHANC=/usr/sbin/Orthanc
plugin() { dpkg -L orthanc-dicomweb 2>/dev/null | grep -E '/libOrthancDicomWeb\.so[.0-9]*$' | while read -r path; do
    [[ -f $path ]] && echo "$path"
done | head -n 1; }

PLUGIN=$(plugin || true)
if [[ ! -x $ORTHANC || -z $PLUGIN ]]; then
    [[ $(id -u) -eq 0 ]] || fail "Orthanc is not installed and only root can install it (apt-get install orthanc orthanc-dicomweb)"
    say "installing Debian's orthanc and orthanc-dicomweb packages"
    # The package starts its system service on install unless policy-rc.d forbids it; this script never uses
    # that service, so forbid it for the install, leaving a policy-rc.d that someone else put there alone.
    POLICY=/usr/sbin/policy-rc.d
    if [[ ! -e $POLICY ]]; then
        trap 'rm -f "$POLICY"' EXIT
        printf '#!/bin/sh\n# scripts/orthanc.sh: no services start while it installs packages.\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb >&2
    [[ -x $ORTHANC ]] || fail "orthanc installed, but $ORTHANC is missing"
    PLUGIN=$(plugin) || true
    [[ -n $PLUGIN ]] || fail "orthanc-dicomweb installed, but it has no libOrthancDicomWeb.so (dpkg -L orthanc-dicomweb)"
fi

# curl when the machine has it, Python's standard library otherwise; neither goes through a proxy.
# http URL BODYFILE [USER:PASSWORD] prints the status code (000 when nothing answered) and keeps the body.
if command -v curl >/dev/null; then
    http() {
        curl -s --noproxy '*' --max-time 5 -o "$2" -w '%{http_code}' ${3:+-u "$3"} "$1" || true
    }
elif command -v python3 >/dev/null; then
    http() {
        python3 - "$1" "$2" "${3:-}" <<'PY'
import base64, sys, urllib.error, urllib.request

url, out, auth = sys.argv[1:4]
request = urllib.request.Request(url)
if auth:
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
try:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as answer:
        code, body = answer.status, answer.read()
except urllib.error.HTTPError as error:
    code, body = error.code, error.read()
except Exception:
    code, body = 0, b""
with open(out, "wb") as handle:
    handle.write(body)
print(f"{code:03d}")
PY
    }
else
    fail "neither curl nor python3 is installed: one of them is needed to talk to Orthanc"
fi

CONFIG=$DIR/orthanc.json
PIDFILE=$DIR/orthanc.pid
LOG=$DIR/orthanc.log
BODY=$DIR/probe.body
NAME="tomaat-test $DIR"
CREDENTIALS=${AUTH_USER:+$AUTH_USER:$AUTH_PASSWORD}

mkdir -p "$DIR/storage" "$DIR/index"
chmod 700 "$DIR" # the configuration holds the password
# One run at a time per folder; the server does not inherit the lock.
exec 9>"$DIR/lock"
flock -w "$WAIT" 9 || fail "another scripts/orthanc.sh holds $DIR/lock"

# The pid in the pid file when it is a live Orthanc started with this folder's configuration (a zombie's or a
# recycled pid's command line does not match).
running() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == "$ORTHANC $CONFIG " ]] || return 1
    echo "$pid"
}
# Whether a process lives and is no zombie (procps may be missing, so no ps).
alive() {
    local _pid _comm state
    read -r _pid _comm state _ <"/proc/$1/stat" 2>/dev/null || return 1
    [[ $state != Z ]]
}
# Whether something listens on 127.0.0.1:$1.
taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The port: the one asked for, else the one this folder's Orthanc has used (unless another program took it
# while this Orthanc was stopped), else the first free one from a start that depends on the folder's path.
if [[ -z $PORT ]]; then
    PORT=$(cat "$DIR/port" 2>/dev/null || true)
    if [[ ! $PORT =~ ^[0-9]+$ ]] || { ! running >/dev/null && taken "$PORT"; }; then
        PORT=$((18100 + $(cksum <<<"$DIR" | cut -d' ' -f1) % 800))
        while taken "$PORT"; do PORT=$((PORT + 1)); done
    fi
fi
echo "$PORT" >"$DIR/port"
BASE=http://127.0.0.1:$PORT

if [[ -n $AUTH_USER ]]; then
    AUTH_JSON="\"AuthenticationEnabled\": true,
  \"RegisteredUsers\": {\"$AUTH_USER\": \"$AUTH_PASSWORD\"},"
else
    AUTH_JSON="\"AuthenticationEnabled\": false,
  \"RegisteredUsers\": {},"
fi
if [[ -n $DICOM_PORT ]]; then
    # Orthanc 1.10 binds its DICOM server to every address too: only declared modalities (AE title and host,
    # loopback in the tests) may echo or store, and nothing may query or retrieve.
    DICOM_JSON="\"DicomServerEnabled\": true,
  \"DicomAet\": \"$DICOM_AET\",
  \"DicomPort\": $DICOM_PORT,
  \"DicomCheckCalledAet\": true,
  \"DicomCheckModalityHost\": true,
  \"DicomAlwaysAllowEcho\": false,
  \"DicomAlwaysAllowStore\": false,
  \"DicomAlwaysAllowFind\": false,
  \"DicomAlwaysAllowGet\": false,
  \"DicomAlwaysAllowMove\": false,
  \"DicomModalities\": $MODALITIES,"
else
    DICOM_JSON="\"DicomServerEnabled\": false,
  \"DicomModalities\": {},"
fi
# Orthanc 1.10 has no option to bind its HTTP server to one address (HttpBindAddresses came in a later release):
# it listens on all of them, and RemoteAccessAllowed false refuses every client but this machine's loopback.
cat >"$CONFIG.new" <<JSON
{
  "Name": "$NAME",
  "StorageDirectory": "$DIR/storage",
  "IndexDirectory": "$DIR/index",
  "StorageCompression": false,
  "MaximumStorageSize": 0,
  "MaximumPatientCount": 0,
  "LuaScripts": [],
  "Plugins": ["$PLUGIN"],
  "HttpServerEnabled": true,
  "HttpPort": $PORT,
  "RemoteAccessAllowed": false,
  "SslEnabled": false,
  $AUTH_JSON
  $DICOM_JSON
  "OrthancPeers": {},
  "ExecuteLuaEnabled": false,
  "RestApiWriteToFileSystemEnabled": false,
  "WebDavEnabled": false,
  "SaveJobs": false,
  "DicomWeb": {
    "Enable": true,
    "Root": "/dicom-web/",
    "EnableWado": false,
    "Ssl": false,
    "Host": "127.0.0.1:$PORT",
    "StowMaxInstances": 0,
    "StowMaxSize": 0
  }
}
JSON

if pid=$(running); then
    if cmp -s "$CONFIG.new" "$CONFIG"; then
        say "reusing Orthanc $pid from $DIR"
    else
        say "the settings changed: stopping Orthanc $pid from $DIR"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + WAIT))
        while running >/dev/null; do
            ((SECONDS < deadline)) || fail "Orthanc $pid did not stop within ${WAIT}s"
            sleep 0.2
        done
    fi
fi
mv -f "$CONFIG.new" "$CONFIG"

if ! pid=$(running); then
    rm -f "$PIDFILE"
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        fail "something else listens on 127.0.0.1:$PORT; pick another TOMAAT_ORTHANC_PORT"
    fi
    say "starting Orthanc on 127.0.0.1:$PORT with $CONFIG"
    # A session of its own, so it outlives this script and the caller's terminal; nothing holds the caller's stdout.
    setsid "$ORTHANC" "$CONFIG" </dev/null >>"$LOG" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
fi

# Ready once Orthanc answers as this folder's instance and its DICOMweb plugin answers a query.
deadline=$((SECONDS + WAIT))
until [[ $(http "$BASE/system" "$BODY" "$CREDENTIALS") == 200 ]] && grep -qF "\"$NAME\"" "$BODY" &&
    [[ $(http "$BASE/dicom-web/studies" "$BODY" "$CREDENTIALS") == 200 ]]; do
    alive "$pid" || fail "Orthanc $pid exited; the end of $LOG: $(tail -n 20 "$LOG")"
    ((SECONDS < deadline)) || fail "Orthanc's DICOMweb does not answer at $BASE/dicom-web after ${WAIT}s; see $LOG"
    sleep 0.2
done
if [[ -n $AUTH_USER ]]; then
    code=$(http "$BASE/dicom-web/studies" "$BODY")
    [[ $code == 401 ]] || fail "Orthanc at $BASE answers $code, not 401, without credentials"
fi
rm -f "$BODY"
say "ready: Orthanc $pid from $DIR"
echo "$BASE/dicom-web"
