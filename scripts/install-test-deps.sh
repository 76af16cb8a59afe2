#!/usr/bin/env bash
# Installs the programs the test suite drives (Debian/Ubuntu). Run as root;
# as a plain user it only reports what is missing.
set -euo pipefail
need=()
for pair in tar:tar gzip:gzip zstd:zstd xz:xz-utils bzip2:bzip2 setfattr:attr getfattr:attr \
            setfacl:acl getfacl:acl \
            fusermount3:fuse3 fuse-overlayfs:fuse-overlayfs umoci:umoci skopeo:skopeo \
            newuidmap:uidmap newgidmap:uidmap unshare:util-linux setpriv:util-linux \
            podman:podman crun:crun busybox:busybox-static gcc:gcc; do
	cmd=${pair%%:*} pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# The race detector builds with cgo: a C compiler and libc's headers.
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
# Plain users' mounts (the e2e suite runs some as uid 65534) need
# /dev/fuse open to everybody, as every distribution ships it; some
# machines (this CI's among them) come with 0600.
if [ "$(id -u)" -eq 0 ] && [ -c /dev/fuse ]; then
	chmod 0666 /dev/fuse
fi
if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
	echo "missing test tools (install as root): ${need[*]}" >&2
	exit 1
fi
echo "installing test tools: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
