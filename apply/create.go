package apply

import (
	"archive/tar"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A privileged apply creates a regular file already in the state its
// entry asks for whenever it can tell how openat will make it: with the
// entry's permissions when the umask leaves them alone (and no default
// ACL decides instead), owned by the entry's owner and group when they
// are the caller's and the directory does not hand down its group. The
// fchmod and fchown that would change nothing are then left out: two of
// the seven system calls a small file costs. Setuid, setgid and sticky
// bits always go through fchmod after fchown, which would clear them.
type creation struct {
	known      bool // the umask could be read: the shortcuts apply
	umask      uint32
	euid, egid int
	// defaultACL: a directory of the layer may have a default ACL,
	// which decides new files' modes instead of the umask.
	defaultACL bool
	// sgidDirs are the directories (cleaned names, "" for the root)
	// whose new files take the directory's group.
	sgidDirs map[string]bool
}

const aclDefaultXattr = "system.posix_acl_default"

// initCreation learns the umask and the layer root's state.
func (a *applier) initCreation() {
	c := &a.create
	c.sgidDirs = map[string]bool{}
	if a.opts.Rootless {
		return
	}
	umask, ok := processUmask()
	if !ok {
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(a.root, &st); err != nil {
		return
	}
	c.sgidDirs[""] = st.Mode&unix.S_ISGID != 0
	if _, err := unix.Fgetxattr(a.root, aclDefaultXattr, nil); err != unix.ENODATA && err != unix.ENOTSUP {
		c.defaultACL = true
	}
	c.umask, c.euid, c.egid, c.known = umask, os.Geteuid(), os.Getegid(), true
}

// noteDir records what a directory entry makes of new files inside it:
// call it once its metadata is applied.
func (a *applier) noteDir(name string, hdr *tar.Header) {
	if uint32(hdr.Mode)&unix.S_ISGID != 0 {
		a.create.sgidDirs[name] = true
	} else {
		delete(a.create.sgidDirs, name)
	}
	if _, ok := hdr.PAXRecords[paxXattrPrefix+aclDefaultXattr]; ok {
		a.create.defaultACL = true
	}
	if _, ok := hdr.Xattrs[aclDefaultXattr]; ok {
		a.create.defaultACL = true
	}
}

// fileCreation returns the mode to create a regular file with and whether
// that already gives it the entry's permissions and owner.
func (a *applier) fileCreation(hdr *tar.Header, parent string) (mode uint32, permSet, ownerSet bool) {
	c := &a.create
	if !c.known {
		return 0o600, false, false
	}
	perm := uint32(hdr.Mode) & 0o7777
	ownerSet = hdr.Uid == c.euid && hdr.Gid == c.egid && !c.sgidDirs[parent]
	if perm&^0o777 == 0 && perm&c.umask == 0 && !c.defaultACL {
		return perm, true, ownerSet
	}
	return 0o600, false, ownerSet
}

// processUmask reads the umask without changing it (Linux >= 4.7).
func processUmask() (uint32, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			return uint32(m), err == nil
		}
	}
	return 0, false
}
