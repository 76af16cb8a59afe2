package fusefs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// rawFS is the union as go-fuse's server sees it: each FUSE request that
// names a node ID or a file handle becomes an operation of a node (node.go,
// ops.go) or of an open file (file.go). It does what go-fuse's fs package
// would, for this file system only and with less memory per node (see
// tree.go): the kernel's references to nodes, the names it knows them
// by, and the open files.
//
// Directories are never opened (OPENDIR answers ENOSYS, after which the
// kernel sends no OPENDIR or RELEASEDIR and caches every directory's
// listing): READDIR and READDIRPLUS name a position in the directory by a
// cookie that means the same in any listing of it (dir.go).
type rawFS struct {
	fuse.RawFileSystem // ENOSYS for what the union does not do
	u                  *union
	files              fileTable
}

func newRawFS(u *union) *rawFS {
	return &rawFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), u: u, files: fileTable{byFh: map[uint64]*fileHandle{}}}
}

func (r *rawFS) String() string { return "layerfs" }

func (r *rawFS) Init(s *fuse.Server) { r.u.srv = s }

// call is what the union needs to know of a request's caller.
type call struct {
	fuse.Caller
	// umask is the caller's, where the kernel leaves applying it to
	// the union (FUSE_DONT_MASK, see acl.go); hasUmask says it is.
	umask    uint32
	hasUmask bool
}

func (r *rawFS) callOf(h *fuse.InHeader) *call { return &call{Caller: h.Caller} }

// callMasked is callOf for a request that creates an object with the
// caller's umask.
func (r *rawFS) callMasked(h *fuse.InHeader, umask uint32) *call {
	return &call{Caller: h.Caller, umask: umask, hasUmask: r.u.acl}
}

func status(errno syscall.Errno) fuse.Status { return fuse.Status(errno) }

// toErrno turns an error from a system call into the errno to answer.
func toErrno(err error) syscall.Errno { return syscall.Errno(fuse.ToStatus(err)) }

// node returns the node the kernel calls id. The kernel only names nodes
// it holds, so a missing one is a stale reference (after a crash of the
// bookkeeping, say): ESTALE.
func (r *rawFS) node(id uint64) (*node, fuse.Status) {
	if n := r.u.tree.get(id); n != nil {
		return n, fuse.OK
	}
	return nil, fuse.Status(syscall.ESTALE)
}

func (r *rawFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	d, st := r.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames() // moves.go
	defer r.u.releaseNames()
	switch name {
	case ".":
		// Sent to revive a dentry by node ID (NFS export).
		if errno := d.getattr(nil, &out.Attr); errno != 0 {
			return status(errno)
		}
		r.u.tree.adopt(d, nil, "")
		d.entryOut(out)
		return fuse.OK
	case "..":
		_, p := d.Parent()
		if d.IsRoot() {
			p = d
		}
		if p == nil {
			return fuse.Status(syscall.ESTALE)
		}
		if errno := p.getattr(nil, &out.Attr); errno != 0 {
			return status(errno)
		}
		r.u.tree.adopt(p, nil, "")
		p.entryOut(out)
		return fuse.OK
	}
	_, errno := d.lookup(name, out)
	if errno == syscall.ENOENT {
		// A negative entry: the kernel remembers the name is free.
		*out = fuse.EntryOut{}
		out.SetEntryTimeout(r.u.opts.NegativeTimeout)
		return fuse.OK
	}
	return status(errno)
}

func (r *rawFS) Forget(id, count uint64) { r.u.tree.forget(id, count) }

func (r *rawFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	n, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	var fh *fileHandle
	if in.Flags()&fuse.FUSE_GETATTR_FH != 0 {
		fh = r.files.get(in.Fh())
	}
	if errno := n.getattr(fh, &out.Attr); errno != 0 {
		return status(errno)
	}
	out.SetTimeout(n.timeout())
	return fuse.OK
}

func (r *rawFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	n, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	var fh *fileHandle
	if id, ok := in.GetFh(); ok {
		fh = r.files.get(id)
	}
	return status(n.setattr(r.callOf(&in.InHeader), fh, in, out))
}

