package fusefs

import (
	"errors"
	"io"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/whiteout"
)

// Copy-up builds the upper copy under Work/layerfs/tmp and renames (or, for
// a lower hardlink group, links via the index) it into the upper, so a crash
// leaves either the lower object or the complete copy visible. Parents are
// copied up first, each with its own metadata.

// copyUpDir makes directory d exist in the upper.
func (u *union) copyUpDir(d *node) syscall.Errno {
	if u.readOnly || u.upper == nil {
		return syscall.EROFS
	}
	d.mu.Lock()
	done := d.hasUpper
	d.mu.Unlock()
	if done {
		return 0
	}
	if !d.IsRoot() {
		_, p := d.Parent()
		if p == nil {
			return syscall.ENOENT
		}
		if errno := u.copyUpDir(p); errno != 0 {
			return errno
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hasUpper {
		return 0
	}
	rel, ok := d.upperRel()
	if !ok {
		return syscall.ENOENT
	}
	lowers, lowerRel := d.lowerDirs(), d.dirLowerRel()
	if len(lowers) == 0 {
		return syscall.EIO
	}
	src := u.lowers[lowers[0].layer]
	var st unix.Stat_t
	if err := src.lstat(lowerRel, &st); err != nil {
		return toErrno(err)
	}
	tmp := u.tmpName()
	if err := unix.Mkdirat(u.workFd, tmp, 0o700); err != nil {
		return toErrno(err)
	}
	tmpPath := u.workPath + "/" + tmp
	if err := u.copyMeta(pathRef(src.path(lowerRel)), pathRef(tmpPath), &st, d.ino); err != nil {
		unix.Unlinkat(u.workFd, tmp, unix.AT_REMOVEDIR)
		return toErrno(err)
	}
	if err := unix.Renameat(u.workFd, tmp, u.upper.fd, rel); err != nil {
		unix.Unlinkat(u.workFd, tmp, unix.AT_REMOVEDIR)
		// A copy-up of another name of a hardlink group may have made
		// it (by path) already.
		if u.upper.lstat(rel, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return toErrno(err)
		}
	}
	d.hasUpper = true
	d.more().upperMadeHere = true
	u.debugf("copy-up dir", "path", rel)
	// The kernel may hold the lower dir's attributes for LowerTimeout;
	// the upper copy's change as entries are added. Tell it, outside
	// this request (an invalidation must not wait on it).
	u.notifyAttrs(d)
	return 0
}

// copyUp gives non-directory n an upper copy. skipData (open with O_TRUNC)
// copies only the metadata.
func (u *union) copyUp(n *node, skipData bool) syscall.Errno {
	if u.readOnly || u.upper == nil {
		return syscall.EROFS
	}
	if n.isDir {
		return u.copyUpDir(n)
	}
	n.mu.Lock()
	done := n.hasUpper || n.indexedLocked()
	n.mu.Unlock()
	if done {
		return 0
	}
	name, p := n.Parent()
	if p == nil {
		return syscall.ENOENT
	}
	if errno := u.copyUpDir(p); errno != 0 {
		return errno
	}
	created, errno := u.copyUpFile(n, p, name, skipData)
	// Directories made for the group's other names: their nodes (taken
	// after n's lock is released) learn they have an upper now.
	u.markUpperDirs(created)
	return errno
}

// copyUpFile does copyUp's work under n's lock. A lower hardlink group
// whose names all lie in its layer is copied once and linked under every
// name the view shows as that object, so the upper alone describes the
// view; a group with names elsewhere (a layer hardlinking its parent's
// files) goes through the hardlink index.
func (u *union) copyUpFile(n *node, pn *node, name string, skipData bool) (created []string, errno syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.hasUpper || n.indexedLocked() {
		return nil, 0
	}
	prel, ok := pn.upperRel()
	if !ok {
		return nil, syscall.ENOENT
	}
	rel := join(prel, name)
	if n.lowerLayer < 0 {
		return nil, syscall.EIO
	}
	li := int(n.lowerLayer)
	lowerRel, ok := n.lowerRelLocked()
	if !ok {
		return nil, syscall.ENOENT
	}
	src := u.lowers[li]
	var st unix.Stat_t
	if err := src.lstat(lowerRel, &st); err != nil {
		return nil, toErrno(err)
	}
	if skipData && unix.Faccessat(src.fd, lowerRel, unix.W_OK, unix.AT_EACCESS) != nil {
		// The truncate that asked for no data would then fail on the
		// copy (same owner and mode) and leave it empty: copy it all.
		skipData = false
	}
	idx := u.indexRelFor(n.ino)
	var others []string // the group's other visible names, linked to the copy
	indexed := false
	viewNlink := uint32(st.Nlink)
	if st.Nlink > 1 {
		// Another mount (or a crash after indexing) may have done it.
		var ist unix.Stat_t
		if unix.Fstatat(u.workFd, idx, &ist, unix.AT_SYMLINK_NOFOLLOW) == nil {
			if err := unix.Linkat(u.workFd, idx, u.upper.fd, rel, 0); err != nil && !errors.Is(err, unix.EEXIST) {
				return nil, toErrno(err)
			}
			n.more().indexed, n.hasUpper = true, true
			syncKernelNlink(u.workPath + "/" + idx) // kernelindex.go
			return nil, 0
		}
		vis, complete := u.visibleGroupNames(li, &st)
		seen := false
		for _, p := range vis {
			if p != rel {
				others = append(others, p)
			} else {
				seen = true
			}
		}
		// Linking the names found (at their lower paths or under
		// renamed directories) is the whole group when every name is
		// in this layer and the one the change came through is among
		// them; otherwise the index serves the names not linked yet
		// (copyUpName links them as they are used).
		indexed = !complete || !seen
		if indexed {
			viewNlink = u.lowerViewNlink(li, &st)
		}
	}
	tmp := u.tmpName()
	tmpPath := u.workPath + "/" + tmp
	c, err := u.copyObject(src, lowerRel, &st, tmp, skipData)
	defer c.close()
	if err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, toErrno(err)
	}
	if c.out >= 0 {
		err = u.copyMeta(fileRef{fd: c.in}, fileRef{fd: c.out}, &st, n.ino)
	} else {
		err = u.copyMeta(pathRef(src.path(lowerRel)), pathRef(tmpPath), &st, n.ino)
	}
	// The copy's inode number, for isObject: a symlink has no origin
	// record where only user.* xattrs are allowed.
	var cst unix.Stat_t
	if err == nil {
		if c.out >= 0 {
			err = unix.Fstat(c.out, &cst)
		} else {
			err = unix.Fstatat(u.workFd, tmp, &cst, unix.AT_SYMLINK_NOFOLLOW)
		}
	}
	if err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, toErrno(err)
	}
	// A symlink's or FIFO's owner lives in a table, not on the copy.
	if err := u.carrySpecialOwner(li, lowerRel, &st, append(others, rel)...); err != nil { // ownertable.go
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, toErrno(err)
	}
	var kernelFh []byte // the entry's name in the kernel's index too
	if indexed {
		setOverlayXattr(tmpPath, u.ns, nlinkSuffix, strconv.FormatUint(uint64(viewNlink), 10))
		if kernelFh = u.kernelHandle(src, lowerRel); kernelFh != nil { // kernelindex.go
			if err := unix.Lsetxattr(tmpPath, kernelOriginXattr, kernelFh, 0); err != nil {
				kernelFh = nil
			}
		}
	}
	// On disk before a name shows it, as overlayfs syncs its copy-ups:
	// after a power loss the upper must not show an empty or torn copy
	// (ext4 may commit a rename before the data of a file it has not
	// allocated blocks for yet).
	if c.out >= 0 && st.Size > 0 && !skipData && !u.opts.Volatile {
		if err := unix.Fsync(c.out); err != nil {
			unix.Unlinkat(u.workFd, tmp, 0)
			return nil, toErrno(err)
		}
	}
	c.close()
	if indexed {
		if err := unix.Renameat(u.workFd, tmp, u.workFd, idx); err != nil {
			unix.Unlinkat(u.workFd, tmp, 0)
			return nil, toErrno(err)
		}
		tmp = idx
		n.more().indexed = true
	}
	// The other names first, the one the change came through last: the
	// copy holds the lower's data until this returns, so a crash between
	// links leaves every name with the same content.
	for _, p := range others {
		dir, _ := splitRel(p)
		var err error
		if created, err = u.ensureUpperDir(dir, created); err != nil {
			u.log.Warn("copy-up: cannot link another name of a hardlink group", "path", p, "err", err)
			continue
		}
		if err := unix.Linkat(u.workFd, tmp, u.upper.fd, p, 0); err != nil && !errors.Is(err, unix.EEXIST) {
			u.log.Warn("copy-up: cannot link another name of a hardlink group", "path", p, "err", err)
		}
	}
	if indexed {
		if err := unix.Linkat(u.workFd, idx, u.upper.fd, rel, 0); err != nil {
			return created, toErrno(err)
		}
	} else if err := unix.Renameat(u.workFd, tmp, u.upper.fd, rel); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return created, toErrno(err)
	}
	n.hasUpper = true
	if u.inos.ino(cst.Dev, cst.Ino) != n.ino {
		n.more().upperIno = cst.Ino
	}
	if kernelFh != nil {
		u.linkKernelIndex(idx, kernelFh)
	}
	u.debugf("copy-up", "path", rel, "indexed", indexed, "names", len(others)+1, "data", !skipData)
	return created, 0
}

