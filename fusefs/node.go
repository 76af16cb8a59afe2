package fusefs

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/ownertable"
)

// node is one object of the view. Its go-fuse identity (StableAttr.Ino) is
// the view inode number, so every name of a hardlink group is one node.
//
// The kernel keeps a node for every name it caches (a stat walk of a
// million files makes a million), so a node holds only what every object
// needs; the rest (directories, hardlinked or open objects) lives in x.
// With go-fuse's Inode it is 160 bytes.
type node struct {
	fs.Inode
	u *union

	mu sync.Mutex // guards the fields below and x; held during this node's copy-up
	// lowerLayer is the lower layer holding a non-dir's lower object
	// (-1: none). Its path there is the parent directory's lower path
	// joined with the node's name, or x.lowerRel where that does not
	// hold (see lowerRelLocked).
	lowerLayer int32
	isDir      bool
	hasUpper   bool // an upper object exists (dirs: at the node's union path)
	// lowerXattrs says whether the lower object has xattrs, so the
	// kernel's frequent probes of one that has none (security.*, on
	// every ls -l and write) cost no syscall.
	lowerXattrs xattrsKnown
	// upperNoRecords: the upper object is a regular file this mount made
	// and nothing set an xattr on it since, so it has no override_stat
	// record and no kept capability: the kernel's security.capability
	// probe before every write, and GETATTR and SETATTR (tar -x sets
	// times, owner and mode of every file), read none.
	upperNoRecords bool
	x              *nodeExtra
}

// nodeExtra is the state few nodes need. Directories get one when made
// (their fields below never change after); other nodes when they need it.
type nodeExtra struct {
	// lowerRel: for dirs the path looked up in lowerDirs (redirects
	// change it); for non-dirs the lower object's path when it is not
	// the parent's lower path plus the name (hasLowerRel).
	lowerRel    string
	hasLowerRel bool
	lowerDirs   []lowerDir
	// lowerDirBytes: see found.lowerDirBytes.
	lowerDirBytes int64
	// names is the directory's slot in the mount's index cache.
	names *cachedIndex
	// indexed: the data lives in the work dir's hardlink index (a lower
	// hardlink group was copied up), shared by every name of the group.
	indexed bool
	// upperMadeHere: this mount made the directory's upper copy (mkdir
	// or copy-up), so no ".wh." file sits in it unless the union wrote
	// one (union.whFilesWritten): lookups skip probing for them.
	upperMadeHere bool
	// nlinkView is the st_nlink shown for a lower-only object, valid
	// while union.viewGen+1 == nlinkGen.
	nlinkView uint32
	nlinkGen  uint64
	// open handles by I/O path; the kernel refuses to mix passthrough and
	// cached opens of one inode.
	openPT, openCached int
	// handles holds open descriptors of upper objects: an object that
	// left the tree (unlinked, O_TMPFILE) is still reachable through
	// /proc/self/fd.
	handles map[int]bool
}

type xattrsKnown uint8

const (
	xattrsUnknown xattrsKnown = iota
	xattrsNone
	xattrsSome
)

// more returns n.x, making it. Callers hold n.mu.
func (n *node) more() *nodeExtra {
	if n.x == nil {
		n.x = &nodeExtra{}
	}
	return n.x
}

// indexed reports whether the data lives in the hardlink index. Callers
// hold n.mu.
func (n *node) indexedLocked() bool { return n.x != nil && n.x.indexed }

// noWhFilesLocked reports whether directory n's upper copy holds no
// ".wh." files: this mount made it (nodeExtra.upperMadeHere) and never had
// to write a whiteout as one. Callers hold n.mu.
func (n *node) noWhFilesLocked() bool {
	return n.x != nil && n.x.upperMadeHere && !n.u.whFilesWritten.Load()
}

// markUpperMadeHere records that this mount just made directory n's
// upper copy.
func (n *node) markUpperMadeHere() {
	n.mu.Lock()
	n.more().upperMadeHere = true
	n.mu.Unlock()
}