// entry finishes a reply naming a node a request made or linked.
func entry(n *node, errno syscall.Errno, out *fuse.EntryOut) fuse.Status {
	if errno != 0 {
		return status(errno)
	}
	n.entryOut(out)
	return fuse.OK
}

func (r *rawFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	d, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	n, errno := d.mknod(r.callMasked(&in.InHeader, in.Umask), name, in.Mode, in.Rdev, &out.Attr)
	return entry(n, errno, out)
}

func (r *rawFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	d, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	n, errno := d.mkdir(r.callMasked(&in.InHeader, in.Umask), name, in.Mode, &out.Attr)
	return entry(n, errno, out)
}

func (r *rawFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	d, st := r.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	n, errno := d.symlink(r.callOf(h), target, name, &out.Attr)
	return entry(n, errno, out)
}

func (r *rawFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	d, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	target, st := r.node(in.Oldnodeid)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	n, errno := d.link(r.callOf(&in.InHeader), target, name, &out.Attr)
	return entry(n, errno, out)
}

func (r *rawFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	d, st := r.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	return status(d.unlink(name))
}

func (r *rawFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	d, st := r.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	return status(d.rmdir(name))
}

func (r *rawFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	d, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	nd, st := r.node(in.Newdir)
	if !st.Ok() {
		return st
	}
	return status(d.rename(oldName, nd, newName, in.Flags))
}

