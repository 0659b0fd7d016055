#!/usr/bin/env bash
# The dimplugd demo (`make demo`): starts the daemon on a temporary state
# directory, installs the example plugins sandboxed, sends requests through
# a Dim-like host, shows what the plugins changed, and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin

TMP=$(mktemp -d /tmp/dimplugd-demo.XXXXXX)
chmod 711 "$TMP" # sandboxed plugins run as unprivileged uids that pass through it
SOCK=$TMP/dimplugd.sock
export DIMPLUGD_SOCKET=$SOCK

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

RUNTIME_ARGS=()
if [ "$(id -u)" != 0 ]; then
	RUNTIME_ARGS=(--insecure-no-sandbox)
	step "not root: the container sandbox needs root, so plugins run WITHOUT a sandbox"
fi

step "starting dimplugd (state in $TMP)"
"$BIN/dimplugd" serve --state-dir "$TMP/state" --socket "$SOCK" \
	--container-state "$TMP/containers" --cgroup-parent "dimplugd-demo-$$" \
	${RUNTIME_ARGS[@]+"${RUNTIME_ARGS[@]}"} 2>"$TMP/daemon.log" &
DAEMON=$!
cleanup() {
	kill -TERM "$DAEMON" 2>/dev/null || true
	wait "$DAEMON" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
for _ in $(seq 100); do
	[ -S "$SOCK" ] && break
	kill -0 "$DAEMON" 2>/dev/null || { cat "$TMP/daemon.log"; exit 1; }
	sleep 0.05
done
"$BIN/dimplugctl" status

for p in examples/plugins/*/; do
	step "dimplugctl install --yes $p"
	"$BIN/dimplugctl" install --yes "$p"
done
sleep 0.3

step "dimplugctl ls"
"$BIN/dimplugctl" ls

step "a request through the Dim-like host, without and with plugins"
"$BIN/dimhost" get /api/v1/media/42

step "the same request again: the plugin's view counter lives in its key-value store"
"$BIN/dimhost" get /api/v1/media/42 | tail -n 1

step "dimplugctl inspect media-badge"
"$BIN/dimplugctl" inspect media-badge

step "dimplugctl logs media-badge"
"$BIN/dimplugctl" logs media-badge

step "stopping dimplugd"
kill -TERM "$DAEMON"
wait "$DAEMON" || true
tail -n 3 "$TMP/daemon.log"
echo "demo finished"