// lowerDirs are the lower directories merged into directory n, top first.
// They never change once the node is made, so no lock is needed.
func (n *node) lowerDirs() []lowerDir {
	if n.x == nil || !n.isDir {
		return nil
	}
	return n.x.lowerDirs
}

// dirLowerRel is directory n's path in its lower layers (never changes).
func (n *node) dirLowerRel() string {
	if n.x == nil {
		return "."
	}
	return n.x.lowerRel
}

// lowerRelLocked is the path of n's lower object (non-dirs) or lower
// directories (dirs) in the lower layers; ok is false when n has left
// the tree and recorded none. Callers hold n.mu.
func (n *node) lowerRelLocked() (string, bool) {
	if n.x != nil && (n.isDir || n.x.hasLowerRel) {
		return n.x.lowerRel, true
	}
	name, p := n.Parent()
	if p == nil {
		return "", false
	}
	return join(p.Operations().(*node).dirLowerRel(), name), true
}

// keepLowerRel records n's lower path before n moves or leaves the tree,
// where it could no longer be derived from its parent.
func (n *node) keepLowerRel() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.isDir || n.lowerLayer < 0 || (n.x != nil && n.x.hasLowerRel) {
		return
	}
	if rel, ok := n.lowerRelLocked(); ok {
		x := n.more()
		x.lowerRel, x.hasLowerRel = rel, true
	}
}

var _ fs.NodeOnForgetter = (*node)(nil)

// OnForget drops the index of a directory the kernel forgot: the cache
// holds no node, so the node itself is freed by go-fuse.
func (n *node) OnForget() {
	n.mu.Lock()
	var c *cachedIndex
	if n.x != nil {
		c = n.x.names
	}
	n.mu.Unlock()
	if c != nil {
		n.u.indexes.drop(c)
	}
}

var (
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeStatfser       = (*node)(nil)
	_ fs.NodeReadlinker     = (*node)(nil)
	_ fs.NodeGetxattrer     = (*node)(nil)
	_ fs.NodeListxattrer    = (*node)(nil)
	_ fs.NodeAccesser       = (*node)(nil)
)

func (n *node) ino() uint64 { return n.StableAttr().Ino }

// upperRel is the node's path relative to the layer roots, from the tree
// of names go-fuse keeps. ok is false for an object no longer in the tree.
func (n *node) upperRel() (string, bool) {
	var segs []string
	cur := &n.Inode
	for !cur.IsRoot() {
		name, p := cur.Parent()
		if p == nil {
			return "", false
		}
		segs = append(segs, name)
		cur = p
	}
	if len(segs) == 0 {
		return ".", true
	}
	for i, j := 0, len(segs)-1; i < j; i, j = i+1, j-1 {
		segs[i], segs[j] = segs[j], segs[i]
	}
	return strings.Join(segs, "/"), true
}

// loc is where an object's data and attributes live on disk.
type loc struct {
	fd    int
	root  string
	rel   string
	upper bool
}

func (l loc) path() string {
	if l.fd == unix.AT_FDCWD {
		return l.rel
	}
	if l.rel == "." || l.rel == "" {
		return l.root
	}
	return l.root + "/" + l.rel
}

func (l loc) lstat(st *unix.Stat_t) error {
	if l.fd == unix.AT_FDCWD {
		return unix.Stat(l.rel, st)
	}
	return unix.Fstatat(l.fd, l.rel, st, unix.AT_SYMLINK_NOFOLLOW)
}

// where returns the object's current location.
func (n *node) where() (loc, syscall.Errno) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.whereLocked()
}

