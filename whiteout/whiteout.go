// Package whiteout owns the formats that mark a name as deleted, or a
// directory as opaque, inside a layer directory or an overlay upper.
//
// Three families exist in the wild and every one must be understood:
//
//   - overlay-native: a character device 0/0 is a whiteout; a directory with
//     the xattr trusted.overlay.opaque="y" (or user.overlay.opaque="y" on a
//     userxattr mount) is opaque. Linux >= 6.7 also knows "xwhiteouts": a
//     regular empty file carrying {trusted,user}.overlay.whiteout.
//   - OCI / AUFS: a file named ".wh.NAME" hides NAME, a file named
//     ".wh..wh..opq" makes its directory opaque. Other ".wh..wh." names are
//     AUFS bookkeeping and are hidden too.
//
// The store writes only the overlay-native family (so kernel overlayfs can
// stack layer dirs directly); readers use Classify to recognise all of them.
package whiteout

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	// Prefix marks an OCI whiteout file: ".wh.NAME" hides NAME.
	Prefix = ".wh."
	// MetaPrefix starts AUFS bookkeeping names, never user data.
	MetaPrefix = ".wh..wh."
	// OpaqueMarker is the OCI opaque-directory marker file.
	OpaqueMarker = ".wh..wh..opq"

	// OpaqueValue is what overlayfs writes into the opaque xattr.
	OpaqueValue = "y"
)

// Namespace says which xattr namespace overlay metadata lives in: trusted.*
// for a privileged mount, user.* for a userxattr mount (rootless).
type Namespace int

const (
	// Trusted is the namespace kernel overlayfs reads when mounted by root.
	Trusted Namespace = iota
	// User is the namespace read by overlayfs mounted with -o userxattr.
	User
)

// String returns the namespace's xattr prefix without the dot.
func (ns Namespace) String() string {
	if ns == User {
		return "user"
	}
	return "trusted"
}

// ParseNamespace accepts "trusted" or "user".
func ParseNamespace(s string) (Namespace, error) {
	switch s {
	case "trusted":
		return Trusted, nil
	case "user":
		return User, nil
	}
	return Trusted, fmt.Errorf("whiteout: unknown xattr namespace %q (want trusted or user)", s)
}

// OverlayPrefix is the prefix of every overlay private xattr in ns,
// "trusted.overlay." or "user.overlay.".
func (ns Namespace) OverlayPrefix() string { return ns.String() + ".overlay." }

// OpaqueXattr is the name of the opaque-directory xattr in ns.
func (ns Namespace) OpaqueXattr() string { return ns.OverlayPrefix() + "opaque" }

// WhiteoutXattr is the name of the xwhiteout xattr in ns (Linux >= 6.7).
func (ns Namespace) WhiteoutXattr() string { return ns.OverlayPrefix() + "whiteout" }

// Namespaces lists every namespace, in the order readers should try them.
var namespaces = [...]Namespace{Trusted, User}

// Namespaces returns every namespace, trusted first.
func Namespaces() []Namespace { return namespaces[:] }

// Kind is what a directory entry means to a union.
type Kind int

const (
	// None is ordinary data.
	None Kind = iota
	// Whiteout hides the name Target from every layer below.
	Whiteout
	// Opaque marks the entry's parent directory opaque (OCI marker file).
	Opaque
	// Meta is AUFS bookkeeping (".wh..wh.*"): hidden, no effect.
	Meta
)

// Entry is the classification of one directory entry.
type Entry struct {
	Kind Kind
	// Target is the name hidden by a whiteout: NAME for ".wh.NAME", the
	// entry's own name for a device or xattr whiteout.
	Target string
}

// ClassifyName looks only at a name: it finds the OCI/AUFS formats. A name
// that is not one of them is None; the caller must still check the file type
// (IsWhiteoutDevice) for overlay-native whiteouts.
func ClassifyName(name string) Entry {
	switch {
	case !strings.HasPrefix(name, Prefix):
		return Entry{Kind: None}
	case name == OpaqueMarker:
		return Entry{Kind: Opaque}
	case strings.HasPrefix(name, MetaPrefix):
		return Entry{Kind: Meta}
	case len(name) == len(Prefix):
		// ".wh." alone names nothing; hide it rather than expose junk.
		return Entry{Kind: Meta}
	}
	return Entry{Kind: Whiteout, Target: name[len(Prefix):]}
}

// IsWhiteoutDevice reports whether mode/rdev describe an overlay whiteout:
// a character device with device number 0/0.
func IsWhiteoutDevice(mode uint32, rdev uint64) bool {
	return mode&unix.S_IFMT == unix.S_IFCHR && rdev == 0
}

// IsWhiteoutStat is IsWhiteoutDevice for a stat result.
func IsWhiteoutStat(st *unix.Stat_t) bool { return IsWhiteoutDevice(st.Mode, st.Rdev) }

