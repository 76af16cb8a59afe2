package fusefs

import (
	"context"
	"errors"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

var (
	_ fs.NodeCreater       = (*node)(nil)
	_ fs.NodeMkdirer       = (*node)(nil)
	_ fs.NodeMknoder       = (*node)(nil)
	_ fs.NodeSymlinker     = (*node)(nil)
	_ fs.NodeLinker        = (*node)(nil)
	_ fs.NodeUnlinker      = (*node)(nil)
	_ fs.NodeRmdirer       = (*node)(nil)
	_ fs.NodeRenamer       = (*node)(nil)
	_ fs.NodeOpener        = (*node)(nil)
	_ fs.NodeSetattrer     = (*node)(nil)
	_ fs.NodeSetxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer = (*node)(nil)
	_ fs.NodeFsyncer       = (*node)(nil)
)

// owner returns the on-disk uid/gid a new object of the caller gets.
func (u *union) owner(ctx context.Context) (uid, gid int) {
	uid, gid = -1, -1
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return
	}
	if v, ok := u.uids.toDisk(c.Uid); ok {
		uid = int(v)
	}
	if v, ok := u.gids.toDisk(c.Gid); ok {
		gid = int(v)
	}
	return
}

// setNewOwner chowns a new object at path to the caller, keeping the group
// the kernel chose when the parent is set-group-ID (as it would natively),
// and restoring set-id bits that chown cleared.
func (u *union) setNewOwner(ctx context.Context, parentSt *unix.Stat_t, path string, mode uint32, isLink bool) error {
	uid, gid := u.owner(ctx)
	if parentSt.Mode&unix.S_ISGID != 0 {
		gid = int(parentSt.Gid)
	}
	if err := unix.Fchownat(unix.AT_FDCWD, path, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	if !isLink && mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err == nil && st.Mode&07777 != mode&07777 {
			return unix.Fchmodat(unix.AT_FDCWD, path, mode&07777, 0)
		}
	}
	return nil
}

// prepareCreate readies directory d for a new entry name in the upper:
// parents copied up; tells whether an upper whiteout (device or .wh. file)
// sits at the name.
type createSpot struct {
	rel      string
	parentSt unix.Stat_t
	overWh   bool // a 0/0 or xattr whiteout object occupies rel
	whFile   bool // a .wh.NAME file sits next to it
}

func (u *union) prepareCreate(d *node, name string) (*createSpot, syscall.Errno) {
	if u.readOnly || u.upper == nil {
		return nil, syscall.EROFS
	}
	if whiteout.ClassifyName(name).Kind != whiteout.None {
		// Names that would be read back as whiteouts cannot be made.
		return nil, syscall.EINVAL
	}
	if errno := u.copyUpDir(d); errno != 0 {
		return nil, errno
	}
	drel, ok := d.upperRel()
	if !ok {
		return nil, syscall.ENOENT
	}
	s := &createSpot{rel: join(drel, name)}
	if err := u.upper.lstat(drel, &s.parentSt); err != nil {
		return nil, fs.ToErrno(err)
	}
	var st unix.Stat_t
	if err := u.upper.lstat(s.rel, &st); err == nil {
		if !isWhiteout(u.upper, s.rel, &st, true) {
			return nil, syscall.EEXIST
		}
		s.overWh = true
	}
	s.whFile = hasWhFile(u.upper, s.rel)
	return s, 0
}

// place moves an object built at tmp (in the work dir) to its spot,
// replacing the whiteout there atomically.
func (u *union) place(s *createSpot, tmp string, isDir bool) error {
	if s.overWh {
		if isDir {
			if err := unix.Renameat2(u.workFd, tmp, u.upper.fd, s.rel, unix.RENAME_EXCHANGE); err != nil {
				return err
			}
			unix.Unlinkat(u.workFd, tmp, 0)
		} else if err := unix.Renameat(u.workFd, tmp, u.upper.fd, s.rel); err != nil {
			return err
		}
	} else if err := unix.Renameat2(u.workFd, tmp, u.upper.fd, s.rel, unix.RENAME_NOREPLACE); err != nil {
		return err
	}
	if s.whFile {
		dir, name := splitRel(s.rel)
		unix.Unlinkat(u.upper.fd, join(dir, whiteout.Prefix+name), 0)
	}
	u.dropSpecialOwner(s.rel) // a new object: no record left by an old one
	return nil
}