func (n *node) whereLocked() (loc, syscall.Errno) {
	u := n.u
	switch {
	case n.indexedLocked():
		return loc{fd: u.workFd, root: u.workPath, rel: u.indexRelFor(n.ino()), upper: true}, 0
	case n.hasUpper:
		rel, ok := n.upperRel()
		if !ok {
			if n.x != nil {
				for fd := range n.x.handles {
					return loc{fd: unix.AT_FDCWD, root: "/proc/self/fd", rel: "/proc/self/fd/" + strconv.Itoa(fd), upper: true}, 0
				}
			}
			return loc{}, syscall.ENOENT
		}
		return loc{fd: u.upper.fd, root: u.upper.root, rel: rel, upper: true}, 0
	case n.isDir:
		lowers := n.lowerDirs()
		if len(lowers) == 0 {
			return loc{}, syscall.ENOENT
		}
		l := u.lowers[lowers[0].layer]
		return loc{fd: l.fd, root: l.root, rel: n.dirLowerRel()}, 0
	case n.lowerLayer >= 0:
		rel, ok := n.lowerRelLocked()
		if !ok {
			return loc{}, syscall.ENOENT
		}
		l := u.lowers[n.lowerLayer]
		return loc{fd: l.fd, root: l.root, rel: rel}, 0
	}
	return loc{}, syscall.ENOENT
}

// isMerged: a directory whose listing comes from more than one layer.
func (n *node) isMerged() bool {
	return n.isDir && len(n.lowerDirs())+btoi(n.hasUpper) > 1
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// newNodeFor builds a node for name, resolved in a directory whose lower
// path is dirLowerRel. Once Lookup returns, go-fuse uses the existing node
// of a known inode number instead (another name of a hardlink group); the
// attributes Lookup computed from this one are then the same, as every
// name of a copied-up group is linked in the upper or indexed.
func (u *union) newNodeFor(f *found, dirLowerRel, name string) *node {
	n := &node{u: u, lowerLayer: int32(f.lowerLayer)}
	n.isDir = f.st.Mode&unix.S_IFMT == unix.S_IFDIR
	n.hasUpper = f.upper
	switch {
	case n.isDir:
		n.x = &nodeExtra{lowerRel: f.lowerRel, lowerDirs: f.lowerDirs, lowerDirBytes: f.lowerDirBytes}
	case f.lowerLayer >= 0 && (f.lowerNlink > 1 || f.lowerRel != join(dirLowerRel, name)):
		// A hardlinked object may get other parents: its path must
		// not depend on which one go-fuse names.
		n.x = &nodeExtra{lowerRel: f.lowerRel, hasLowerRel: true}
	}
	return n
}

func (u *union) stableFor(f *found, ino uint64) fs.StableAttr {
	gen := uint64(1)
	return fs.StableAttr{Mode: f.st.Mode & unix.S_IFMT, Ino: ino, Gen: gen}
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	u := n.u
	f, errno := u.resolve(n, name)
	if errno != 0 {
		return nil, errno
	}
	dirRel, _ := n.upperRel()
	rel := join(dirRel, name)
	ino := u.viewIno(f, rel)
	child := u.newNodeFor(f, n.dirLowerRel(), name)
	if !child.isDir && u.workFd >= 0 && (f.lowerNlink > 1 || (f.upper && f.st.Nlink > 1)) {
		// A lower hardlink group copied up earlier (maybe in an
		// earlier mount) lives in the index; its names may be upper
		// links to it or lower names not linked yet, and one node
		// serves them all.
		var st unix.Stat_t
		if unix.Fstatat(u.workFd, u.indexRelFor(ino), &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			child.more().indexed = true
		}
	}
	sa := u.stableFor(f, ino)
	if !child.isDir && !child.indexedLocked() {
		if f.upper {
			sa.Mode = presentedType(u.upper.path(rel), &f.st)
		} else {
			sa.Mode = presentedType(u.lowers[f.lowerLayer].path(f.lowerRel), &f.st)
		}
	}
	ch := n.NewInode(ctx, child, sa)
	cn := ch.Operations().(*node)
	if errno := cn.attrForEntry(f, rel, &out.Attr); errno != 0 {
		return nil, errno
	}
	cn.mu.Lock()
	upper := cn.hasUpper || cn.indexedLocked()
	cn.mu.Unlock()
	t := u.timeouts(upper)
	out.SetEntryTimeout(t)
	out.SetAttrTimeout(t)
	return ch, 0
}

func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if errno := n.getattr(fh, &out.Attr); errno != 0 {
		return errno
	}
	n.mu.Lock()
	upper := n.hasUpper || n.indexedLocked()
	n.mu.Unlock()
	out.SetTimeout(n.u.timeouts(upper))
	return 0
}

