package fusefs

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// layer is one branch of the union: the upper or a lower directory, held
// open so lookups are *at calls relative to it.
type layer struct {
	root  string
	fd    int // O_PATH|O_DIRECTORY
	dev   uint64
	upper bool
	// groups: the layer's hardlink groups (lowers only; see hardlinks.go)
	groups hardlinkGroups
}

func openLayer(root string, upper bool) (*layer, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", root, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat layer %s: %w", root, err)
	}
	return &layer{root: root, fd: fd, dev: st.Dev, upper: upper}, nil
}

// path is the absolute path of rel inside the layer, for the calls that have
// no *at form (xattrs). rel's directories were checked to be directories
// in this layer when they were looked up, so no symlink is followed but
// possibly the last component's, which callers avoid with L* calls.
func (l *layer) path(rel string) string {
	if rel == "." || rel == "" {
		return l.root
	}
	return l.root + "/" + rel
}

func (l *layer) lstat(rel string, st *unix.Stat_t) error {
	return unix.Fstatat(l.fd, rel, st, unix.AT_SYMLINK_NOFOLLOW)
}

func join(dir, name string) string {
	if dir == "." || dir == "" {
		return name
	}
	return dir + "/" + name
}

func splitRel(rel string) (dir, name string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return ".", rel
	}
	return rel[:i], rel[i+1:]
}

// inoMapper packs (st_dev, st_ino) into one st_ino for the view, as
// overlayfs's xino does: devices get small indexes in the order upper,
// lowers, so numbers are stable across remounts of the same view, and the
// index goes into the top bits. With one device the real numbers show.
type inoMapper struct {
	mu     sync.Mutex
	devIdx map[uint64]uint64
	single bool
}

const inoDevShift = 56

func newInoMapper(devs []uint64) *inoMapper {
	m := &inoMapper{devIdx: map[uint64]uint64{}}
	for _, d := range devs {
		if _, ok := m.devIdx[d]; !ok {
			m.devIdx[d] = uint64(len(m.devIdx))
		}
	}
	m.single = len(m.devIdx) == 1
	return m
}

func (m *inoMapper) ino(dev, ino uint64) uint64 {
	m.mu.Lock()
	idx, ok := m.devIdx[dev]
	if !ok {
		// A submount inside a layer: not stable across remounts, but
		// unique while mounted.
		idx = uint64(len(m.devIdx))
		m.devIdx[dev] = idx
		m.single = false
	}
	single := m.single
	m.mu.Unlock()
	if single && idx == 0 {
		return ino
	}
	if ino>>inoDevShift != 0 {
		// Does not fit: mix rather than collide systematically.
		ino = ino*0x9E3779B97F4A7C15 ^ ino>>29
		ino &= 1<<inoDevShift - 1
	}
	return ino | idx<<inoDevShift
}

// xattr helpers ------------------------------------------------------------

// fileRef is a file for metadata calls: a path (l* calls, the last
// component not followed), or, where fd >= 0, an open descriptor (f*
// calls, no path looked up). A path procFd made names an object no name
// leads to through the daemon's descriptor: calls follow that link, since
// l* calls would act on the /proc link itself.
type fileRef struct {
	path   string
	fd     int
	follow bool
}

func pathRef(path string) fileRef {
	return fileRef{path: path, fd: -1, follow: isProcFdPath(path)}
}

// nofollow is the *at flag for f's path.
func (f fileRef) nofollow() int {
	if f.follow {
		return 0
	}
	return unix.AT_SYMLINK_NOFOLLOW
}

func (f fileRef) lstat(st *unix.Stat_t) error {
	if f.fd >= 0 {
		return unix.Fstat(f.fd, st)
	}
	return unix.Fstatat(unix.AT_FDCWD, f.path, st, f.nofollow())
}

func (f fileRef) getxattr(name string, buf []byte) (int, error) {
	switch {
	case f.fd >= 0:
		return unix.Fgetxattr(f.fd, name, buf)
	case f.follow:
		return unix.Getxattr(f.path, name, buf)
	}
	return unix.Lgetxattr(f.path, name, buf)
}

func (f fileRef) listxattr(buf []byte) (int, error) {
	switch {
	case f.fd >= 0:
		return unix.Flistxattr(f.fd, buf)
	case f.follow:
		return unix.Listxattr(f.path, buf)
	}
	return unix.Llistxattr(f.path, buf)
}

func (f fileRef) setxattr(name string, v []byte, flags int) error {
	switch {
	case f.fd >= 0:
		return unix.Fsetxattr(f.fd, name, v, flags)
	case f.follow:
		return unix.Setxattr(f.path, name, v, flags)
	}
	return unix.Lsetxattr(f.path, name, v, flags)
}

func (f fileRef) removexattr(name string) error {
	switch {
	case f.fd >= 0:
		return unix.Fremovexattr(f.fd, name)
	case f.follow:
		return unix.Removexattr(f.path, name)
	}
	return unix.Lremovexattr(f.path, name)
}

func (f fileRef) chown(uid, gid int) error {
	if f.fd >= 0 {
		return unix.Fchown(f.fd, uid, gid)
	}
	return unix.Fchownat(unix.AT_FDCWD, f.path, uid, gid, f.nofollow())
}