// newChild registers a freshly made upper object and fills out.
func (d *node) newChild(ctx context.Context, name, rel string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	u := d.u
	var st unix.Stat_t
	if err := u.upper.lstat(rel, &st); err != nil {
		return nil, fs.ToErrno(err)
	}
	f := &found{st: st, upper: true, lowerLayer: -1, lowerRel: join(d.dirLowerRel(), name)}
	ino := u.viewIno(f, rel)
	child := u.newNodeFor(f, d.dirLowerRel(), name)
	ch := d.NewInode(ctx, child, u.stableFor(f, ino))
	cn := ch.Operations().(*node)
	if errno := cn.attrForEntry(f, rel, &out.Attr); errno != 0 {
		return nil, errno
	}
	out.SetEntryTimeout(u.opts.Timeout)
	out.SetAttrTimeout(u.opts.Timeout)
	return ch, 0
}

func (d *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if ch, fh, fl, errno, err := d.createDirect(ctx, name, flags, mode, out); err == nil { // createdirect.go
		return ch, fh, fl, errno
	}
	u := d.u
	s, errno := u.prepareCreate(d, name)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	oflags := int(flags)&^(unix.O_APPEND|unix.O_CREAT|unix.O_EXCL|fuse.FMODE_EXEC) | unix.O_CLOEXEC
	obj := u.newObjectIn(ctx, s, mode, false)
	tmp := u.tmpName()
	fd, err := unix.Openat(u.workFd, tmp, oflags|unix.O_CREAT|unix.O_EXCL, obj.mode)
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	err = u.setNewOwner(ctx, &s.parentSt, u.workPath+"/"+tmp, obj.mode, false)
	if err == nil {
		err = u.applyNewObject(u.workPath+"/"+tmp, -1, obj)
	}
	if err != nil {
		unix.Close(fd)
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, nil, 0, fs.ToErrno(err)
	}
	if err := u.place(s, tmp, false); err != nil {
		unix.Close(fd)
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, nil, 0, fs.ToErrno(err)
	}
	ch, errno := d.newChild(ctx, name, s.rel, out)
	if errno != 0 {
		unix.Close(fd)
		return nil, nil, 0, errno
	}
	cn := ch.Operations().(*node)
	fh, fl := u.newHandle(cn, fd, oflags, true, s.rel)
	return ch, fh, fl, 0
}

func (d *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if ch, errno, err := d.mkdirDirect(ctx, name, mode, out); err == nil { // createdirect.go
		return ch, errno
	}
	u := d.u
	s, errno := u.prepareCreate(d, name)
	if errno != 0 {
		return nil, errno
	}
	obj := u.newObjectIn(ctx, s, mode, true)
	tmp := u.tmpName()
	if err := unix.Mkdirat(u.workFd, tmp, obj.mode); err != nil {
		return nil, fs.ToErrno(err)
	}
	tmpPath := u.workPath + "/" + tmp
	fail := func(err error) (*fs.Inode, syscall.Errno) {
		unix.Unlinkat(u.workFd, tmp, unix.AT_REMOVEDIR)
		return nil, fs.ToErrno(err)
	}
	// The work dir is not set-group-ID: give the new dir what the
	// parent would have given it.
	if s.parentSt.Mode&unix.S_ISGID != 0 {
		unix.Chown(tmpPath, -1, int(s.parentSt.Gid))
		unix.Chmod(tmpPath, obj.mode|unix.S_ISGID)
		obj.mode |= unix.S_ISGID
	}
	if err := u.setNewOwner(ctx, &s.parentSt, tmpPath, obj.mode, false); err != nil {
		return fail(err)
	}
	if err := u.applyNewObject(tmpPath, -1, obj); err != nil {
		return fail(err)
	}
	if s.overWh || s.whFile {
		if err := u.setOpaque(tmpPath); err != nil {
			return fail(err)
		}
	}
	if err := u.place(s, tmp, true); err != nil {
		return fail(err)
	}
	ch, errno := d.newChild(ctx, name, s.rel, out)
	if errno == 0 {
		ch.Operations().(*node).markUpperMadeHere()
	}
	return ch, errno
}

// newObjectIn is newObjectMode for an object about to be made at s.
func (u *union) newObjectIn(ctx context.Context, s *createSpot, mode uint32, isDir bool) newObject {
	dir, _ := splitRel(s.rel)
	return u.newObjectMode(ctx, u.upper.path(dir), mode, isDir)
}