func (n *node) getattr(fh fs.FileHandle, out *fuse.Attr) syscall.Errno {
	u := n.u
	n.mu.Lock()
	l, errno := n.whereLocked()
	merged := n.isMerged()
	indexed := n.indexedLocked()
	lowerLayer := int(n.lowerLayer)
	lowerOnly := errno == 0 && !l.upper && !n.isDir && lowerLayer >= 0
	// A lower object without xattrs has no override record either: no
	// getxattr on every GETATTR (one follows each read, for the atime).
	mayHaveXattrs := !lowerOnly || indexed || n.lowerHasXattrsLocked(l)
	if errno == 0 && l.upper && n.upperNoRecords {
		mayHaveXattrs = false
	}
	n.mu.Unlock()
	var st unix.Stat_t
	if hf := asHandle(fh); hf != nil {
		if err := unix.Fstat(hf.fd, &st); err != nil {
			return fs.ToErrno(err)
		}
		if errno != 0 {
			l = loc{root: "/proc/self/fd", rel: strconv.Itoa(hf.fd)}
		}
	} else if dh, ok := fh.(*dirHandle); ok && errno != 0 && dh.fd >= 0 {
		if err := unix.Fstat(dh.fd, &st); err != nil {
			return fs.ToErrno(err)
		}
		l = loc{fd: unix.AT_FDCWD, rel: "/proc/self/fd/" + strconv.Itoa(dh.fd)}
	} else {
		if errno != 0 {
			return errno
		}
		if err := l.lstat(&st); err != nil {
			return fs.ToErrno(err)
		}
	}
	u.fillAttrX(l.path(), &st, n.ino(), out, mayHaveXattrs)
	if errno == 0 {
		n.showSpecialOwner(l, &st, out, indexed, lowerLayer) // ownertable.go
	}
	switch {
	case merged:
		out.Nlink = 1
	case indexed:
		if v, ok := overlayXattr(l.path(), nlinkSuffix); ok {
			if c, err := strconv.ParseUint(v, 10, 32); err == nil {
				out.Nlink = uint32(c)
			}
		} else if st.Nlink > 1 {
			out.Nlink = uint32(st.Nlink - 1) // the index's own link is no name
		}
	case lowerOnly && st.Nlink > 1:
		out.Nlink = n.viewNlink(lowerLayer, &st)
	}
	return 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	u := n.u
	var s syscall.Statfs_t
	var err error
	if u.upper != nil {
		err = syscall.Fstatfs(u.upper.fd, &s)
	} else {
		err = syscall.Fstatfs(u.lowers[0].fd, &s)
	}
	if err != nil {
		return fs.ToErrno(err)
	}
	out.FromStatfsT(&s)
	return 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	l, errno := n.where()
	if errno != 0 {
		return nil, errno
	}
	for sz := 256; ; sz *= 2 {
		buf := make([]byte, sz)
		m, err := unix.Readlinkat(l.fd, l.rel, buf)
		if err != nil {
			return nil, fs.ToErrno(err)
		}
		if m < sz {
			return buf[:m], 0
		}
	}
}

func (n *node) Access(ctx context.Context, mask uint32) syscall.Errno {
	return n.access(mask) // permissions.go
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if n.u.opts.NoXattrs {
		return 0, syscall.ENOTSUP
	}
	if isPrivateXattr(attr) {
		return 0, syscall.ENODATA
	}
	if sz, errno, ok := n.capabilityGetxattr(attr, dest); ok { // capability.go
		return sz, errno
	}
	return n.storedXattr(attr, dest)
}

