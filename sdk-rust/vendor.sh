#!/usr/bin/env bash
# vendor.sh — make the Rust crates sdk-rust needs available offline, from
# Debian 13 (trixie)'s packaged crates, without changing the system.
#
#   sdk-rust/vendor.sh [CACHE_DIR]        (or RUST_VENDOR_DIR=CACHE_DIR)
#
# crates.io is not reachable where this project builds, and Debian 12's
# packaged crates are too old (capnp 0.14, no axum). Debian 13 packages the
# capnp 0.19 family, tokio, tower, hyper 1 and axum as librust-*-dev .debs,
# each holding the crate's source under /usr/share/cargo/registry/<crate>-<ver>/
# with a .cargo-checksum.json: exactly a cargo "directory" source. This
# script
#
#   1. writes a private apt configuration under CACHE_DIR/apt (its own
#      sources.list naming trixie, its own lists, cache and an empty dpkg
#      status) — nothing in /etc/apt or /var/lib/apt is read or written;
#      the Release file is verified with trixie's keys from the system's
#      debian-archive-keyring (Debian 12's package carries them);
#   2. apt-get update under that configuration;
#   3. computes the closure of the librust-*-dev packages below from their
#      Depends (apt-cache depends --recurse), downloads the .debs (apt-get
#      download verifies each against the signed index) and
#   4. unpacks each one's crate directory into CACHE_DIR/registry, which
#      sdk-rust/.cargo/config.toml (and rust.mk's --config) names as the
#      replacement of crates-io.
#
# Idempotent: when CACHE_DIR/registry is complete for this script's
# package list it does nothing (delete CACHE_DIR/stamp to refresh). A run
# that fails leaves the previous registry in place.
set -euo pipefail

CACHE=${1:-${RUST_VENDOR_DIR:-}}
if [ -z "$CACHE" ]; then
	echo "usage: $0 CACHE_DIR (or RUST_VENDOR_DIR=CACHE_DIR $0)" >&2
	exit 2