// setOpaque marks an upper dir opaque in the configured namespace, falling
// back to user.* and then to the OCI marker file.
func (u *union) setOpaque(path string) error {
	if err := whiteout.SetOpaque(path, u.ns); err == nil {
		return nil
	}
	if err := whiteout.SetOpaque(path, whiteout.User); err == nil {
		return nil
	}
	fd, err := unix.Open(path+"/"+whiteout.OpaqueMarker, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

func (d *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	u := d.u
	s, errno := u.prepareCreate(d, name)
	if errno != 0 {
		return nil, errno
	}
	obj := u.newObjectIn(ctx, s, mode&07777, false)
	tmp := u.tmpName()
	if err := unix.Mknodat(u.workFd, tmp, mode&unix.S_IFMT|obj.mode, int(rdev)); err != nil {
		return nil, fs.ToErrno(err)
	}
	err := u.setNewOwner(ctx, &s.parentSt, u.workPath+"/"+tmp, obj.mode, false)
	if err == nil {
		err = u.applyNewObject(u.workPath+"/"+tmp, -1, obj)
	}
	if err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, fs.ToErrno(err)
	}
	if err := u.place(s, tmp, false); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, fs.ToErrno(err)
	}
	return d.newChild(ctx, name, s.rel, out)
}

func (d *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	u := d.u
	s, errno := u.prepareCreate(d, name)
	if errno != 0 {
		return nil, errno
	}
	tmp := u.tmpName()
	if err := unix.Symlinkat(target, u.workFd, tmp); err != nil {
		return nil, fs.ToErrno(err)
	}
	if err := u.setNewOwner(ctx, &s.parentSt, u.workPath+"/"+tmp, 0, true); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, fs.ToErrno(err)
	}
	if err := u.place(s, tmp, false); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, fs.ToErrno(err)
	}
	return d.newChild(ctx, name, s.rel, out)
}

func (d *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	u := d.u
	tn, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	if tn.isDir {
		return nil, syscall.EPERM
	}
	if u.readOnly {
		return nil, syscall.EROFS
	}
	if errno := u.copyUp(tn, false); errno != 0 {
		return nil, errno
	}
	s, errno := u.prepareCreate(d, name)
	if errno != 0 {
		return nil, errno
	}
	l, errno := tn.where()
	if errno != 0 {
		return nil, errno
	}
	tmp := u.tmpName()
	lflags := 0
	if l.fd == unix.AT_FDCWD {
		lflags = unix.AT_SYMLINK_FOLLOW
	}
	if err := unix.Linkat(l.fd, l.rel, u.workFd, tmp, lflags); err != nil {
		return nil, fs.ToErrno(err)
	}
	if err := u.place(s, tmp, false); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, fs.ToErrno(err)
	}
	tn.mu.Lock()
	if tn.indexedLocked() {
		adjustNlink(l.path(), u.ns, +1)
	}
	tn.mu.Unlock()
	u.linkSpecialOwner(tn, l, s.rel) // ownertable.go
	ch := d.NewInode(ctx, tn, tn.StableAttr())
	if errno := tn.getattr(nil, &out.Attr); errno != 0 {
		return nil, errno
	}
	out.SetEntryTimeout(u.opts.Timeout)
	out.SetAttrTimeout(u.opts.Timeout)
	return ch, 0
}

// adjustNlink moves the union link count recorded on an index entry.
func adjustNlink(path string, ns whiteout.Namespace, delta int) {
	v, ok := overlayXattr(path, nlinkSuffix)
	if !ok {
		return
	}
	c, err := strconv.Atoi(v)
	if err != nil {
		return
	}
	setOverlayXattr(path, ns, nlinkSuffix, strconv.Itoa(max(c+delta, 0)))
	syncKernelNlink(path) // kernelindex.go: the kernel's record of the group
}

// lowerHas reports whether the lowers of d show something at name, i.e.
// whether removing the upper object would uncover it (a whiteout is then
// needed).
func (u *union) lowerHas(d *node, name string) bool {
	lowers := d.lowerDirs()
	rel := join(d.dirLowerRel(), name)
	for _, ld := range lowers {
		l := u.lowers[ld.layer]
		var st unix.Stat_t
		if err := l.lstat(rel, &st); err != nil {
			if hasWhFile(l, rel) {
				return false
			}
			continue
		}
		return !isWhiteout(l, rel, &st, ld.xwh)
	}
	return false
}