func (r *rawFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	n, st := r.node(h.NodeId)
	if !st.Ok() {
		return nil, st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	b, errno := n.readlink()
	return b, status(errno)
}

func (r *rawFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	n, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	return status(n.access(in.Mask)) // permissions.go
}

func (r *rawFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n, st := r.node(h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	sz, errno := n.getxattr(attr, dest)
	return sz, status(errno)
}

func (r *rawFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n, st := r.node(h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	sz, errno := n.listxattr(dest)
	return sz, status(errno)
}

func (r *rawFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	n, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	return status(n.setxattr(attr, data, in.Flags))
}

func (r *rawFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	n, st := r.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	return status(n.removexattr(attr))
}

func (r *rawFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	n, st := r.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	return status(n.statfs(out))
}

func (r *rawFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	d, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	n, fh, errno := d.create(r.callMasked(&in.InHeader, in.Umask), name, in.Flags, in.Mode, &out.EntryOut.Attr)
	return r.created(n, fh, errno, out)
}

func (r *rawFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	d, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	n, fh, errno := d.tmpfile(r.callMasked(&in.InHeader, in.Umask), in.Flags, in.Mode, &out.EntryOut.Attr)
	return r.created(n, fh, errno, out)
}

// created answers a CREATE or TMPFILE: the new node's entry and its handle.
func (r *rawFS) created(n *node, fh *fileHandle, errno syscall.Errno, out *fuse.CreateOut) fuse.Status {
	if errno != 0 {
		if n != nil {
			r.u.tree.release(n, 1) // made, but no handle: the kernel gets neither
		}
		return status(errno)
	}
	n.entryOut(&out.EntryOut)
	r.opened(fh, &out.OpenOut)
	return fuse.OK
}

func (r *rawFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	fh, errno := n.open(in.Flags)
	if errno != 0 {
		return status(errno)
	}
	r.opened(fh, out)
	return fuse.OK
}

// opened gives a new open file its handle number and tells the kernel how
// to do its I/O.
func (r *rawFS) opened(fh *fileHandle, out *fuse.OpenOut) {
	out.Fh = r.files.add(fh)
	out.OpenFlags = fh.openFlags
	if fh.backingID != 0 {
		out.BackingID = fh.backingID
		out.OpenFlags |= fuse.FOPEN_PASSTHROUGH
		out.OpenFlags &^= fuse.FOPEN_KEEP_CACHE
	}
}

// file returns the open file fh of node id. A number the kernel never got
// or already released is EBADF.
func (r *rawFS) file(fh uint64) (*fileHandle, fuse.Status) {
	if h := r.files.get(fh); h != nil {
		return h, fuse.OK
	}
	return nil, fuse.Status(syscall.EBADF)
}

func (r *rawFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	h, st := r.file(in.Fh)
	if !st.Ok() {
		return nil, st
	}
	res, errno := h.read(buf, int64(in.Offset))
	return res, status(errno)
}

func (r *rawFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	h, st := r.file(in.Fh)
	if !st.Ok() {
		return 0, st
	}
	n, errno := h.write(data, int64(in.Offset))
	return n, status(errno)
}

func (r *rawFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	h, st := r.file(in.Fh)
	if !st.Ok() {
		return st
	}
	off, err := unix.Seek(h.fd, int64(in.Offset), int(in.Whence))
	out.Offset = uint64(off)
	return fuse.ToStatus(err)
}

func (r *rawFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	src, st := r.file(in.FhIn)
	if !st.Ok() {
		return 0, st
	}
	dst, st := r.file(in.FhOut)
	if !st.Ok() {
		return 0, st
	}
	// Both are descriptors of the layers: the kernel copies (or
	// reflinks) between them without the data passing through here.
	offIn, offOut := int64(in.OffIn), int64(in.OffOut)
	n, err := unix.CopyFileRange(src.fd, &offIn, dst.fd, &offOut, int(min(in.Len, 1<<30)), int(in.Flags))
	return uint32(max(n, 0)), fuse.ToStatus(err)
}

func (r *rawFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	h, st := r.file(in.Fh)
	if !st.Ok() {
		return st
	}
	return status(h.getlk(&in.Lk, &out.Lk))
}

func (r *rawFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	h, st := r.file(in.Fh)
	if !st.Ok() {
		return st
	}
	return status(h.setLock(&in.Lk, in.LkFlags, false))
}

func (r *rawFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	h, st := r.file(in.Fh)
	if !st.Ok() {
		return st
	}
	return status(h.setLock(&in.Lk, in.LkFlags, true))
}

func (r *rawFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	if h := r.files.remove(in.Fh); h != nil {
		h.release()
	}
}

func (r *rawFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	h, st := r.file(in.Fh)
	if !st.Ok() {
		return st
	}
	return status(h.flush())
}

func (r *rawFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	h, st := r.file(in.Fh)
	if !st.Ok() {
		return st
	}
	return status(h.fsync(in.FsyncFlags))
}

func (r *rawFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	h, st := r.file(in.Fh)
	if !st.Ok() {
		return st
	}
	return fuse.ToStatus(unix.Fallocate(h.fd, in.Mode, int64(in.Offset), int64(in.Length)))
}

// OpenDir answers ENOSYS: the kernel then opens directories without
// asking (no OPENDIR and RELEASEDIR round trips) and caches their
// listings (dir.go).
func (r *rawFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (r *rawFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	d, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	return status(d.readdir(in.Offset, out, false))
}

func (r *rawFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	d, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	return status(d.readdir(in.Offset, out, true))
}

func (r *rawFS) ReleaseDir(in *fuse.ReleaseIn) {}

func (r *rawFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	d, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	r.u.holdNames()
	defer r.u.releaseNames()
	return status(d.fsyncdir())
}

// fileTable numbers the open files for the kernel.
type fileTable struct {
	mu   sync.Mutex
	byFh map[uint64]*fileHandle
	next uint64
}

func (t *fileTable) add(h *fileHandle) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	t.byFh[t.next] = h
	return t.next
}

func (t *fileTable) get(fh uint64) *fileHandle {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byFh[fh]
}

func (t *fileTable) remove(fh uint64) *fileHandle {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.byFh[fh]
	delete(t.byFh, fh)
	return h
}

// notifyAttrs tells the kernel that n's attributes changed (it may hold
// them for LowerTimeout), from outside the current request: an
// invalidation must not wait on it.
func (u *union) notifyAttrs(n *node) {
	if u.srv == nil || u.tree == nil {
		return
	}
	u.tree.mu.RLock()
	id, held := u.tree.idLocked(n), n.registered
	u.tree.mu.RUnlock()
	if held {
		go u.srv.InodeNotify(id, 0, 0)
	}
}
