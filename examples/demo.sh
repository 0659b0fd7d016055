#!/usr/bin/env bash
# The dimplugd demo (`make demo`): starts the daemon on a temporary state
# directory, installs every example plugin sandboxed, then tells a short
# story through a Dim-like host (bin/dimhost): a kid logs in, parental
# controls keep a film from them, the dashboard grows a Trending row, a
# stream gets an HLS playlist next to Dim's DASH manifest, and the player's
# progress posts become a watch history. Then frame streams: generated fMP4
# segments flow through a transform (segment-tagger) and an observer
# (stream-stats) over shared memory. Everything is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin

TMP=$(mktemp -d /tmp/dimplugd-demo.XXXXXX)
chmod 711 "$TMP" # sandboxed plugins run as unprivileged uids that pass through it
SOCK=$TMP/dimplugd.sock # the host socket: dimhost (the Dim stand-in) connects here
CTL=$TMP/control.sock   # the control socket: dimplugctl connects here
export DIMPLUGD_SOCKET=$SOCK DIMPLUGD_CONTROL_SOCKET=$CTL

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '\033[2m%s\033[0m\n' "$*"; }
# get: one request through bin/dimhost, printed without and with plugins
# (-plugins-only: with plugins only). It authenticates as the owner unless
# -H 'Authorization: ...' says otherwise.
get() { "$BIN/dimhost" get "$@"; }
# until_status STATUS ARGS...: waits (≤ 2 s) until get -plugins-only ARGS
# answers STATUS. A plugin hears of a settings change a moment after
# dimplugctl config set returns.
until_status() {
	local want=$1
	shift
	for _ in $(seq 40); do
		get -plugins-only "$@" | sed -n 1p | grep -q ": $want\$" && return 0
		sleep 0.05
	done
	echo "still not $want: $*" >&2
	return 1
}

RUNTIME_ARGS=()
if [ "$(id -u)" != 0 ]; then
	RUNTIME_ARGS=(--insecure-no-sandbox)
	step "not root: the container sandbox needs root, so plugins run WITHOUT a sandbox"
fi

step "the daemon's config file (dimplugd config check: each key, and whether it comes from the file or the default)"
METRICS=$TMP/metrics.sock
cat >"$TMP/config.toml" <<CONF
# the demo's dimplugd config (a service reads /etc/dimplugd/config.toml)
state_dir = "$TMP/state"
socket = "$SOCK"
control_socket = "$CTL"
container_state = "$TMP/containers"
cgroup_parent = "dimplugd-demo-$$"
metrics_listen = "unix:$METRICS"   # Prometheus metrics and /healthz
plugin_log_size = "2MiB"           # per plugin, rotated, kept across restarts
CONF
"$BIN/dimplugd" config check --config "$TMP/config.toml" | grep -v '# default$'

step "starting dimplugd serve --config $TMP/config.toml"
"$BIN/dimplugd" serve --config "$TMP/config.toml" \
	${RUNTIME_ARGS[@]+"${RUNTIME_ARGS[@]}"} 2>"$TMP/daemon.log" &