// storedXattr reads an xattr of the object as it is on disk.
func (n *node) storedXattr(attr string, dest []byte) (uint32, syscall.Errno) {
	n.mu.Lock()
	l, errno := n.whereLocked()
	if errno == 0 && !l.upper {
		known := n.lowerHasXattrsLocked(l)
		if !known {
			n.mu.Unlock()
			return 0, syscall.ENODATA
		}
	}
	n.mu.Unlock()
	if errno != 0 {
		return 0, errno
	}
	sz, err := unix.Lgetxattr(l.path(), attr, dest)
	return uint32(max(sz, 0)), fs.ToErrno(err)
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if n.u.opts.NoXattrs {
		return 0, syscall.ENOTSUP
	}
	l, errno := n.where()
	if errno != 0 {
		return 0, errno
	}
	names, err := listXattrs(l.path())
	if err != nil {
		return 0, fs.ToErrno(err)
	}
	names = presentCapability(names) // capability.go
	var b []byte
	for _, nm := range names {
		if isPrivateXattr(nm) {
			continue
		}
		b = append(b, nm...)
		b = append(b, 0)
	}
	if len(dest) == 0 {
		return uint32(len(b)), 0
	}
	if len(b) > len(dest) {
		return uint32(len(b)), syscall.ERANGE
	}
	return uint32(copy(dest, b)), 0
}

// lowerHasXattrsLocked reports whether lower object l of n has xattrs at
// all (it never changes). Callers hold n.mu.
func (n *node) lowerHasXattrsLocked(l loc) bool {
	return n.lowerHasXattrsAtLocked(l.path())
}

// lowerHasXattrsAtLocked is lowerHasXattrsLocked for the lower object at
// path.
func (n *node) lowerHasXattrsAtLocked(path string) bool {
	if n.lowerXattrs == xattrsUnknown {
		n.lowerXattrs = xattrsSome
		if names, err := listXattrs(path); err == nil && len(names) == 0 {
			n.lowerXattrs = xattrsNone
		}
	}
	return n.lowerXattrs == xattrsSome
}

// attrForEntry fills the attributes of a node just looked up or made. A
// new node is not in go-fuse's tree yet (its path is unknown until the
// reply), so they come from what resolve found.
func (n *node) attrForEntry(f *found, upperRel string, out *fuse.Attr) syscall.Errno {
	if _, p := n.Parent(); p != nil {
		return n.getattr(nil, out)
	}
	u := n.u
	n.mu.Lock()
	indexed := n.indexedLocked()
	merged := n.isMerged()
	n.mu.Unlock()
	st := f.st
	var path string
	switch {
	case indexed:
		rel := u.indexRelFor(n.ino())
		if err := unix.Fstatat(u.workFd, rel, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fs.ToErrno(err)
		}
		path = u.workPath + "/" + rel
	case f.upper:
		path = u.upper.path(upperRel)
	case n.isDir:
		path = u.lowers[f.lowerDirs[0].layer].path(f.lowerRel)
	default:
		path = u.lowers[f.lowerLayer].path(f.lowerRel)
	}
	mayHaveXattrs := true
	if !f.upper && !indexed && !n.isDir {
		// One listxattr now spares every later GETATTR and security.*
		// probe of the object its getxattr.
		n.mu.Lock()
		mayHaveXattrs = n.lowerHasXattrsAtLocked(path)
		n.mu.Unlock()
	}
	u.fillAttrX(path, &st, n.ino(), out, mayHaveXattrs)
	if li := f.lowerLayer; ownertable.NeedsTable(st.Mode) {
		if f.upper && !indexed {
			li = -1 // a new object or a copy: the upper table alone
		}
		u.presentSpecialOwner(&st, out, f.upper || indexed, upperRel, li, f.lowerRel) // ownertable.go
	}
	switch {
	case merged:
		out.Nlink = 1
	case indexed:
		if v, ok := overlayXattr(path, nlinkSuffix); ok {
			if c, err := strconv.ParseUint(v, 10, 32); err == nil {
				out.Nlink = uint32(c)
			}
		} else if st.Nlink > 1 {
			out.Nlink = uint32(st.Nlink - 1)
		}
	case !f.upper && !n.isDir && f.lowerLayer >= 0 && st.Nlink > 1:
		out.Nlink = n.viewNlink(f.lowerLayer, &st)
	}
	return 0
}
