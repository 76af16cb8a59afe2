// Package statoverride reads and writes the user.containers.override_stat
// xattr: the owner, group, mode and file type a rootless store could not set
// on disk, in the format containers/storage and fuse-overlayfs use
// ("UID:GID:0MODE" with an optional ":TYPE", TYPE one of file, dir, symlink,
// pipe, socket, char-MAJ-MIN, block-MAJ-MIN).
package statoverride

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Xattr is the attribute's name.
const Xattr = "user.containers.override_stat"

// Stat is what the override records. Mode holds the permission bits
// (07777) and, when the record named a type, the S_IFMT bits too.
type Stat struct {
	UID, GID uint32
	Mode     uint32
	// Rdev is the device number for char-/block- types.
	Rdev uint64
}

// HasType reports whether the record carries a file type.
func (s Stat) HasType() bool { return s.Mode&unix.S_IFMT != 0 }

// Format renders s; a Stat without a type renders in the 3-field form.
func Format(s Stat) string {
	base := fmt.Sprintf("%d:%d:0%o", s.UID, s.GID, s.Mode&07777)
	var typ string
	switch s.Mode & unix.S_IFMT {
	case 0:
		return base
	case unix.S_IFREG:
		typ = "file"
	case unix.S_IFDIR:
		typ = "dir"
	case unix.S_IFLNK:
		typ = "symlink"
	case unix.S_IFIFO:
		typ = "pipe"
	case unix.S_IFSOCK:
		typ = "socket"
	case unix.S_IFCHR:
		typ = fmt.Sprintf("char-%d-%d", unix.Major(s.Rdev), unix.Minor(s.Rdev))
	case unix.S_IFBLK:
		typ = fmt.Sprintf("block-%d-%d", unix.Major(s.Rdev), unix.Minor(s.Rdev))
	}
	return base + ":" + typ
}

// Parse reads a record. The mode field may carry S_IFMT bits itself (as
// some writers emit "0:0:0100755"); an explicit type field wins.
func Parse(v string) (Stat, error) {
	fields := strings.Split(strings.TrimRight(v, "\x00"), ":")
	if len(fields) != 3 && len(fields) != 4 {
		return Stat{}, fmt.Errorf("override_stat %q: want UID:GID:MODE[:TYPE]", v)
	}
	uid, err := strconv.ParseUint(fields[0], 10, 32)
	if err != nil {
		return Stat{}, fmt.Errorf("override_stat %q: uid: %w", v, err)
	}
	gid, err := strconv.ParseUint(fields[1], 10, 32)
	if err != nil {
		return Stat{}, fmt.Errorf("override_stat %q: gid: %w", v, err)
	}
	mode, err := strconv.ParseUint(fields[2], 8, 32)
	if err != nil {
		return Stat{}, fmt.Errorf("override_stat %q: mode: %w", v, err)
	}
	s := Stat{UID: uint32(uid), GID: uint32(gid), Mode: uint32(mode)}
	if len(fields) == 4 {
		s.Mode &= 07777
		if err := parseType(fields[3], &s); err != nil {
			return Stat{}, fmt.Errorf("override_stat %q: %w", v, err)
		}
	}
	return s, nil
}

func parseType(t string, s *Stat) error {
	switch t {
	case "file":
		s.Mode |= unix.S_IFREG
	case "dir":
		s.Mode |= unix.S_IFDIR
	case "symlink":
		s.Mode |= unix.S_IFLNK
	case "pipe":
		s.Mode |= unix.S_IFIFO
	case "socket":
		s.Mode |= unix.S_IFSOCK
	default:
		var kind string
		var maj, min uint32
		parts := strings.Split(t, "-")
		if len(parts) != 3 {
			return fmt.Errorf("unknown type %q", t)
		}
		kind = parts[0]
		a, err1 := strconv.ParseUint(parts[1], 10, 32)
		b, err2 := strconv.ParseUint(parts[2], 10, 32)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("bad device type %q", t)
		}
		maj, min = uint32(a), uint32(b)
		switch kind {
		case "char":
			s.Mode |= unix.S_IFCHR
		case "block":
			s.Mode |= unix.S_IFBLK
		default:
			return fmt.Errorf("unknown type %q", t)
		}
		s.Rdev = unix.Mkdev(maj, min)
	}
	return nil
}

// Get reads the record of path without following a symlink. ok is false
// when there is none.
func Get(path string) (s Stat, ok bool, err error) {
	buf := make([]byte, 128)
	n, err := unix.Lgetxattr(path, Xattr, buf)
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
		return Stat{}, false, nil
	}
	if err != nil {
		return Stat{}, false, fmt.Errorf("read %s of %s: %w", Xattr, path, err)
	}
	s, err = Parse(string(buf[:n]))
	if err != nil {
		return Stat{}, false, fmt.Errorf("%s: %w", path, err)
	}
	return s, true, nil
}

// Set writes the record on path without following a symlink. Linux refuses
// user.* xattrs on symlinks (EPERM); callers that must record a symlink's
// owner keep it elsewhere or accept the loss.
func Set(path string, s Stat) error {
	if err := unix.Lsetxattr(path, Xattr, []byte(Format(s)), 0); err != nil {
		return fmt.Errorf("write %s on %s: %w", Xattr, path, err)
	}
	return nil
}
