package fusefs

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/ownertable"
)

// node is one object of the view, as the kernel knows it (tree.go): its
// node ID is the view inode number, so every name of a hardlink group is
// one node.
//
// The kernel keeps a node for every name it caches (a stat walk of a
// million files makes a million), so a node holds only what every object
// needs; the rest (directories, hardlinked or open objects) lives in x.
type node struct {
	u *union

	// Kept by the tree, under tree.mu: the name the kernel knows the
	// object by (parent nil: the root, or no name leads to it) and the
	// kernel's references to it (lookups). kids counts the names of
	// nodes in the table under this directory; registered says whether
	// the node is in the table; gone, that its object's last name left
	// the view; synthetic, that its node ID is not its inode number.
	parent     *node
	name       string
	lookups    uint32
	kids       uint32
	registered bool
	gone       bool
	synthetic  bool

	isDir bool   // never changes
	mode  uint8  // the file type the view shows (S_IFMT >> 12); never changes
	ino   uint64 // the view inode number

	mu sync.Mutex // guards the fields below and x; held during this node's copy-up
	// lowerLayer is the lower layer holding a non-dir's lower object
	// (-1: none). Its path there is the parent directory's lower path
	// joined with the node's name, or x.lowerRel where that does not
	// hold (see lowerRelLocked).
	lowerLayer int32
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

// fileType is the S_IFMT bits of the type n shows.
func (n *node) fileType() uint32 { return uint32(n.mode) << 12 }

// typeBits packs file type bits for node.mode.
func typeBits(mode uint32) uint8 { return uint8(mode & unix.S_IFMT >> 12) }

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
	// listing is the directory's slot in the mount's listing cache
	// (dir.go), and listGen counts its changes through the view.
	listing *cachedListing
	listGen uint64
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
	// backingID is the passthrough backing file the kernel was given
	// for this inode (0: none), shared by its passthrough handles.
	backingID int32
	// handles holds open descriptors of upper objects: an object that
	// left the tree (unlinked, O_TMPFILE) is still reachable through
	// /proc/self/fd.
	handles map[int]bool
	// kept holds the upper copy (O_PATH) of an object no name leads to
	// any more while the kernel may still stat it: an open directory
	// renamed over or removed, a retired node (file.go).
	kept *os.File
	// backingLower: backingID is the lower file's (a read-only open in
	// a writable view), which the kernel reads directly and cannot be
	// pointed at a copy-up (see node.retire).
	backingLower bool
	// upperIno is the upper object's inode number where it differs
	// from the view's (a copy-up records its origin; see isObject).
	upperIno uint64
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
	return join(p.dirLowerRel(), name), true
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

// forgotten runs when n left the node table (tree.go): the kernel holds
// it no more, so what it caches for lookups and listings goes, and the
// node itself with the last reference to it.
func (n *node) forgotten() {
	n.mu.Lock()
	x := n.x
	var names *cachedIndex
	var listing *cachedListing
	var kept *os.File
	if x != nil {
		names, listing, kept = x.names, x.listing, x.kept
		x.kept = nil
	}
	n.mu.Unlock()
	if names != nil {
		n.u.indexes.drop(names)
	}
	if listing != nil {
		n.u.listings.drop(listing)
	}
	if kept != nil {
		kept.Close()
	}
}

// keptLocked returns the descriptor that reaches n's upper object when no
// name does, or -1: x.kept, made from an open handle's descriptor if need
// be. Not the handle's own: a release may close it while a request uses
// its /proc path, and the number go to another file; kept lives until the
// kernel forgets n, after its last request.
func (n *node) keptLocked() int {
	x := n.x
	if x == nil {
		return -1
	}
	if x.kept == nil {
		for fd := range x.handles {
			kfd, err := unix.Open(procFd(fd, true).path(), unix.O_PATH|unix.O_CLOEXEC, 0)
			if err == nil {
				x.kept = os.NewFile(uintptr(kfd), "kept")
				break
			}
		}
	}
	if x.kept == nil {
		return -1
	}
	return int(x.kept.Fd())
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

// procFd is the location of an open descriptor of the daemon's: its
// /proc/self/fd link, which calls must follow (see fileRef).
func procFd(fd int, upper bool) loc {
	return loc{fd: unix.AT_FDCWD, root: procFdDir, rel: procFdDir + "/" + strconv.Itoa(fd), upper: upper}
}

const procFdDir = "/proc/self/fd"

// isProcFdPath reports whether path is one procFd made.
func isProcFdPath(path string) bool {
	rest, ok := strings.CutPrefix(path, procFdDir+"/")
	if !ok || rest == "" {
		return false
	}
	for _, c := range []byte(rest) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
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
		return loc{fd: u.workFd, root: u.workPath, rel: u.indexRelFor(n.ino), upper: true}, 0
	case n.hasUpper:
		rel, ok := n.upperRel()
		if !ok {
			if fd := n.keptLocked(); fd >= 0 {
				return procFd(fd, true), 0
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
// path is dirLowerRel, to stand for view inode ino. The tree uses the
// existing node of a known inode number instead (another name of a
// hardlink group); the attributes computed from this one are then the
// same, as every name of a copied-up group is linked in the upper or
// indexed.
func (u *union) newNodeFor(f *found, dirLowerRel, name string, ino uint64) *node {
	n := &node{u: u, lowerLayer: int32(f.lowerLayer), ino: ino, mode: typeBits(f.st.Mode)}
	n.isDir = f.st.Mode&unix.S_IFMT == unix.S_IFDIR
	n.hasUpper = f.upper
	switch {
	case n.isDir:
		n.x = &nodeExtra{lowerRel: f.lowerRel, lowerDirs: f.lowerDirs, lowerDirBytes: f.lowerDirBytes}
	case f.lowerLayer >= 0 && (f.lowerNlink > 1 || f.lowerRel != join(dirLowerRel, name)):
		// A hardlinked object may get other parents: its path must
		// not depend on which one the tree names.
		n.x = &nodeExtra{lowerRel: f.lowerRel, hasLowerRel: true}
	}
	return n
}

// entryNode makes the node for name in directory d that resolve found as
// f (view inode ino), ready for the tree: a lower hardlink group copied
// up earlier may live in the index, and an empty file's override record
// may make it a device, FIFO or socket.
func (d *node) entryNode(f *found, name, rel string, ino uint64) *node {
	u := d.u
	child := u.newNodeFor(f, d.dirLowerRel(), name, ino)
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
	if !child.isDir && !child.indexedLocked() {
		if f.upper {
			child.mode = typeBits(presentedType(u.upper.path(rel), &f.st))
		} else if !child.lowerHasXattrsAtLocked(u.lowers[f.lowerLayer].path(f.lowerRel)) {
			// No override record to read.
		} else {
			child.mode = typeBits(presentedType(u.lowers[f.lowerLayer].path(f.lowerRel), &f.st))
		}
	}
	return child
}

// lookup resolves name in directory d and returns its node, with one more
// kernel reference counted, and its entry in out.
func (d *node) lookup(name string, out *fuse.EntryOut) (*node, syscall.Errno) {
	u := d.u
	f, errno := u.resolve(d, name)
	if errno != 0 {
		return nil, errno
	}
	dirRel, _ := d.upperRel()
	rel := join(dirRel, name)
	ino := u.viewIno(f, rel)
	var made *node
	if u.tree.find(ino) == nil {
		made = d.entryNode(f, name, rel, ino)
	}
	n := u.tree.lookup(d, name, ino, func() *node {
		if made == nil { // the node found was forgotten meanwhile
			made = d.entryNode(f, name, rel, ino)
		}
		return made
	})
	var errno2 syscall.Errno
	if n == made {
		errno2 = n.attrForEntry(f, rel, &out.Attr)
	} else {
		errno2 = n.getattr(nil, &out.Attr)
	}
	if errno2 != 0 {
		u.tree.release(n, 1)
		return nil, errno2
	}
	n.entryOut(out)
	return n, 0
}

// entryOut fills what a reply naming n carries besides its attributes:
// the node ID, inode number, file type and timeouts.
func (n *node) entryOut(out *fuse.EntryOut) {
	out.NodeId = n.u.tree.id(n)
	out.Generation = 1
	n.attrOut(&out.Attr)
	t := n.timeout()
	out.SetEntryTimeout(t)
	out.SetAttrTimeout(t)
}

// attrOut makes attributes read from disk n's: its inode number and the
// file type it has shown since the kernel first saw it.
func (n *node) attrOut(a *fuse.Attr) {
	a.Ino = n.ino
	a.Mode = a.Mode&07777 | n.fileType()
	if n.isDir {
		// The C library sizes its readdir buffer from st_blksize (32
		// KiB at least, 1 MiB at most): a listing then comes in
		// requests as big as the kernel sends (dirReadSize), four
		// times fewer round trips than with 32 KiB.
		a.Blksize = dirReadSize
	}
}

// dirReadSize is the largest READDIR the kernel sends: go-fuse's
// MaxWrite, 128 KiB (max_pages).
const dirReadSize = 128 << 10

// timeout is how long the kernel may cache n's entry and attributes.
func (n *node) timeout() time.Duration {
	n.mu.Lock()
	upper := n.hasUpper || n.indexedLocked()
	n.mu.Unlock()
	return n.u.timeouts(upper)
}

// getattr fills out with n's attributes; h, when not nil, is the open
// file the kernel asked through.
func (n *node) getattr(h *fileHandle, out *fuse.Attr) syscall.Errno {
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
	if h != nil {
		if err := unix.Fstat(h.fd, &st); err != nil {
			return toErrno(err)
		}
		if errno != 0 {
			l = procFd(h.fd, h.upper)
		}
	} else {
		if errno != 0 {
			return errno
		}
		var err error
		l, err = n.retryMoved(l, &st, func(l loc) error { return l.lstat(&st) })
		if err != nil {
			return toErrno(err)
		}
	}
	u.fillAttrX(l.path(), &st, n.ino, out, mayHaveXattrs)
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
	n.attrOut(out)
	return 0
}

// isObject reports whether st, the stat of upper object l, is n's
// object: the view inode number it gives is n's (a copied-up object's
// origin record is read once and its upper inode number kept).
func (n *node) isObject(st *unix.Stat_t, l loc) bool {
	u := n.u
	if u.inos.ino(st.Dev, st.Ino) == n.ino {
		return true
	}
	n.mu.Lock()
	known := n.x != nil && n.x.upperIno == st.Ino
	n.mu.Unlock()
	if known {
		return true
	}
	if o, ok := u.upperOrigin(l.path()); !ok || o != n.ino {
		return false
	}
	n.mu.Lock()
	n.more().upperIno = st.Ino
	n.mu.Unlock()
	return true
}

func (n *node) statfs(out *fuse.StatfsOut) syscall.Errno {
	u := n.u
	var s syscall.Statfs_t
	var err error
	if u.upper != nil {
		err = syscall.Fstatfs(u.upper.fd, &s)
	} else {
		err = syscall.Fstatfs(u.lowers[0].fd, &s)
	}
	if err != nil {
		return toErrno(err)
	}
	out.FromStatfsT(&s)
	return 0
}

func (n *node) readlink() ([]byte, syscall.Errno) {
	l, errno := n.where()
	if errno != 0 {
		return nil, errno
	}
	var target []byte
	_, err := n.retryMoved(l, nil, func(l loc) error {
		for sz := 256; ; sz *= 2 {
			buf := make([]byte, sz)
			m, err := unix.Readlinkat(l.fd, l.rel, buf)
			if err != nil || m < sz {
				target = buf[:max(m, 0)]
				return err
			}
		}
	})
	return target, toErrno(err)
}

func (n *node) getxattr(attr string, dest []byte) (uint32, syscall.Errno) {
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
	var sz int
	_, err := n.retryMoved(l, nil, func(l loc) (err error) {
		sz, err = pathRef(l.path()).getxattr(attr, dest)
		return err
	})
	return uint32(max(sz, 0)), toErrno(err)
}

func (n *node) listxattr(dest []byte) (uint32, syscall.Errno) {
	if n.u.opts.NoXattrs {
		return 0, syscall.ENOTSUP
	}
	l, errno := n.where()
	if errno != 0 {
		return 0, errno
	}
	var names []string
	_, err := n.retryMoved(l, nil, func(l loc) (err error) {
		names, err = listXattrs(l.path())
		return err
	})
	if err != nil {
		return 0, toErrno(err)
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

// attrForEntry fills the attributes of a node just made for what resolve
// found (f, at upper path upperRel). The tree names it already, but the
// attributes come from f, which holds its stat.
func (n *node) attrForEntry(f *found, upperRel string, out *fuse.Attr) syscall.Errno {
	u := n.u
	n.mu.Lock()
	indexed := n.indexedLocked()
	merged := n.isMerged()
	n.mu.Unlock()
	st := f.st
	var path string
	switch {
	case indexed:
		rel := u.indexRelFor(n.ino)
		if err := unix.Fstatat(u.workFd, rel, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return toErrno(err)
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
	u.fillAttrX(path, &st, n.ino, out, mayHaveXattrs)
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
	n.attrOut(out)
	return 0
}

// retire makes n, a file whose kernel inode reads its lower file directly
// (passthrough) though it was copied up since, stand for the object no
// more (tree.retire): the descriptors open on it keep reading the lower
// file, and the kernel, told to forget its names, makes a new inode for
// the object at the next lookup, whose opens reach the copy. n keeps its
// upper copy open, so it still stats.
func (n *node) retire() {
	u := n.u
	if rel, ok := n.upperRel(); ok {
		n.keep(rel)
	}
	n.keepLowerRel()
	names := u.tree.retire(n)
	if u.srv == nil {
		return
	}
	go func() {
		for _, r := range names {
			u.srv.EntryNotify(r.parent, r.name)
		}
	}()
}