// copyObject creates the copy of a non-directory at tmp in the work dir.
// A regular file's copy and its lower file stay open in the result, for
// the metadata and the sync that follow.
func (u *union) copyObject(src *layer, rel string, st *unix.Stat_t, tmp string, skipData bool) (copying, error) {
	c := copying{in: -1, out: -1}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		var err error
		if c.in, err = unix.Openat(src.fd, rel, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err != nil {
			return c, err
		}
		if c.out, err = unix.Openat(u.workFd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600); err != nil {
			return c, err
		}
		if !skipData {
			if err := copyData(c.in, c.out, st.Size); err != nil {
				return c, err
			}
		}
		return c, nil
	case unix.S_IFLNK:
		buf := make([]byte, st.Size+1)
		n, err := unix.Readlinkat(src.fd, rel, buf)
		if err != nil {
			return c, err
		}
		return c, unix.Symlinkat(string(buf[:n]), u.workFd, tmp)
	default:
		return c, unix.Mknodat(u.workFd, tmp, st.Mode, int(st.Rdev))
	}
}

// copying holds a regular file's copy-up open: the lower file (in) and
// the copy (out); -1 when not open.
type copying struct{ in, out int }

func (c *copying) close() {
	if c.in >= 0 {
		unix.Close(c.in)
		c.in = -1
	}
	if c.out >= 0 {
		unix.Close(c.out)
		c.out = -1
	}
}

