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

# A subordinate ID range (65536 ids) in /etc/subuid and /etc/subgid, as
# useradd gives new users on most distributions: the user namespace tests
# and rootless podman map it.
for f in /etc/subuid /etc/subgid; do
	touch "$f"
	if ! grep -q "^$user:" "$f"; then
		start=$(awk -F: 'BEGIN { m = 100000 } { e = $2 + $3; if (e > m) m = e } END { print m }' "$f")
		echo "$user:$start:65536" >>"$f"
		echo "test-rootless: added $user:$start:65536 to $f" >&2
	fi
done

# crun refuses a hybrid cgroup layout (v1 hierarchies plus a cgroup2 one)
# while the cgroup2 hierarchy still holds controllers. Binding those
# controllers to v1 hierarchies of their own makes the layout plain v1,
# which crun accepts (rootless podman uses no cgroups on v1 anyway).
unified=/sys/fs/cgroup/unified
if command -v crun >/dev/null && [ -r "$unified/cgroup.controllers" ] &&
	[ "$(stat -f -c %T /sys/fs/cgroup)" != cgroup2fs ]; then
	for c in $(cat "$unified/cgroup.controllers"); do
		mkdir -p "/sys/fs/cgroup/$c"
		if mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"; then
			echo "test-rootless: bound the $c controller to a cgroup v1 hierarchy (crun refuses hybrid cgroups with cgroup2 controllers)" >&2
		fi
	done
fi

work=$(mktemp -d /tmp/layerfs-rootless-XXXXXX)
cleanup() {
	# Whatever the tests left mounted under the user's temp dirs goes.
	awk -v u="$work" '$2 ~ "^"u {print $2}' /proc/self/mounts | sort -r | while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done
	# Daemons of this run (by pid: only those running our copies).
	for pid in $(pgrep -u "$user" || true); do
		case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
		"$work/bin/layerfs" | "$work/bin/layerfs-overlay")
			echo "test-rootless: killing leftover daemon $pid" >&2
			kill "$pid" 2>/dev/null || true
			;;
		esac
	done
	rm -rf "$work"
}
trap cleanup EXIT
go=${GO:-go}
CGO_ENABLED=${CGO_ENABLED:-0} "$go" build -o "$work/bin/layerfs" ./cmd/layerfs
CGO_ENABLED=${CGO_ENABLED:-0} "$go" build -o "$work/bin/layerfs-overlay" ./cmd/layerfs-overlay
"$go" test -c -o "$work/e2e.test" ./tests/e2e
# viewtest's tests too: the fuse driver must work for a plain user.
"$go" test -c -o "$work/viewtest.test" ./viewtest
mkdir -p "$work/tmp"
chown "$user:" "$work/tmp"
chmod 0755 "$work" "$work/bin"

# A login-like environment: the user's HOME and PATH, the test's TMPDIR.
cd "$work"
as_user() {
	runuser -u "$user" -- env -i \
		HOME="$home" USER="$user" LOGNAME="$user" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
		TMPDIR="$work/tmp" CI="${CI:-}" \
		LAYERFS_TEST_ROOTLESS=1 LAYERFS_TEST_BIN="$work/bin/layerfs" \
		"$@"
}
# The same arguments go to both: a -test.run that matches nothing in one
# of them runs nothing there.
status=0
as_user ./viewtest.test -test.v -test.count=1 -test.timeout 5m "$@" || status=$?
as_user ./e2e.test -test.v -test.count=1 -test.timeout 15m "$@" || status=$?
exit $status