// makeWhiteout puts a whiteout at rel in the upper: a 0/0 device, or a
// .wh.NAME file where mknod is refused.
func (u *union) makeWhiteout(rel string) error {
	if err := unix.Mknodat(u.upper.fd, rel, unix.S_IFCHR, 0); err == nil {
		return nil
	} else if !errors.Is(err, unix.EPERM) {
		return err
	}
	dir, name := splitRel(rel)
	u.whFilesWritten.Store(true) // before the file exists: lookups must look for it
	fd, err := unix.Openat(u.upper.fd, join(dir, whiteout.Prefix+name), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// replaceWithWhiteout atomically turns the upper object at rel into a
// whiteout (a non-dir is replaced by rename; a dir is exchanged and then
// removed from the work dir).
func (u *union) replaceWithWhiteout(rel string, isDir bool) error {
	tmp := u.tmpName()
	if err := unix.Mknodat(u.workFd, tmp, unix.S_IFCHR, 0); err != nil {
		// No mknod: remove, then mark with a .wh. file.
		flags := 0
		if isDir {
			flags = unix.AT_REMOVEDIR
		}
		if err := unix.Unlinkat(u.upper.fd, rel, flags); err != nil {
			return err
		}
		return u.makeWhiteout(rel)
	}
	if isDir {
		if err := unix.Renameat2(u.workFd, tmp, u.upper.fd, rel, unix.RENAME_EXCHANGE); err != nil {
			unix.Unlinkat(u.workFd, tmp, 0)
			return err
		}
		return unix.Unlinkat(u.workFd, tmp, unix.AT_REMOVEDIR)
	}
	if err := unix.Renameat(u.workFd, tmp, u.upper.fd, rel); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return err
	}
	return nil
}

func (d *node) childNode(ctx context.Context, name string) (*node, syscall.Errno) {
	if ch := d.GetChild(name); ch != nil {
		return ch.Operations().(*node), 0
	}
	var out fuse.EntryOut
	ch, errno := d.Lookup(ctx, name, &out)
	if errno != 0 {
		return nil, errno
	}
	return ch.Operations().(*node), 0
}

// removable resolves name in d for unlink or rmdir; a read-only view
// answers EROFS.
func (u *union) removable(d *node, name string) (*found, syscall.Errno) {
	if u.readOnly || u.upper == nil {
		return nil, syscall.EROFS
	}
	return u.resolve(d, name)
}

func (d *node) Unlink(ctx context.Context, name string) syscall.Errno {
	u := d.u
	// Names of lower hardlink groups may go: recount them.
	defer u.viewGen.Add(1)
	f, errno := u.removable(d, name)
	if errno != 0 {
		return errno
	}
	if f.st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return syscall.EISDIR
	}
	cn, _ := d.childNode(ctx, name)
	if cn != nil {
		// It leaves the tree but may stay open.
		cn.keepLowerRel()
	}
	rel, needWh, errno := u.removalTarget(d, name, f.upper)
	if errno != 0 {
		return errno
	}
	var err error
	switch {
	case f.upper && needWh:
		err = u.replaceWithWhiteout(rel, false)
	case f.upper:
		err = unix.Unlinkat(u.upper.fd, rel, 0)
	default:
		err = u.makeWhiteout(rel)
	}
	if err != nil {
		return fs.ToErrno(err)
	}
	u.dropSpecialOwner(rel) // ownertable.go
	if cn != nil {
		cn.mu.Lock()
		if cn.indexedLocked() {
			adjustNlink(u.workPath+"/"+u.indexRelFor(cn.ino()), u.ns, -1)
		}
		cn.mu.Unlock()
	}
	return 0
}

// removalTarget copies the parent d up and returns the upper path of
// name and whether removing it must leave a whiteout: always for a name
// only lowers hold, and for an upper one that also exists below.
func (u *union) removalTarget(d *node, name string, inUpper bool) (rel string, needWhiteout bool, errno syscall.Errno) {
	if errno := u.copyUpDir(d); errno != 0 {
		return "", false, errno
	}
	drel, ok := d.upperRel()
	if !ok {
		return "", false, syscall.ENOENT
	}
	return join(drel, name), !inUpper || u.lowerHas(d, name), 0
}

// emptyForRmdir checks that directory c shows no entry, and returns the
// names its upper dir still holds (whiteouts, markers) to clear.
func (u *union) emptyForRmdir(c *node) syscall.Errno {
	ents, errno := u.list(c)
	if errno != 0 {
		return errno
	}
	if ents.len() > 2 {
		return syscall.ENOTEMPTY
	}
	return 0
}

