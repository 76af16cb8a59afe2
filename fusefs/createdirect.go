package fusefs

import (
	"errors"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/whiteout"
)

// The common create needs no work dir. Overlayfs itself creates straight
// in the upper dir (ovl_create_upper) unless a whiteout sits at the name,
// and so do we when, in addition, the object the upper file system makes
// for the daemon already has the owner the caller must get: no chown
// follows, and the upper file system applies the parent's default ACL
// itself, so at worst a crash leaves a new, empty object whose mode the
// daemon's umask narrowed (applyNewObject widens it right after). Everything
// else (a whiteout or .wh. file at the name, a caller other than the
// daemon's own IDs) takes the atomic path in ops.go.
//
// It saves most of a create's syscalls: no parent stat, no existence
// probe (O_EXCL is the probe), no chown, no rename, and no reading back
// of xattrs a new object cannot have.

// errNotDirect says the fast path does not apply; the caller takes the
// atomic one. It is never returned to the kernel.
var errNotDirect = errors.New("not a direct create")

// directSpot readies d for a direct create of name and returns the new
// object's upper path, or errNotDirect.
func (u *union) directSpot(c *call, d *node, name string) (string, syscall.Errno, error) {
	if u.readOnly || u.upper == nil {
		return "", syscall.EROFS, nil
	}
	if whiteout.ClassifyName(name).Kind != whiteout.None {
		return "", syscall.EINVAL, nil
	}
	if !u.ownsNatively(c) {
		return "", 0, errNotDirect
	}
	if errno := u.copyUpDir(d); errno != 0 {
		return "", errno, nil
	}
	drel, ok := d.upperRel()
	if !ok {
		return "", syscall.ENOENT, nil
	}
	rel := join(drel, name)
	d.mu.Lock()
	noWhFiles := d.noWhFilesLocked()
	d.mu.Unlock()
	if !noWhFiles && hasWhFile(u.upper, rel) {
		return "", 0, errNotDirect
	}
	return rel, 0, nil
}

// ownsNatively reports whether an object the daemon makes gets the
// caller's on-disk owner and group without a chown: the caller maps to
// the daemon's own IDs (or to none, which leaves the owner alone as
// setNewOwner does). A set-group-ID parent gives its group either way.
func (u *union) ownsNatively(c *call) bool {
	uid, gid := u.owner(c)
	return (uid < 0 || uid == u.euid) && (gid < 0 || gid == u.egid)
}

// createDirect is Create's fast path; errNotDirect sends the caller to
// the atomic path.
func (d *node) createDirect(c *call, name string, flags, mode uint32, out *fuse.Attr) (*node, *fileHandle, syscall.Errno, error) {
	u := d.u
	rel, errno, err := u.directSpot(c, d, name)
	if err != nil || errno != 0 {
		return nil, nil, errno, err
	}
	dir, _ := splitRel(rel)
	obj := u.newObjectMode(c, u.upper.path(dir), mode, false)
	oflags := int(flags)&^(unix.O_APPEND|unix.O_CREAT|unix.O_EXCL|fuse.FMODE_EXEC) | unix.O_CLOEXEC | unix.O_NOFOLLOW
	fd, err := unix.Openat(u.upper.fd, rel, oflags|unix.O_CREAT|unix.O_EXCL, obj.mode)
	if errors.Is(err, unix.EEXIST) {
		// A whiteout (or a real object: the atomic path tells which).
		return nil, nil, 0, errNotDirect
	}
	if err != nil {
		return nil, nil, toErrno(err), nil
	}
	var st unix.Stat_t
	err = u.applyNewObject(u.upper.path(rel), fd, obj)
	if err == nil {
		err = unix.Fstat(fd, &st)
	}
	if err != nil {
		unix.Close(fd)
		unix.Unlinkat(u.upper.fd, rel, 0)
		return nil, nil, toErrno(err), nil
	}
	n := d.freshChild(name, &st, out)
	n.mu.Lock()
	n.upperNoRecords = true // nobody set any yet
	n.mu.Unlock()
	h, errno := u.newHandle(n, fd, oflags, true, rel)
	return n, h, errno, nil
}

// mkdirDirect is Mkdir's fast path; errNotDirect sends the caller to the
// atomic path.
func (d *node) mkdirDirect(c *call, name string, mode uint32, out *fuse.Attr) (*node, syscall.Errno, error) {
	u := d.u
	rel, errno, err := u.directSpot(c, d, name)
	if err != nil || errno != 0 {
		return nil, errno, err
	}
	dir, _ := splitRel(rel)
	obj := u.newObjectMode(c, u.upper.path(dir), mode, true)
	if err := unix.Mkdirat(u.upper.fd, rel, obj.mode); errors.Is(err, unix.EEXIST) {
		return nil, 0, errNotDirect
	} else if err != nil {
		return nil, toErrno(err), nil
	}
	var st unix.Stat_t
	err = u.applyNewObject(u.upper.path(rel), -1, obj)
	if err == nil {
		err = u.upper.lstat(rel, &st)
	}
	if err != nil {
		unix.Unlinkat(u.upper.fd, rel, unix.AT_REMOVEDIR)
		return nil, toErrno(err), nil
	}
	n := d.freshChild(name, &st, out)
	n.markUpperMadeHere()
	return n, 0, nil
}

// freshChild registers an object this request made in the upper, with
// attributes from st: it has no origin, override or nlink records to
// read back.
func (d *node) freshChild(name string, st *unix.Stat_t, out *fuse.Attr) *node {
	u := d.u
	d.dirChanged()
	f := &found{st: *st, upper: true, lowerLayer: -1, lowerRel: join(d.dirLowerRel(), name)}
	ino := u.inos.ino(st.Dev, st.Ino)
	made := u.newNodeFor(f, d.dirLowerRel(), name, ino)
	n := u.tree.lookup(d, name, ino, func() *node { return made })
	out.FromStat(toSyscallStat(st))
	out.Uid = u.uids.toView(out.Uid)
	out.Gid = u.gids.toView(out.Gid)
	n.attrOut(out)
	return n
}