// Classify combines the name, the type and (for the rare empty regular file
// that might be an xwhiteout) the xattrs of the entry name in the directory
// dirfd. st must be the lstat of that entry.
func Classify(dirfd int, name string, st *unix.Stat_t) Entry {
	if e := ClassifyName(name); e.Kind != None {
		return e
	}
	if IsWhiteoutStat(st) {
		return Entry{Kind: Whiteout, Target: name}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0 && isXWhiteout(dirfd, name) {
		return Entry{Kind: Whiteout, Target: name}
	}
	return Entry{Kind: None}
}

// isXWhiteout checks for the Linux 6.7 xattr whiteout on an empty file.
func isXWhiteout(dirfd int, name string) bool {
	for _, ns := range namespaces {
		if ok, _ := hasXattrAt(dirfd, name, ns.WhiteoutXattr()); ok {
			return true
		}
	}
	return false
}

// Create makes an overlay-native whiteout named name in the directory dirfd.
// Creating a 0/0 character device needs CAP_MKNOD in the initial namespace,
// or (Linux >= 5.8) nothing at all: the kernel lets anyone make 0/0.
func Create(dirfd int, name string) error {
	if err := unix.Mknodat(dirfd, name, unix.S_IFCHR|0, 0); err != nil {
		return fmt.Errorf("create whiteout %s: %w", name, err)
	}
	return nil
}

// CreatePath is Create for a path.
func CreatePath(path string) error {
	if err := unix.Mknod(path, unix.S_IFCHR|0, 0); err != nil {
		return fmt.Errorf("create whiteout %s: %w", path, err)
	}
	return nil
}

// SetOpaque marks the directory at path opaque in namespace ns.
func SetOpaque(path string, ns Namespace) error {
	if err := unix.Lsetxattr(path, ns.OpaqueXattr(), []byte(OpaqueValue), 0); err != nil {
		return fmt.Errorf("mark %s opaque (%s): %w", path, ns.OpaqueXattr(), err)
	}
	return nil
}

// SetOpaqueFd marks the directory open as fd opaque in namespace ns.
func SetOpaqueFd(fd int, ns Namespace) error {
	if err := unix.Fsetxattr(fd, ns.OpaqueXattr(), []byte(OpaqueValue), 0); err != nil {
		return fmt.Errorf("mark directory opaque (%s): %w", ns.OpaqueXattr(), err)
	}
	return nil
}

// IsOpaque reports whether the directory at path carries an opaque xattr in
// any namespace. The OCI marker file is found by ClassifyName while listing.
func IsOpaque(path string) (bool, error) {
	for _, ns := range namespaces {
		v, err := getXattr(func(buf []byte) (int, error) { return unix.Lgetxattr(path, ns.OpaqueXattr(), buf) })
		if err != nil {
			if isNoXattr(err) {
				continue
			}
			return false, fmt.Errorf("read opaque xattr of %s: %w", path, err)
		}
		if v == OpaqueValue {
			return true, nil
		}
	}
	return false, nil
}

// IsOpaqueFd is IsOpaque for a directory opened as fd (not O_PATH: xattr
// calls refuse O_PATH descriptors).
func IsOpaqueFd(fd int) (bool, error) {
	for _, ns := range namespaces {
		v, err := getXattr(func(buf []byte) (int, error) { return unix.Fgetxattr(fd, ns.OpaqueXattr(), buf) })
		if err != nil {
			if isNoXattr(err) {
				continue
			}
			return false, fmt.Errorf("read opaque xattr: %w", err)
		}
		if v == OpaqueValue {
			return true, nil
		}
	}
	return false, nil
}

// IsPrivateXattr reports whether an xattr name is overlay or layerfs
// bookkeeping that a union must never show to its users.
func IsPrivateXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") ||
		strings.HasPrefix(name, "user.overlay.") ||
		strings.HasPrefix(name, "user.layerfs.") ||
		strings.HasPrefix(name, "trusted.layerfs.") ||
		// containers/storage's rootless records: override_stat, and
		// security.* kept as user.containers.override_security.*.
		strings.HasPrefix(name, "user.containers.override_") ||
		strings.HasPrefix(name, "user.fuseoverlayfs.")
}

func hasXattrAt(dirfd int, name, attr string) (bool, error) {
	// Xattr calls have no *at form; /proc/self/fd gives one without
	// following a symlink at name itself (Lgetxattr does not follow it).
	p := fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name)
	_, err := unix.Lgetxattr(p, attr, nil)
	if err == nil {
		return true, nil
	}
	if isNoXattr(err) {
		return false, nil
	}
	return false, err
}

func getXattr(get func([]byte) (int, error)) (string, error) {
	buf := make([]byte, 16)
	for {
		n, err := get(buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

func isNoXattr(err error) bool {
	// Unprivileged readers get ENODATA for trusted.*, filesystems without
	// xattrs ENOTSUP: both mean "not marked".
	return errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP)
}