// clearUpperDir removes the leftovers (whiteouts, markers) of a dir the
// union shows as empty.
func (u *union) clearUpperDir(rel string) error {
	ents, err := readLayerDir(u.upper, rel)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := unix.Unlinkat(u.upper.fd, join(rel, e.name), 0); err != nil {
			return err
		}
	}
	return nil
}

func (d *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	u := d.u
	// Names of lower hardlink groups may go: recount them.
	defer u.viewGen.Add(1)
	f, errno := u.removable(d, name)
	if errno != 0 {
		return errno
	}
	if f.st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return syscall.ENOTDIR
	}
	cn, errno := d.childNode(ctx, name)
	if errno != 0 {
		return errno
	}
	if errno := u.emptyForRmdir(cn); errno != 0 {
		return errno
	}
	rel, needWh, errno := u.removalTarget(d, name, f.upper)
	if errno != 0 {
		return errno
	}
	var err error
	switch {
	case f.upper:
		if err = u.clearUpperDir(rel); err != nil {
			return fs.ToErrno(err)
		}
		if needWh {
			err = u.replaceWithWhiteout(rel, true)
		} else {
			err = unix.Unlinkat(u.upper.fd, rel, unix.AT_REMOVEDIR)
		}
	default:
		err = u.makeWhiteout(rel)
	}
	return fs.ToErrno(err)
}

func (n *node) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	u := n.u
	if u.readOnly {
		return syscall.EROFS
	}
	size, hasSize := in.GetSize()
	if errno := u.copyUp(n, hasSize && size == 0); errno != 0 {
		return errno
	}
	l, errno := n.where()
	hf := asHandle(fh)
	if errno != 0 {
		if hf == nil || !hf.upper {
			return errno
		}
		l = loc{fd: unix.AT_FDCWD, rel: "/proc/self/fd/" + strconv.Itoa(hf.fd), upper: true}
	}
	path := l.path()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fs.ToErrno(err)
	}
	var ov statoverride.Stat
	hasOv := false
	n.mu.Lock()
	noRecords := n.upperNoRecords && l.upper
	n.mu.Unlock()
	if !noRecords {
		ov, hasOv, _ = statoverride.Get(path)
	}
	mode, hasMode := in.GetMode()
	uid, hasUID := in.GetUID()
	gid, hasGID := in.GetGID()
	special, errno := u.setSpecialOwner(n, l, &st, in) // ownertable.go
	if errno != 0 {
		return errno
	}
	if special {
		// Owner and mode live in the upper's special-owners table.
	} else if hasOv && (hasMode || hasUID || hasGID) {
		// The owner the view shows is the record: keep it there.
		if hasMode {
			ov.Mode = ov.Mode&unix.S_IFMT | mode&07777
		}
		if hasUID {
			ov.UID = uid
		}
		if hasGID {
			ov.GID = gid
		}
		if err := statoverride.Set(path, ov); err != nil {
			return fs.ToErrno(errors.Unwrap(err))
		}
	} else {
		if hasUID || hasGID {
			if err := u.chownNative(path, hasUID, uid, hasGID, gid); err != nil { // ownertable.go
				return fs.ToErrno(err)
			}
		}
		if hasMode {
			if st.Mode&unix.S_IFMT == unix.S_IFLNK {
				return syscall.EOPNOTSUPP
			}
			if err := unix.Fchmodat(unix.AT_FDCWD, path, mode&07777, 0); err != nil {
				return fs.ToErrno(err)
			}
		}
	}
	if hasSize {
		var err error
		if hf != nil && hf.upper && hf.writable {
			err = unix.Ftruncate(hf.fd, int64(size))
		} else {
			err = unix.Truncate(path, int64(size))
		}
		if err != nil {
			return fs.ToErrno(err)
		}
	}
	atime, hasA := in.GetATime()
	mtime, hasM := in.GetMTime()
	if hasA || hasM || in.Valid&(fuse.FATTR_ATIME_NOW|fuse.FATTR_MTIME_NOW) != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
		} else if hasA {
			ts[0] = unix.NsecToTimespec(atime.UnixNano())
		}
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
		} else if hasM {
			ts[1] = unix.NsecToTimespec(mtime.UnixNano())
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fs.ToErrno(err)
		}
	}
	if errno := n.getattr(fh, &out.Attr); errno != 0 {
		return errno
	}
	out.SetTimeout(u.opts.Timeout)
	return 0
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	u := n.u
	if u.opts.NoXattrs {
		return syscall.ENOTSUP
	}
	if u.readOnly {
		return syscall.EROFS
	}
	if isPrivateXattr(attr) {
		return syscall.EOPNOTSUPP
	}
	n.mu.Lock()
	n.upperNoRecords = false // whatever the name: an unknown one may be a kept capability
	n.mu.Unlock()
	if errno := u.copyUp(n, false); errno != 0 {
		return errno
	}
	l, errno := n.where()
	if errno != 0 {
		return errno
	}
	return fs.ToErrno(unix.Lsetxattr(l.path(), attr, data, int(flags)))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	u := n.u
	if u.opts.NoXattrs {
		return syscall.ENOTSUP
	}
	if u.readOnly {
		return syscall.EROFS
	}
	if isPrivateXattr(attr) {
		return syscall.ENODATA
	}
	// Removing what is not there changes nothing: answer without a copy-up.
	l, errno := n.where()
	if errno != 0 {
		return errno
	}
	attr = storedCapabilityName(l.path(), attr) // capability.go
	if _, err := unix.Lgetxattr(l.path(), attr, nil); err != nil {
		return fs.ToErrno(err)
	}
	if errno := u.copyUp(n, false); errno != 0 {
		return errno
	}
	if l, errno = n.where(); errno != 0 {
		return errno
	}
	return fs.ToErrno(unix.Lremovexattr(l.path(), attr))
}