fi
SUITE=${RUST_VENDOR_SUITE:-trixie}
MIRROR=${RUST_VENDOR_MIRROR:-http://deb.debian.org/debian}
KEYRING=${RUST_VENDOR_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

# The crates sdk-rust uses (and the axum example will), as Debian names
# them; the closure of their Depends is vendored.
PKGS=(
	librust-capnp-dev librust-capnp-rpc-dev librust-capnpc-dev
	librust-futures-dev librust-tokio-dev librust-tokio-util-dev
	librust-tower-dev librust-hyper-dev librust-hyper-util-dev
	librust-http-dev librust-http-body-util-dev librust-bytes-dev
	librust-axum-dev
)

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
KEY="$SUITE $MIRROR ${PKGS[*]} $(sha256sum "$0" | cut -d' ' -f1)"
if [ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$KEY" ] && [ -d "$CACHE/registry" ]; then
	echo "rust vendor: $CACHE/registry is up to date ($(wc -l <"$CACHE/versions.txt") crates)"
	exit 0
fi

for tool in apt-get apt-cache dpkg-deb tar; do
	command -v "$tool" >/dev/null || { echo "rust vendor: $tool is missing (this needs a Debian system)" >&2; exit 1; }
done
if [ ! -r "$KEYRING" ]; then
	echo "rust vendor: $KEYRING is missing: install debian-archive-keyring" >&2
	exit 1
fi
# Debian 12's debian-archive-keyring (2023.3+deb12u2 here) carries
# trixie's archive keys; with an older one apt-get update below fails with
# NO_PUBKEY: upgrade debian-archive-keyring (bookworm's updates have it).

APT=$CACHE/apt
mkdir -p "$APT/etc/sources.list.d" "$APT/etc/preferences.d" "$APT/etc/apt.conf.d" \
	"$APT/etc/trusted.gpg.d" "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
: >"$APT/status"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$APT/etc/sources.list"
cat >"$APT/apt.conf" <<EOF
// sdk-rust/vendor.sh's private apt configuration: no system file is used.
Dir "$APT/";
Dir::Etc "$APT/etc/";
Dir::Etc::sourcelist "$APT/etc/sources.list";
Dir::Etc::sourceparts "$APT/etc/sources.list.d";
Dir::Etc::parts "$APT/etc/apt.conf.d";
Dir::Etc::preferences "$APT/etc/preferences";
Dir::Etc::preferencesparts "$APT/etc/preferences.d";
Dir::Etc::trusted "$APT/etc/trusted.gpg";
Dir::Etc::trustedparts "$APT/etc/trusted.gpg.d";
Dir::State "$APT/";
Dir::State::lists "$APT/lists/";
Dir::State::status "$APT/status";
Dir::Cache "$APT/cache/";
Dir::Log "$APT/";
APT::Architecture "$(dpkg --print-architecture)";
APT::Architectures { "$(dpkg --print-architecture)"; };
Acquire::Languages "none";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Debug::NoLocking "true";
APT::Sandbox::User "$(id -un)";
EOF
export APT_CONFIG=$APT/apt.conf
# Nothing from the system's apt configuration may leak in: APT_CONFIG is
# read after /etc/apt/apt.conf.d, so check what apt actually uses.
apt-config dump | grep "^Dir::Etc::sourcelist \"$APT/etc/sources.list\";" >/dev/null || {
	echo "rust vendor: apt did not take the private configuration" >&2
	exit 1
}

echo "rust vendor: apt-get update ($SUITE, private configuration in $APT)"
apt-get -q update 2>&1 | sed 's/^/  /'
# apt-get update exits 0 on some fetch failures: require a verified index.
ls "$APT/lists/"*_"${SUITE}"_InRelease >/dev/null 2>&1 || {
	echo "rust vendor: no verified $SUITE index in $APT/lists (see apt's messages above)" >&2
	exit 1
}

# The closure: every librust package reachable through Depends. Virtual
# names (<...>) are followed to their providers by apt-cache itself.
apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
	--no-replaces --no-enhances --no-pre-depends "${PKGS[@]}" |
	grep -E '^librust-' | sort -u >"$APT/closure.txt"
# Keep only real packages (a name may be virtual at the top level too).
apt-cache show --no-all-versions $(cat "$APT/closure.txt") 2>/dev/null |
	awk '/^Package: /{print $2}' | sort -u >"$APT/packages.txt"
echo "rust vendor: $(wc -l <"$APT/packages.txt") librust packages in the closure"

# Download what is not there yet (apt-get download checks each .deb's
# SHA256 against the signed index); remove what is no longer wanted.
apt-cache show --no-all-versions $(cat "$APT/packages.txt") |
	awk '/^Package: /{p=$2} /^Filename: /{n=split($2,a,"/"); print p, a[n]}' >"$APT/files.txt"
missing() {
	while read -r p f; do
		[ -f "$APT/debs/$f" ] || echo "$p"
	done <"$APT/files.txt"
}
# A mirror drops a connection now and then: try again for what is missing.
for attempt in 1 2 3 4; do
	want=$(missing)
	[ -n "$want" ] || break
	echo "rust vendor: downloading $(echo "$want" | wc -l) packages$([ "$attempt" = 1 ] || echo " (attempt $attempt)")"
	(cd "$APT/debs" && apt-get -q download $want) 2>&1 | grep -Ev '^(Get:|Fetched )' | sed 's/^/  /' || true
	[ "$attempt" = 1 ] || sleep "$attempt"
done
awk '{print $2}' "$APT/files.txt" >"$APT/filenames.txt"
for f in "$APT/debs"/*.deb; do
	grep -qxF "$(basename "$f")" "$APT/filenames.txt" || rm -f "$f"
done
while read -r p f; do
	[ -f "$APT/debs/$f" ] || { echo "rust vendor: $p was not downloaded ($f)" >&2; exit 1; }
done <"$APT/files.txt"

# Unpack each crate into a new registry, then swap it in.
NEW=$CACHE/registry.new
rm -rf "$NEW" "$CACHE/unpack"
mkdir -p "$NEW" "$CACHE/unpack"
for d in "$APT/debs"/*.deb; do
	# Feature packages (librust-foo+bar-dev) hold no files of their own.
	dpkg-deb --fsys-tarfile "$d" | tar -x -C "$CACHE/unpack" --wildcards './usr/share/cargo/registry/*' 2>/dev/null || true
done
for c in "$CACHE/unpack/usr/share/cargo/registry"/*/; do
	c=${c%/}
	[ -f "$c/Cargo.toml" ] && [ -f "$c/.cargo-checksum.json" ] || {
		echo "rust vendor: $(basename "$c") is not a vendored crate (no Cargo.toml or .cargo-checksum.json)" >&2
		exit 1
	}
	# debcargo writes "Could not get crate checksum" where it had no
	# checksum of the upstream .crate; cargo would copy that string into
	# Cargo.lock as the crate's checksum. null means "none" to cargo.
	if grep -q '"package":"Could not get crate checksum"' "$c/.cargo-checksum.json"; then
		echo '{"package":null,"files":{}}' >"$c/.cargo-checksum.json"
	fi
	mv "$c" "$NEW/"
done
rm -rf "$CACHE/unpack"
# The crates and versions, for the record (and the report).
(cd "$NEW" && ls) >"$CACHE/versions.txt"
rm -rf "$CACHE/registry"
mv "$NEW" "$CACHE/registry"
# apt's indexes (about 140 MB) are fetched again by the next refresh
# anyway; the .debs are kept so that a refresh downloads only what changed.
rm -rf "$APT/lists" "$APT/cache"
echo "$KEY" >"$CACHE/stamp"
echo "rust vendor: $(wc -l <"$CACHE/versions.txt") crates in $CACHE/registry ($(du -sh "$CACHE/registry" | cut -f1))"
