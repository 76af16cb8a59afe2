package fusefs

import (
	"errors"
	"os"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// owner returns the on-disk uid/gid a new object of the caller gets.
func (u *union) owner(c *call) (uid, gid int) {
	uid, gid = -1, -1
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
func (u *union) setNewOwner(c *call, parentSt *unix.Stat_t, path string, mode uint32, isLink bool) error {
	uid, gid := u.owner(c)
	if parentSt.Mode&unix.S_ISGID != 0 {
		gid = int(parentSt.Gid)
	}
	f := pathRef(path) // a /proc link for an O_TMPFILE: see fileRef
	if err := f.chown(uid, gid); err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	if !isLink && mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		var st unix.Stat_t
		if err := f.lstat(&st); err == nil && st.Mode&07777 != mode&07777 {
			return f.chmod(mode & 07777)
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
		return nil, toErrno(err)
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

// newChild registers an upper object made under name and fills out with
// its attributes.
func (d *node) newChild(name, rel string, out *fuse.Attr) (*node, syscall.Errno) {
	u := d.u
	d.dirChanged()
	var st unix.Stat_t
	if err := u.upper.lstat(rel, &st); err != nil {
		return nil, toErrno(err)
	}
	f := &found{st: st, upper: true, lowerLayer: -1, lowerRel: join(d.dirLowerRel(), name)}
	ino := u.viewIno(f, rel)
	made := u.newNodeFor(f, d.dirLowerRel(), name, ino)
	n := u.tree.lookup(d, name, ino, func() *node { return made })
	var errno syscall.Errno
	if n == made {
		errno = n.attrForEntry(f, rel, out)
	} else {
		errno = n.getattr(nil, out)
	}
	if errno != 0 {
		u.tree.release(n, 1)
		return nil, errno
	}
	return n, 0
}

func (d *node) create(c *call, name string, flags uint32, mode uint32, out *fuse.Attr) (*node, *fileHandle, syscall.Errno) {
	if n, fh, errno, err := d.createDirect(c, name, flags, mode, out); err == nil { // createdirect.go
		return n, fh, errno
	}
	u := d.u
	s, errno := u.prepareCreate(d, name)
	if errno != 0 {
		return nil, nil, errno
	}
	oflags := int(flags)&^(unix.O_APPEND|unix.O_CREAT|unix.O_EXCL|fuse.FMODE_EXEC) | unix.O_CLOEXEC
	obj := u.newObjectIn(c, s, mode, false)
	tmp := u.tmpName()
	fd, err := unix.Openat(u.workFd, tmp, oflags|unix.O_CREAT|unix.O_EXCL, obj.mode)
	if err != nil {
		return nil, nil, toErrno(err)
	}
	err = u.setNewOwner(c, &s.parentSt, u.workPath+"/"+tmp, obj.mode, false)
	if err == nil {
		err = u.applyNewObject(u.workPath+"/"+tmp, -1, obj)
	}
	if err != nil {
		unix.Close(fd)
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, nil, toErrno(err)
	}
	if err := u.place(s, tmp, false); err != nil {
		unix.Close(fd)
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, nil, toErrno(err)
	}
	n, errno := d.newChild(name, s.rel, out)
	if errno != 0 {
		unix.Close(fd)
		return nil, nil, errno
	}
	h, errno := u.newHandle(n, fd, oflags, true, s.rel)
	return n, h, errno
}

func (d *node) mkdir(c *call, name string, mode uint32, out *fuse.Attr) (*node, syscall.Errno) {
	if n, errno, err := d.mkdirDirect(c, name, mode, out); err == nil { // createdirect.go
		return n, errno
	}
	u := d.u
	s, errno := u.prepareCreate(d, name)
	if errno != 0 {
		return nil, errno
	}
	obj := u.newObjectIn(c, s, mode, true)
	tmp := u.tmpName()
	if err := unix.Mkdirat(u.workFd, tmp, obj.mode); err != nil {
		return nil, toErrno(err)
	}
	tmpPath := u.workPath + "/" + tmp
	fail := func(err error) (*node, syscall.Errno) {
		unix.Unlinkat(u.workFd, tmp, unix.AT_REMOVEDIR)
		return nil, toErrno(err)
	}
	// The work dir is not set-group-ID: give the new dir what the
	// parent would have given it.
	if s.parentSt.Mode&unix.S_ISGID != 0 {
		unix.Chown(tmpPath, -1, int(s.parentSt.Gid))
		unix.Chmod(tmpPath, obj.mode|unix.S_ISGID)
		obj.mode |= unix.S_ISGID
	}
	if err := u.setNewOwner(c, &s.parentSt, tmpPath, obj.mode, false); err != nil {
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
	n, errno := d.newChild(name, s.rel, out)
	if errno == 0 {
		n.markUpperMadeHere()
	}
	return n, errno
}

// newObjectIn is newObjectMode for an object about to be made at s.
func (u *union) newObjectIn(c *call, s *createSpot, mode uint32, isDir bool) newObject {
	dir, _ := splitRel(s.rel)
	return u.newObjectMode(c, u.upper.path(dir), mode, isDir)
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

func (d *node) mknod(c *call, name string, mode, rdev uint32, out *fuse.Attr) (*node, syscall.Errno) {
	u := d.u
	s, errno := u.prepareCreate(d, name)
	if errno != 0 {
		return nil, errno
	}
	obj := u.newObjectIn(c, s, mode&07777, false)
	tmp := u.tmpName()
	if err := unix.Mknodat(u.workFd, tmp, mode&unix.S_IFMT|obj.mode, int(rdev)); err != nil {
		return nil, toErrno(err)
	}
	err := u.setNewOwner(c, &s.parentSt, u.workPath+"/"+tmp, obj.mode, false)
	if err == nil {
		err = u.applyNewObject(u.workPath+"/"+tmp, -1, obj)
	}
	if err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, toErrno(err)
	}
	if err := u.place(s, tmp, false); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, toErrno(err)
	}
	return d.newChild(name, s.rel, out)
}

func (d *node) symlink(c *call, target, name string, out *fuse.Attr) (*node, syscall.Errno) {
	u := d.u
	s, errno := u.prepareCreate(d, name)
	if errno != 0 {
		return nil, errno
	}
	tmp := u.tmpName()
	if err := unix.Symlinkat(target, u.workFd, tmp); err != nil {
		return nil, toErrno(err)
	}
	if err := u.setNewOwner(c, &s.parentSt, u.workPath+"/"+tmp, 0, true); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, toErrno(err)
	}
	if err := u.place(s, tmp, false); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, toErrno(err)
	}
	return d.newChild(name, s.rel, out)
}

func (d *node) link(c *call, tn *node, name string, out *fuse.Attr) (*node, syscall.Errno) {
	u := d.u
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
	l, err := tn.retryMoved(l, nil, func(l loc) error {
		lflags := 0
		if l.fd == unix.AT_FDCWD {
			lflags = unix.AT_SYMLINK_FOLLOW
		}
		return unix.Linkat(l.fd, l.rel, u.workFd, tmp, lflags)
	})
	if err != nil {
		return nil, toErrno(err)
	}
	if err := u.place(s, tmp, false); err != nil {
		unix.Unlinkat(u.workFd, tmp, 0)
		return nil, toErrno(err)
	}
	tn.mu.Lock()
	if tn.indexedLocked() {
		adjustNlink(l.path(), u.ns, +1)
	}
	tn.mu.Unlock()
	u.linkSpecialOwner(tn, l, s.rel) // ownertable.go
	d.dirChanged()
	n := u.tree.adopt(tn, d, name)
	if errno := n.getattr(nil, out); errno != 0 {
		u.tree.release(n, 1)
		return nil, errno
	}
	return n, 0
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
	index := u.nameIndex(d)
	var holders, whHolders uint64
	if index != nil {
		holders, whHolders = index.holders(name), index.holders(whiteout.Prefix+name)
	}
	for i, ld := range lowers {
		if bit := uint64(1) << uint(i); index != nil && i < maxIndexedLayers && index.read&bit != 0 {
			// The dir was read: no syscall for a layer without
			// the name.
			if holders&bit == 0 {
				if whHolders&bit != 0 {
					return false
				}
				continue
			}
		}
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
	return u.makeWhFile(rel)
}

// makeWhFile puts a .wh.NAME file next to rel. An object at rel hides it
// (it shows only once the object goes), so it may come first.
func (u *union) makeWhFile(rel string) error {
	dir, name := splitRel(rel)
	u.whFilesWritten.Store(true) // before the file exists: lookups must look for it
	fd, err := unix.Openat(u.upper.fd, join(dir, whiteout.Prefix+name), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// dropWhFile removes the .wh.NAME file next to rel.
func (u *union) dropWhFile(rel string) {
	dir, name := splitRel(rel)
	unix.Unlinkat(u.upper.fd, join(dir, whiteout.Prefix+name), 0)
}

// replaceWithWhiteout atomically turns the upper object at rel into a
// whiteout (a non-dir is replaced by rename; a dir is exchanged and then
// removed from the work dir).
func (u *union) replaceWithWhiteout(rel string, isDir bool) error {
	tmp := u.tmpName()
	if err := unix.Mknodat(u.workFd, tmp, unix.S_IFCHR, 0); err != nil {
		// No mknod: a .wh. file, then the object goes.
		if err := u.makeWhFile(rel); err != nil {
			return err
		}
		flags := 0
		if isDir {
			flags = unix.AT_REMOVEDIR
		}
		if err := unix.Unlinkat(u.upper.fd, rel, flags); err != nil {
			u.dropWhFile(rel)
			return err
		}
		return nil
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

// childNode returns the node of what name shows in d (f, as resolve
// found it): the one the kernel knows, or, when it holds none, a node of
// this request's own, which no later request sees.
func (d *node) childNode(name string, f *found) *node {
	u := d.u
	dirRel, _ := d.upperRel()
	rel := join(dirRel, name)
	ino := u.viewIno(f, rel)
	if n := u.tree.find(ino); n != nil {
		return n
	}
	n := d.entryNode(f, name, rel, ino)
	n.parent, n.name = d, name // unregistered: no count in d.kids
	return n
}

// removable resolves name in d for unlink or rmdir; a read-only view
// answers EROFS.
func (u *union) removable(d *node, name string) (*found, syscall.Errno) {
	if u.readOnly || u.upper == nil {
		return nil, syscall.EROFS
	}
	return u.resolve(d, name)
}

func (d *node) unlink(name string) syscall.Errno {
	u := d.u
	u.beginMove(false) // moves.go; viewGen then recounts hardlink groups' names
	defer u.endMove(false)
	f, errno := u.removable(d, name)
	if errno != 0 {
		return errno
	}
	if f.st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return syscall.EISDIR
	}
	cn := d.childNode(name, f)
	// It leaves the tree but may stay open.
	cn.keepLowerRel()
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
		return toErrno(err)
	}
	u.dropSpecialOwner(rel) // ownertable.go
	cn.mu.Lock()
	if cn.indexedLocked() {
		adjustNlink(u.workPath+"/"+u.indexRelFor(cn.ino), u.ns, -1)
	}
	cn.mu.Unlock()
	d.dirChanged()
	u.tree.removeName(cn, d, name, f.st.Nlink <= 1)
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

func (d *node) rmdir(name string) syscall.Errno {
	u := d.u
	// An empty directory goes: no path below it changes.
	u.beginMove(false) // moves.go
	defer u.endMove(false)
	f, errno := u.removable(d, name)
	if errno != 0 {
		return errno
	}
	if f.st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return syscall.ENOTDIR
	}
	cn := d.childNode(name, f)
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
			return toErrno(err)
		}
		cn.keep(rel)
		if needWh {
			err = u.replaceWithWhiteout(rel, true)
		} else {
			err = unix.Unlinkat(u.upper.fd, rel, unix.AT_REMOVEDIR)
		}
	default:
		err = u.makeWhiteout(rel)
	}
	if err != nil {
		return toErrno(err)
	}
	d.dirChanged()
	u.tree.removeName(cn, d, name, true)
	return 0
}

// keep holds n's upper copy at rel open, when the kernel knows n, so that
// n still stats once no name leads to it: an open directory after rmdir
// or a rename onto it (kernel overlayfs shows the removed directory too),
// a retired node (file.go).
func (n *node) keep(rel string) {
	if !n.u.tree.holds(n) {
		return
	}
	fd, err := unix.Openat(n.u.upper.fd, rel, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	x := n.more()
	if x.kept != nil {
		// The same object, and a request may be using this one.
		unix.Close(fd)
		return
	}
	x.kept = os.NewFile(uintptr(fd), rel)
}

func (n *node) setattr(c *call, hf *fileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	u := n.u
	if u.readOnly {
		return syscall.EROFS
	}
	size, hasSize := in.GetSize()
	if errno := u.copyUp(n, hasSize && size == 0); errno != 0 {
		return errno
	}
	var st unix.Stat_t
	var errno syscall.Errno
	if hf != nil && hf.upper {
		// The request came through an open file (ftruncate): it is
		// the object, and no name needs resolving.
		if err := unix.Fstat(hf.fd, &st); err != nil {
			return toErrno(err)
		}
		l, werr := n.where()
		if werr != 0 {
			l = procFd(hf.fd, true)
		}
		errno = n.applySetattr(hf, in, l, procFd(hf.fd, true).path(), &st)
	} else {
		l, werr := n.where()
		if werr != 0 {
			return werr
		}
		l, err := n.retryMoved(l, &st, func(l loc) error { return l.lstat(&st) })
		if err != nil {
			return toErrno(err)
		}
		// Each change is absolute, so all are made again where a
		// rename above moved the object midway.
		_, err = n.retryMoved(l, nil, func(l loc) error {
			if errno := n.applySetattr(hf, in, l, l.path(), &st); errno != 0 {
				return errno
			}
			return nil
		})
		errno = toErrno(err)
	}
	if errno != 0 {
		return errno
	}
	if errno := n.getattr(hf, &out.Attr); errno != 0 {
		return errno
	}
	out.SetTimeout(u.opts.Timeout)
	return 0
}

// applySetattr makes setattr's changes to n's object at path (location l,
// stat st).
func (n *node) applySetattr(hf *fileHandle, in *fuse.SetAttrIn, l loc, path string, st *unix.Stat_t) syscall.Errno {
	u := n.u
	ref := pathRef(path)
	var ov statoverride.Stat
	hasOv := false
	n.mu.Lock()
	noRecords := n.upperNoRecords && l.upper
	n.mu.Unlock()
	if !noRecords {
		ov, hasOv, _ = ref.override()
	}
	mode, hasMode := in.GetMode()
	uid, hasUID := in.GetUID()
	gid, hasGID := in.GetGID()
	special, errno := u.setSpecialOwner(n, l, st, in) // ownertable.go
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
		if err := ref.setOverride(ov); err != nil {
			return toErrno(errors.Unwrap(err))
		}
	} else {
		if hasUID || hasGID {
			if err := u.chownNative(path, hasUID, uid, hasGID, gid); err != nil { // ownertable.go
				return toErrno(err)
			}
		}
		if hasMode {
			if st.Mode&unix.S_IFMT == unix.S_IFLNK {
				return syscall.EOPNOTSUPP
			}
			if err := ref.chmod(mode & 07777); err != nil {
				return toErrno(err)
			}
		}
	}
	if size, hasSize := in.GetSize(); hasSize {
		var err error
		if hf != nil && hf.upper && hf.writable {
			err = unix.Ftruncate(hf.fd, int64(size))
		} else {
			err = unix.Truncate(path, int64(size))
		}
		if err != nil {
			return toErrno(err)
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
		if err := ref.utimes(ts); err != nil {
			return toErrno(err)
		}
	}
	return 0
}

func (n *node) setxattr(attr string, data []byte, flags uint32) syscall.Errno {
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
	_, err := n.retryMoved(l, nil, func(l loc) error { return pathRef(l.path()).setxattr(attr, data, int(flags)) })
	return toErrno(err)
}

func (n *node) removexattr(attr string) syscall.Errno {
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
	stored := attr
	_, err := n.retryMoved(l, nil, func(l loc) error {
		stored = storedCapabilityName(l.path(), attr) // capability.go
		_, err := pathRef(l.path()).getxattr(stored, nil)
		return err
	})
	if err != nil {
		return toErrno(err)
	}
	attr = stored
	if errno := u.copyUp(n, false); errno != 0 {
		return errno
	}
	if l, errno = n.where(); errno != 0 {
		return errno
	}
	_, err = n.retryMoved(l, nil, func(l loc) error { return pathRef(l.path()).removexattr(attr) })
	return toErrno(err)
}

func (n *node) open(flags uint32) (*fileHandle, syscall.Errno) {
	u := n.u
	write := flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
	if write {
		if u.readOnly {
			return nil, syscall.EROFS
		}
		if errno := u.copyUp(n, flags&unix.O_TRUNC != 0); errno != 0 {
			return nil, errno
		}
	}
	l, errno := n.where()
	if errno != 0 {
		return nil, errno
	}
	oflags := int(flags)&^(unix.O_APPEND|unix.O_CREAT|unix.O_EXCL|fuse.FMODE_EXEC) | unix.O_CLOEXEC
	fd := -1
	var st unix.Stat_t
	l, err := n.retryMoved(l, &st, func(l loc) error {
		if fd >= 0 {
			unix.Close(fd)
		}
		var err error
		if l.fd == unix.AT_FDCWD {
			// An object no name leads to, reopened through a
			// descriptor the daemon holds (/proc/self/fd): a link
			// to follow.
			fd, err = unix.Open(l.rel, oflags, 0)
		} else {
			fd, err = unix.Openat(l.fd, l.rel, oflags|unix.O_NOFOLLOW, 0)
		}
		if err != nil {
			fd = -1
			return err
		}
		if l.upper && l.fd == u.upper.fd {
			return unix.Fstat(fd, &st) // for retryMoved's check
		}
		return nil
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, toErrno(err)
	}
	return u.newHandle(n, fd, oflags, l.upper, l.rel)
}

// tmpfile makes an O_TMPFILE file in the upper copy of directory d.
func (d *node) tmpfile(c *call, flags uint32, mode uint32, out *fuse.Attr) (*node, *fileHandle, syscall.Errno) {
	u := d.u
	if u.readOnly || u.upper == nil {
		return nil, nil, syscall.EROFS
	}
	if errno := u.copyUpDir(d); errno != 0 {
		return nil, nil, errno
	}
	drel, ok := d.upperRel()
	if !ok {
		return nil, nil, syscall.ENOENT
	}
	oflags := int(flags)&^(unix.O_APPEND|unix.O_CREAT|unix.O_EXCL|fuse.FMODE_EXEC) | unix.O_CLOEXEC
	obj := u.newObjectMode(c, u.upper.path(drel), mode, false)
	fd, err := unix.Openat(u.upper.fd, drel, oflags|unix.O_TMPFILE, obj.mode)
	if err != nil {
		return nil, nil, toErrno(err)
	}
	var pst, st unix.Stat_t
	path := procFd(fd, true).path()
	err = u.upper.lstat(drel, &pst)
	if err == nil {
		err = u.setNewOwner(c, &pst, path, obj.mode, false)
	}
	if err == nil {
		err = u.applyNewObject(path, fd, obj)
	}
	if err == nil {
		err = unix.Fstat(fd, &st)
	}
	if err != nil {
		unix.Close(fd) // nameless: it goes with its descriptor
		return nil, nil, toErrno(err)
	}
	f := &found{st: st, upper: true, lowerLayer: -1}
	ino := u.inos.ino(st.Dev, st.Ino)
	made := u.newNodeFor(f, ".", "", ino)
	n := u.tree.lookup(nil, "", ino, func() *node { return made })
	u.fillAttr(path, &st, ino, out)
	n.attrOut(out)
	h, errno := u.newHandle(n, fd, oflags, true, "(O_TMPFILE)")
	return n, h, errno
}
