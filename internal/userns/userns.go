// Package userns says whether this process runs in the initial user
// namespace, the one question the store (trusted.* xattrs, chown and
// device nodes), the union (default_permissions) and the kernel driver
// (userxattr) all decide by.
package userns

import (
	"os"
	"strings"
)

// Initial reports whether this process runs in the initial user
// namespace: its /proc/self/uid_map is the identity map of every ID. ok is
// false when the map cannot be read; callers choose what that means.
func Initial() (initial, ok bool) {
	m, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false, false
	}
	return IsIdentityMap(string(m)), true
}

// IsIdentityMap reports whether uid_map (or gid_map) text maps every ID
// to itself, as the initial namespace's does.
func IsIdentityMap(m string) bool {
	f := strings.Fields(m)
	return len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295"
}

// PrivilegedRoot reports whether this process is root in the initial
// user namespace (an unreadable map: not privileged).
func PrivilegedRoot() bool {
	if os.Geteuid() != 0 {
		return false
	}
	initial, ok := Initial()
	return ok && initial
}
