#!/usr/bin/env bash
# Runs the end-to-end suite again as a plain user (the rootless pass).
# Run as root: creates the user layerfs-test (once), opens /dev/fuse to
# everybody as distributions ship it (0666), builds the test binary and
# layerfs as root, copies both where the user can read them, and runs the
# tests as that user with LAYERFS_TEST_ROOTLESS=1. Extra arguments go to
# the test binary (e.g. -test.run 'Mount').
set -euo pipefail
cd "$(dirname "$0")/.."

user=${LAYERFS_TEST_USER:-layerfs-test}
if [ "$(id -u)" -ne 0 ]; then
	echo "test-rootless: run as root (it creates the user $user and runs the suite as that user)" >&2
	exit 1
fi
for tool in useradd runuser fusermount3; do
	command -v "$tool" >/dev/null || { echo "test-rootless: $tool is missing" >&2; exit 1; }
done
if ! id "$user" >/dev/null 2>&1; then
	useradd --create-home --shell /bin/sh "$user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
[ -d "$home" ] || { mkdir -p "$home"; chown "$user:" "$home"; }
chmod 0666 /dev/fuse

work=$(mktemp -d /tmp/layerfs-rootless-XXXXXX)
cleanup() {
	# Whatever the tests left mounted under the user's temp dirs goes.
	awk -v u="$work" '$2 ~ "^"u {print $2}' /proc/self/mounts | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
	# Daemons of this run (by pid: only those running our copy of layerfs).
	for pid in $(pgrep -u "$user" || true); do
		if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$work/bin/layerfs" ]; then
			echo "test-rootless: killing leftover daemon $pid" >&2
			kill "$pid" 2>/dev/null || true
		fi
	done
	rm -rf "$work"
}
trap cleanup EXIT
go=${GO:-go}
"$go" build -o "$work/bin/layerfs" ./cmd/layerfs
ln -sf layerfs "$work/bin/layerfs-overlay"
"$go" test -c -o "$work/e2e.test" ./tests/e2e
mkdir -p "$work/tmp"
chown "$user:" "$work/tmp"
chmod 0755 "$work" "$work/bin"

# A login-like environment: the user's HOME and PATH, the test's TMPDIR.
cd "$work"
runuser -u "$user" -- env -i \
	HOME="$home" USER="$user" LOGNAME="$user" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
	TMPDIR="$work/tmp" CI="${CI:-}" \
	LAYERFS_TEST_ROOTLESS=1 LAYERFS_TEST_BIN="$work/bin/layerfs" \
	./e2e.test -test.v -test.count=1 -test.timeout 15m "$@"
