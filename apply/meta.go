package apply

import (
	"archive/tar"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/ownertable"
	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// node names an object the applier just created: by descriptor when it
// holds one (fd >= 0: regular files, directories), else by name in the
// parent directory pfd (symlinks, FIFOs, devices), with calls that never
// follow a symlink at that name.
type node struct {
	pfd         int
	base        string
	fd          int
	placeholder bool // rootless stand-in file for a device
	// permSet, ownerSet: a file created with the entry's permissions,
	// or owner and group, already (see creation).
	permSet, ownerSet bool
}

func (n node) chown(uid, gid int) error {
	if n.fd >= 0 {
		return unix.Fchown(n.fd, uid, gid)
	}
	return unix.Fchownat(n.pfd, n.base, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
}

func (n node) chmod(mode uint32) error {
	if n.fd >= 0 {
		return unix.Fchmod(n.fd, mode)
	}
	return chmodNoFollow(n.pfd, n.base, mode)
}

// chmodNoFollow is fchmodat2(AT_SYMLINK_NOFOLLOW) (Linux >= 6.6), so even a
// name swapped for a symlink behind our back is never followed. Older
// kernels (or seccomp filters that answer EPERM for syscalls they do not
// know) get plain fchmodat, which is still safe against the tar itself:
// nothing the tar does can replace an object this apply just made.
func chmodNoFollow(dirfd int, name string, mode uint32) error {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return err
	}
	_, _, e := unix.Syscall6(unix.SYS_FCHMODAT2, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(mode), unix.AT_SYMLINK_NOFOLLOW, 0, 0)
	switch e {
	case 0:
		return nil
	case unix.ENOSYS, unix.EPERM:
		return unix.Fchmodat(dirfd, name, mode, 0)
	}
	return e
}

func (n node) setxattr(name, value string) error {
	data := unsafe.Slice(unsafe.StringData(value), len(value))
	if n.fd >= 0 {
		return unix.Fsetxattr(n.fd, name, data, 0)
	}
	// No setxattrat before Linux 6.13: go through the parent's descriptor,
	// which resolves only the final name, without following it.
	return unix.Lsetxattr(procPath(n.pfd, n.base), name, data, 0)
}

func (n node) utimes(ts *[2]unix.Timespec) error {
	if n.fd >= 0 {
		return futimens(n.fd, ts)
	}
	return unix.UtimesNanoAt(n.pfd, n.base, ts[:], unix.AT_SYMLINK_NOFOLLOW)
}

func procPath(fd int, base string) string {
	return "/proc/self/fd/" + strconv.Itoa(fd) + "/" + base
}

// futimens sets the times of an open file (utimensat with a NULL path).
func futimens(fd int, ts *[2]unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func entryTimes(hdr *tar.Header) [2]unix.Timespec {
	mtime := unix.Timespec{Sec: hdr.ModTime.Unix(), Nsec: int64(hdr.ModTime.Nanosecond())}
	atime := mtime
	if !hdr.AccessTime.IsZero() {
		atime = unix.Timespec{Sec: hdr.AccessTime.Unix(), Nsec: int64(hdr.AccessTime.Nanosecond())}
	}
	return [2]unix.Timespec{atime, mtime}
}

// meta applies owner, mode, xattrs and (except for directories, whose
// times wait for finish) times. Order matters: chown clears setuid and
// security.capability, so chmod and xattrs come after it.
func (a *applier) meta(hdr *tar.Header, n node, ifmt uint32, rdev uint64) error {
	perm := uint32(hdr.Mode) & 0o7777
	if !a.opts.Rootless {
		if !n.ownerSet {
			if err := n.chown(hdr.Uid, hdr.Gid); err != nil {
				return fmt.Errorf("apply %s: chown %d:%d: %w", hdr.Name, hdr.Uid, hdr.Gid, err)
			}
		}
		if ifmt != unix.S_IFLNK && !n.permSet {
			if err := n.chmod(perm); err != nil {
				return fmt.Errorf("apply %s: chmod %04o: %w", hdr.Name, perm, err)
			}
		}
	} else if a.opts.ChownMapped {
		a.chownMapped(hdr, n)
	}
	if a.opts.Rootless && ifmt != unix.S_IFLNK {
		disk := perm&0o777 | 0o600
		switch {
		case n.placeholder:
			disk = 0o600
		case ifmt == unix.S_IFDIR:
			disk |= 0o700
		}
		if err := n.chmod(disk); err != nil {
			return fmt.Errorf("apply %s: chmod %04o: %w", hdr.Name, disk, err)
		}
		// Linux allows user.* xattrs only on regular files and
		// directories: FIFOs (and symlinks) get their record in the
		// layer's special-owners table (keepSpecialOwner), and a 0/0
		// device is a whiteout on disk, which has no owner to show.
		switch {
		case ifmt == unix.S_IFREG || ifmt == unix.S_IFDIR || n.placeholder:
			rec := statoverride.Format(statoverride.Stat{UID: uint32(hdr.Uid), GID: uint32(hdr.Gid), Mode: ifmt | perm, Rdev: rdev})
			if err := n.setxattr(statoverride.Xattr, rec); err != nil {
				return fmt.Errorf("apply %s: set %s: %w", hdr.Name, statoverride.Xattr, err)
			}
		case ownertable.NeedsTable(ifmt):
		case hdr.Uid != 0 || hdr.Gid != 0 || perm&0o7000 != 0:
			a.log.Warn("owner or special mode bits lost: a 0/0 device is a whiteout in the layer",
				"entry", hdr.Name, "uid", hdr.Uid, "gid", hdr.Gid, "mode", fmt.Sprintf("%04o", perm))
		}
	}
	if err := a.xattrs(hdr, n, ifmt); err != nil {
		return err
	}
	if ifmt == unix.S_IFDIR {
		return nil
	}
	ts := entryTimes(hdr)
	if err := n.utimes(&ts); err != nil {
		return fmt.Errorf("apply %s: set times: %w", hdr.Name, err)
	}
	return nil
}

// chownMapped gives a rootless entry the tar's owner and group where the
// caller may (root of a user namespace whose map holds them), each on its
// own: an ID the namespace does not map (EINVAL) stays the caller's, and
// the override record keeps the truth either way.
func (a *applier) chownMapped(hdr *tar.Header, n node) {
	if n.chown(hdr.Uid, hdr.Gid) == nil {
		return
	}
	n.chown(hdr.Uid, -1)
	n.chown(-1, hdr.Gid)
}

const paxXattrPrefix = "SCHILY.xattr."

func (a *applier) xattrs(hdr *tar.Header, n node, ifmt uint32) error {
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, paxXattrPrefix); ok {
			if err := a.xattr(hdr, n, ifmt, name, v); err != nil {
				return err
			}
		}
	}
	// Deprecated, but headers built by hand may carry only this field.
	for name, v := range hdr.Xattrs {
		if _, dup := hdr.PAXRecords[paxXattrPrefix+name]; dup {
			continue
		}
		if err := a.xattr(hdr, n, ifmt, name, v); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) xattr(hdr *tar.Header, n node, ifmt uint32, name, value string) error {
	if name == "" {
		a.log.Warn("skipping xattr with an empty name", "entry", hdr.Name)
		return nil
	}
	if whiteout.IsPrivateXattr(name) {
		isOpaque := name == whiteout.Trusted.OpaqueXattr() || name == whiteout.User.OpaqueXattr()
		if isOpaque && ifmt == unix.S_IFDIR && value == whiteout.OpaqueValue {
			name = a.opts.OpaqueNamespace.OpaqueXattr()
		} else {
			a.log.Warn("skipping private xattr", "entry", hdr.Name, "xattr", name)
			return nil
		}
	} else if strings.HasPrefix(name, "user.") && ifmt != unix.S_IFREG && ifmt != unix.S_IFDIR && !n.placeholder {
		a.log.Warn("skipping user xattr on a special file (Linux refuses them)", "entry", hdr.Name, "xattr", name)
		return nil
	}
	err := n.setxattr(name, value)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENOTSUP) {
		a.log.Warn("skipping xattr the filesystem does not support", "entry", hdr.Name, "xattr", name, "err", err)
		return nil
	}
	refused := errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
	if a.opts.Rootless && refused && name == statoverride.SecurityCapability && (ifmt == unix.S_IFREG || ifmt == unix.S_IFDIR) {
		// Setting it needs CAP_SETFCAP: keep it where the union and a
		// commit find it (statoverride.CapabilityXattr).
		if err := n.setxattr(statoverride.CapabilityXattr, value); err != nil {
			return fmt.Errorf("apply %s: set %s: %w", hdr.Name, statoverride.CapabilityXattr, err)
		}
		return nil
	}
	if a.opts.Rootless && refused &&
		(strings.HasPrefix(name, "security.") || strings.HasPrefix(name, "trusted.")) {
		a.log.Warn("skipping privileged xattr", "entry", hdr.Name, "xattr", name, "err", err)
		return nil
	}
	return fmt.Errorf("apply %s: set xattr %s: %w", hdr.Name, name, err)
}