func (n *node) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	if hf := asHandle(fh); hf != nil {
		return hf.Fsync(ctx, flags)
	}
	return 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	u := n.u
	write := flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
	if write {
		if u.readOnly {
			return nil, 0, syscall.EROFS
		}
		if errno := u.copyUp(n, flags&unix.O_TRUNC != 0); errno != 0 {
			return nil, 0, errno
		}
	}
	l, errno := n.where()
	if errno != 0 {
		return nil, 0, errno
	}
	oflags := int(flags)&^(unix.O_APPEND|unix.O_CREAT|unix.O_EXCL|fuse.FMODE_EXEC) | unix.O_CLOEXEC | unix.O_NOFOLLOW
	fd, err := unix.Openat(l.fd, l.rel, oflags, 0)
	if err != nil {
		return nil, 0, fs.ToErrno(err)
	}
	fh, fl := u.newHandle(n, fd, oflags, l.upper, l.rel)
	return fh, fl, 0
}

var _ fs.NodeTmpfiler = (*node)(nil)

// Tmpfile makes an O_TMPFILE file in the upper copy of the directory.
func (d *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	u := d.u
	if u.readOnly || u.upper == nil {
		return nil, nil, 0, syscall.EROFS
	}
	if errno := u.copyUpDir(d); errno != 0 {
		return nil, nil, 0, errno
	}
	drel, ok := d.upperRel()
	if !ok {
		return nil, nil, 0, syscall.ENOENT
	}
	oflags := int(flags)&^(unix.O_APPEND|unix.O_CREAT|unix.O_EXCL|fuse.FMODE_EXEC) | unix.O_CLOEXEC
	obj := u.newObjectMode(ctx, u.upper.path(drel), mode, false)
	fd, err := unix.Openat(u.upper.fd, drel, oflags|unix.O_TMPFILE, obj.mode)
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	var pst, st unix.Stat_t
	u.upper.lstat(drel, &pst)
	path := "/proc/self/fd/" + strconv.Itoa(fd)
	u.setNewOwner(ctx, &pst, path, obj.mode, false)
	u.applyNewObject(path, fd, obj)
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, nil, 0, fs.ToErrno(err)
	}
	f := &found{st: st, upper: true, lowerLayer: -1}
	child := u.newNodeFor(f, ".", "")
	ino := u.inos.ino(st.Dev, st.Ino)
	ch := d.NewInode(ctx, child, u.stableFor(f, ino))
	cn := ch.Operations().(*node)
	u.fillAttr(path, &st, ino, &out.Attr)
	out.SetEntryTimeout(u.opts.Timeout)
	out.SetAttrTimeout(u.opts.Timeout)
	fh, fl := u.newHandle(cn, fd, oflags, true, "(O_TMPFILE)")
	return ch, fh, fl, 0
}