// copyData copies size bytes, keeping holes: only the data extents
// (SEEK_DATA/SEEK_HOLE) are copied, with copy_file_range (which reflinks
// where the filesystem can).
func copyData(in, out int, size int64) error {
	off := int64(0)
	for off < size {
		data, err := unix.Seek(in, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			// No SEEK_DATA: one extent.
			data = off
		}
		hole, err := unix.Seek(in, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if hole > size {
			hole = size
		}
		if err := copyRange(in, out, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return unix.Ftruncate(out, size)
}

func copyRange(in, out int, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		c, err := unix.CopyFileRange(in, &roff, out, &woff, int(min(n, 1<<30)), 0)
		if err != nil || c == 0 {
			if err == nil || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
				return copyRangeRW(in, out, off, n)
			}
			return err
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}

func copyRangeRW(in, out int, off, n int64) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		c, err := unix.Pread(in, buf[:min(int64(len(buf)), n)], off)
		if err != nil {
			return err
		}
		if c == 0 {
			return io.ErrUnexpectedEOF
		}
		if _, err := unix.Pwrite(out, buf[:c], off); err != nil {
			return err
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}

// copyMeta gives dst the owner, mode, xattrs (overlay bookkeeping
// excepted) and times of src (stat st), and records the view inode as its
// origin. Order matters: chown clears set-id bits and capabilities, so
// mode and xattrs come after it, and times last. A regular file's copy-up
// passes open descriptors (no path looked up again), others paths.
func (u *union) copyMeta(src, dst fileRef, st *unix.Stat_t, origin uint64) error {
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	// dst was just made by the daemon in the work dir (not set-group-ID),
	// so it is the daemon's already: most copy-ups of root's files need
	// no chown.
	if int(st.Uid) != u.euid || int(st.Gid) != u.egid {
		if err := dst.chown(int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, unix.EINVAL) {
			return err
		}
	}
	if !isLink {
		if err := dst.chmod(st.Mode & 07777); err != nil {
			return err
		}
	}
	names, err := src.xattrNames()
	if err != nil && !errors.Is(err, unix.ENOTSUP) {
		return err
	}
	for _, name := range names {
		if isOverlayBookkeeping(name) {
			continue
		}
		v, err := src.xattrValue(name)
		if err != nil {
			continue
		}
		if err := dst.setxattr(name, v, 0); err != nil {
			if isLink && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOTSUP)) {
				continue
			}
			return err
		}
	}
	// Symlinks cannot carry user.* xattrs; their inode number then
	// follows the copy (documented).
	if !isLink || u.ns == whiteout.Trusted {
		dst.setOverlayXattr(u.ns, originSuffix, strconv.FormatUint(origin, 10))
	}
	return dst.utimes([]unix.Timespec{unix.Timespec(st.Atim), unix.Timespec(st.Mtim)})
}

// isOverlayBookkeeping: xattrs of overlayfs's and the union's own, which
// copy-up does not copy.
func isOverlayBookkeeping(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.") ||
		strings.HasPrefix(name, "trusted.layerfs.") || strings.HasPrefix(name, "user.layerfs.")
}

// setOverlayXattr writes a private xattr in ns, falling back to the other
// namespace when ns is refused (trusted.* needs real CAP_SYS_ADMIN).
func setOverlayXattr(path string, ns whiteout.Namespace, suffix, value string) error {
	return pathRef(path).setOverlayXattr(ns, suffix, value)
}

func (f fileRef) setOverlayXattr(ns whiteout.Namespace, suffix, value string) error {
	err := f.setxattr(ns.String()+"."+suffix, []byte(value), 0)
	if err != nil && ns == whiteout.Trusted {
		err = f.setxattr(whiteout.User.String()+"."+suffix, []byte(value), 0)
	}
	return err
}

// removeOverlayXattr removes a private xattr from both namespaces.
func removeOverlayXattr(path, suffix string) {
	for _, ns := range whiteout.Namespaces() {
		unix.Lremovexattr(path, ns.String()+"."+suffix)
	}
}

// copyUpName copies n up and makes sure the name d/name of it exists in
// the upper: a lower hardlink group is copied up through one name, and the
// others are linked to the index entry when an operation needs them.
func (u *union) copyUpName(d *node, name string, n *node) syscall.Errno {
	if errno := u.copyUp(n, false); errno != 0 {
		return errno
	}
	n.mu.Lock()
	indexed := n.indexedLocked()
	n.mu.Unlock()
	if !indexed {
		return 0
	}
	if errno := u.copyUpDir(d); errno != 0 {
		return errno
	}
	drel, ok := d.upperRel()
	if !ok {
		return syscall.ENOENT
	}
	rel := join(drel, name)
	var st unix.Stat_t
	if u.upper.lstat(rel, &st) == nil {
		return 0
	}
	err := unix.Linkat(u.workFd, u.indexRelFor(n.ino), u.upper.fd, rel, 0)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return toErrno(err)
	}
	syncKernelNlink(u.workPath + "/" + u.indexRelFor(n.ino)) // kernelindex.go
	if l, errno := n.where(); errno == 0 {
		u.linkSpecialOwner(n, l, rel) // ownertable.go
	}
	return 0
}