// chmod follows a symlink at f's path (Linux cannot change a symlink's
// mode); callers check the type first.
func (f fileRef) chmod(mode uint32) error {
	if f.fd >= 0 {
		return unix.Fchmod(f.fd, mode)
	}
	return unix.Fchmodat(unix.AT_FDCWD, f.path, mode, 0)
}

func (f fileRef) utimes(ts []unix.Timespec) error {
	if f.fd >= 0 {
		return futimens(f.fd, ts)
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, f.path, ts, f.nofollow())
}

// override reads f's override_stat record; ok is false when there is none.
func (f fileRef) override() (s statoverride.Stat, ok bool, err error) {
	var buf [128]byte
	n, err := f.getxattr(statoverride.Xattr, buf[:])
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
		return statoverride.Stat{}, false, nil
	}
	if err != nil {
		return statoverride.Stat{}, false, fmt.Errorf("read %s of %s: %w", statoverride.Xattr, f.path, err)
	}
	if s, err = statoverride.Parse(string(buf[:n])); err != nil {
		return statoverride.Stat{}, false, fmt.Errorf("%s: %w", f.path, err)
	}
	return s, true, nil
}

// setOverride writes f's override_stat record.
func (f fileRef) setOverride(s statoverride.Stat) error {
	if err := f.setxattr(statoverride.Xattr, []byte(statoverride.Format(s)), 0); err != nil {
		return fmt.Errorf("write %s on %s: %w", statoverride.Xattr, f.path, err)
	}
	return nil
}

// xattrValue reads xattr name of f, whatever its size.
func (f fileRef) xattrValue(name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := f.getxattr(name, buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err2 := f.getxattr(name, nil)
			if err2 != nil {
				return nil, err2
			}
			buf = make([]byte, sz+64)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// xattrNames lists the xattrs of f.
func (f fileRef) xattrNames() ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := f.listxattr(buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err2 := f.listxattr(nil)
			if err2 != nil {
				return nil, err2
			}
			buf = make([]byte, sz+256)
			continue
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

// futimens sets the times of the file open as fd (utimensat with a NULL
// path, which x/sys has no wrapper for).
func futimens(fd int, ts []unix.Timespec) error {
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func getXattr(path, name string) ([]byte, error) { return pathRef(path).xattrValue(name) }

func listXattrs(path string) ([]string, error) { return pathRef(path).xattrNames() }

func noXattr(err error) bool {
	return errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM)
}

// overlayXattr reads an overlay/layerfs private xattr (suffix like
// "overlay.opaque") from either namespace, trusted first.
func overlayXattr(path, suffix string) (string, bool) {
	for _, ns := range whiteout.Namespaces() {
		v, err := getXattr(path, ns.String()+"."+suffix)
		if err == nil {
			return string(v), true
		}
	}
	return "", false
}

const (
	originSuffix   = "layerfs.origin"
	nlinkSuffix    = "layerfs.nlink"
	redirectSuffix = "overlay.redirect"
	opaqueSuffix   = "overlay.opaque"
)

// readOrigin returns the view inode number recorded on an upper object.
func readOrigin(path string) (uint64, bool) {
	v, ok := overlayXattr(path, originSuffix)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}

// dirMarks is what a directory in one layer says about itself.
type dirMarks struct {
	opaque      bool // hides everything below it
	xwhiteouts  bool // may hold xattr whiteouts (overlay.opaque="x")
	redirect    string
	hasRedirect bool
}

func readDirMarks(l *layer, rel string) dirMarks {
	var m dirMarks
	p := l.path(rel)
	if v, ok := overlayXattr(p, opaqueSuffix); ok {
		switch v {
		case whiteout.OpaqueValue:
			m.opaque = true
		case "x":
			m.xwhiteouts = true
		}
	}
	if _, ok := overlayXattr(p, "overlay.xwhiteouts"); ok {
		m.xwhiteouts = true
	}
	if !m.opaque {
		var st unix.Stat_t
		if l.lstat(join(rel, whiteout.OpaqueMarker), &st) == nil {
			m.opaque = true
		}
	}
	if l.upper {
		m.redirect, m.hasRedirect = overlayXattr(p, redirectSuffix)
	}
	return m
}

// isWhiteout classifies an existing entry (already known not to be a
// private name). xwh says whether the parent dir may hold xwhiteouts.
func isWhiteout(l *layer, rel string, st *unix.Stat_t, xwh bool) bool {
	if whiteout.IsWhiteoutStat(st) {
		return true
	}
	if xwh && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0 {
		if _, ok := overlayXattr(l.path(rel), "overlay.whiteout"); ok {
			return true
		}
	}
	return false
}

// hasWhFile reports whether the OCI whiteout file ".wh.NAME" sits next to
// rel in l.
func hasWhFile(l *layer, rel string) bool {
	dir, name := splitRel(rel)
	var st unix.Stat_t
	return l.lstat(join(dir, whiteout.Prefix+name), &st) == nil
}

// lstatBeneath is lstat for a path whose directories were not checked:
// the parent is opened with openat2 so no symlink is followed and the walk
// cannot leave the layer.
func (l *layer) lstatBeneath(rel string, st *unix.Stat_t) error {
	dir, name := splitRel(rel)
	if dir == "." {
		return l.lstat(rel, st)
	}
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(l.fd, dir, &how)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return unix.ENOENT
		}
		return err
	}
	defer unix.Close(fd)
	return unix.Fstatat(fd, name, st, unix.AT_SYMLINK_NOFOLLOW)
}