DAEMON=$!
cleanup() {
	kill -TERM "$DAEMON" 2>/dev/null || true
	wait "$DAEMON" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
for _ in $(seq 100); do
	[ -S "$CTL" ] && break # created after the host socket
	kill -0 "$DAEMON" 2>/dev/null || { cat "$TMP/daemon.log"; exit 1; }
	sleep 0.05
done
"$BIN/dimplugctl" status

step "a publisher signs a package: dimplugctl keygen, pack --sign; the operator trusts the key and installs the .dimplug"
"$BIN/dimplugctl" keygen --unencrypted -o "$TMP/acme" | sed 's/^/  /' # --unencrypted: a demo; publishers keep theirs encrypted
"$BIN/dimplugctl" pack examples/plugins/media-badge --sign "$TMP/acme.key" -o "$TMP/media-badge.dimplug" | sed 's/^/  /'
"$BIN/dimplugctl" trust add "$TMP/acme.pub" --comment "ACME plugins (demo key)" | sed 's/^/  /'
"$BIN/dimplugctl" install --yes "$TMP/media-badge.dimplug" 2>&1 | sed 's/^/  /'

step "installing the other example plugins from their directories (dimplugctl install --yes examples/plugins/<name>)"
for p in examples/plugins/*/; do
	[ "$p" = examples/plugins/media-badge/ ] && continue
	"$BIN/dimplugctl" install --yes "$p" 2>&1 | sed 's/^/  /'
done
for _ in $(seq 100); do # wait until every plugin runs
	"$BIN/dimplugctl" ls | awk 'NR > 1 && $4 != "running" { bad = 1 } END { exit bad }' && break
	sleep 0.05
done
"$BIN/dimplugctl" ls

step "1. the kid logs in (POST /api/v1/auth/login: no plugin hooks it, so no IPC at all)"
LOGIN=$(get -plugins-only -H 'Authorization:' -X POST -d '{"username":"kid","password":"kid"}' /api/v1/auth/login)
echo "$LOGIN"
KID="Authorization: $(sed -n 's/.*"token":"\([^"]*\)".*/\1/p' <<<"$LOGIN")"

step "2. the kid lists the Movies library: parental-controls learns every rating and hides what is above PG"
get -H "$KID" /api/v1/library/1/media

step "3. the kid opens Alien (R) anyway: parental-controls answers 403 before Dim runs (fail-closed)"
get -H "$KID" /api/v1/media/13
note "(the stream is guarded the same way:)"
get -plugins-only -H "$KID" /api/v1/stream/13/manifest | sed -n '1p;$p'

step "3b. the limits are parental-controls' settings: the owner's (dimplugctl config) and each user's own"
"$BIN/dimplugctl" config get parental-controls
note "(the kid chooses G for themselves in Dim's Preferences, here with --user 2: stricter than the owner's PG, so"
note " Hitchhiker (PG) is refused from the next request, without a restart; a user's own limit never loosens the owner's)"
"$BIN/dimplugctl" config set parental-controls max_rating=G --user 2
until_status 403 -H "$KID" /api/v1/media/42
get -plugins-only -H "$KID" /api/v1/media/42 | sed -n '1p;$p'
"$BIN/dimplugctl" config set parental-controls --unset max_rating --user 2
until_status 200 -H "$KID" /api/v1/media/42

step "4. the owner opens a few films: media-badge marks the page, dashboard-rows and parental-controls observe it"
get /api/v1/media/42
for id in 13 13 99; do
	get -plugins-only "/api/v1/media/$id" | sed -n 1p
done

step "5. the owner's dashboard: dashboard-rows adds a Trending row (most viewed)"
get /api/v1/dashboard

step "6. the kid's dashboard: parental-controls (priority -10, the last response hook) filters every row, Trending included"
get -plugins-only -H "$KID" /api/v1/dashboard

step "7. Dim's virtual manifest for media 42 ({gid, tracks}) and its DASH manifest"
MANIFEST=$(get -plugins-only /api/v1/stream/42/manifest)
echo "$MANIFEST"
GID=$(sed -n 's/.*"gid":"\([^"]*\)".*/\1/p' <<<"$MANIFEST")
get -plugins-only "/api/v1/stream/$GID/manifest.mpd" | grep SegmentTemplate | sed -n 1p

step "8. hls-gateway: an HLS playlist next to the DASH manifest (Dim alone has no such route: 404)"
get "/api/v1/stream/$GID/hls/master.m3u8?video=42-video:5000000&audio=42-audio&duration=42"

step "9. the variant playlist points at Dim's own fMP4 segments, which Dim serves"
get -plugins-only "/api/v1/stream/$GID/hls/42-video/index.m3u8?duration=42&target=5" | sed -n 1,14p
get -plugins-only /api/v1/stream/42-video/data/0.m4s | tail -n 1

step "10. the kid plays Hitchhiker: the player posts the position every 15 s, scrobbler observes each post"
for off in 15 30 45; do
	get -plugins-only -H "$KID" -X POST "/api/v1/media/42/progress?offset=$off" | sed -n 1p
done

step "11. the kid's watch history, from scrobbler's own route (GET /api/v1/plugins/scrobbler/history)"
get -plugins-only -H "$KID" /api/v1/plugins/scrobbler/history

step "12. frame streams: a 480p track (init.mp4 + 6 × 600 KB fMP4 segments) through segment-tagger, watched by stream-stats"
note "(dimhost writes each segment straight into shared memory; 3.m4s has no free box, 5.m4s a 64-bit mdat size)"
"$BIN/dimhost" stream -profile 480p -n 6 -bare 3 -large 5 -json
note "(the init segment comes back as the host's own memory, not one byte copied; segment-tagger copies each media"
note " segment once into its own memory — frames it receives are read-only — and tags the free box, or appends one)"

step "13. 1080p (6.3 MB segments), then an audio track: no transform takes audio/*, stream-stats still observes"
"$BIN/dimhost" stream -profile 1080p -n 4 -bare 1
"$BIN/dimhost" stream -profile audio -n 4

step "14. stream-stats' route lists every stream it saw, newest first (here: one line per stream)"
get -plugins-only '/api/v1/plugins/stream-stats/streams?limit=3' | sed -n '1p;$s/},{/},\n{/gp' | cut -c1-150

step "15. what the operator sees: dimplugctl inspect counts each stream stage's work"
"$BIN/dimplugctl" inspect segment-tagger | sed -n '/^Streams:/,/^Granted:/p' | sed '$d'
"$BIN/dimplugctl" inspect stream-stats | sed -n '/^Streams:/,/^Granted:/p' | sed '1d;$d'

step "16. plugins in Dim's web UI: dimhost serves a Dim-like UI, headless Chromium signs in as the kid"
note "(a Preferences tab per plugin rendered from its settings schema, stream-stats' own page in the sidebar and on"
note " the dashboard, media-badge's action on the media page; plugin pages run in sandboxed iframes)"
"$BIN/dimhost" serve -listen 127.0.0.1:0 2>"$TMP/dimhost.log" &
WEB=$!
ADDR=""
for _ in $(seq 100); do
	ADDR=$(sed -n 's/.*dimhost serving.* addr=\([0-9.:]*\).*/\1/p' "$TMP/dimhost.log" | head -n 1)
	[ -n "$ADDR" ] && break
	kill -0 "$WEB" 2>/dev/null || { cat "$TMP/dimhost.log"; exit 1; }
	sleep 0.05
done
SHOTS=$PWD/bin/demo-screenshots
rm -rf "$SHOTS"
"$BIN/dimhost" shots -url "http://$ADDR" -out "$SHOTS" | sed 's/^/  screenshot: /'
kill -TERM "$WEB" && wait "$WEB" || true
note "(run it yourself: bin/dimhost serve -socket <the daemon's host socket>, then open http://127.0.0.1:8000/)"

step "17. the operator's view: dimplugctl status, and a metrics scrape after the demo's traffic"
"$BIN/dimplugctl" status
note "(curl --unix-socket $METRICS http://metrics/metrics, a few lines of it:)"
curl -s --unix-socket "$METRICS" http://metrics/metrics | grep -E \
	'^dimplugd_hook_calls_total\{hook="guard-media"|^dimplugd_hook_failures_total\{hook="guard-media",kind="deadline"|^dimplugd_hook_duration_seconds_count\{hook="guard-media",path="daemon"|^dimplugd_stream_frames_total|^dimplugd_plugin_memory_bytes\{plugin="(parental-controls|stream-stats)"|^dimplugd_ready' |
	head -n 14 | sed 's/^/  /'
note "(and /healthz, for supervisors that prefer HTTP:)"
curl -s --unix-socket "$METRICS" http://metrics/healthz | cut -c1-160
echo

step "dimplugctl logs parental-controls"
"$BIN/dimplugctl" logs parental-controls

step "stopping dimplugd"
kill -TERM "$DAEMON"
wait "$DAEMON" || true
tail -n 2 "$TMP/daemon.log"
echo "demo finished"
