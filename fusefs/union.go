package fusefs

import (
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// union is the state shared by every node of one mount.
type union struct {
	opts     Options
	log      *slog.Logger
	upper    *layer   // nil for a read-only view
	lowers   []*layer // top first
	readOnly bool
	ns       whiteout.Namespace

	workFd   int // O_PATH of Work/layerfs (our scratch space)
	workPath string
	indexRel string // "index", under workFd
	// workDev/workIno identify the work dir so a layer that contains it
	// never shows it.
	workDev, workIno uint64
	hideWork         bool

	inos           *inoMapper
	rootLowerBytes int64
	rootDirs       []lowerDir // the lowers merged at the root
	root           *node      // set by Mount; for finding looked-up nodes by path
	// viewGen moves on every change that may hide or uncover names
	// (each unlink, rmdir and rename, see moves.go), so per-node counts
	// of visible names know when to recount.
	viewGen atomic.Uint64
	// redirects: see redirectViews.
	redirectMu     sync.Mutex
	redirects      map[string][]string
	redirectsKnown bool
	uids           idMapper
	gids           idMapper
	tmpMu          sync.Mutex
	tmpN           uint64
	// whFilesWritten: a whiteout had to be a ".wh." file (no mknod), so
	// the dirs this mount made may hold some (see upperMadeHere).
	whFilesWritten atomic.Bool
	pid            int // names temporary objects
	// euid and egid own what the daemon makes (see ownsNatively).
	euid, egid int
	// indexes and listings bound the memory of the directories' name
	// indexes and listings.
	indexes  indexCache
	listings listingCache
	// tree is what the kernel knows of the view (tree.go); srv serves
	// it (set when the kernel's INIT is answered).
	tree *tree
	srv  *fuse.Server
	// noBacking: the kernel refused a passthrough backing file once, so
	// it is not asked again.
	noBacking atomic.Bool
	// plusMax is plusMaxNames (dir.go), or Options.plusMax.
	plusMax int
	// moves orders requests around name changes (moves.go).
	moves moves
	// owners: the special-owners tables (ownertable.go).
	owners specialOwners
	// acl: POSIX ACL semantics (acl.go); procUmask is the daemon's
	// own umask.
	acl       bool
	procUmask uint32
}

func newUnion(o Options) (*union, error) {
	u := &union{opts: o, log: o.Logger, ns: o.XattrNamespace, readOnly: o.readOnlyView(), workFd: -1}
	u.indexes.max = maxIndexBytes
	u.listings.max = maxListingBytes
	u.plusMax = cmp.Or(o.plusMax, plusMaxNames)
	u.moves.ended.L = &u.moves.count
	u.procUmask = processUmask()
	u.pid, u.euid, u.egid = os.Getpid(), os.Geteuid(), os.Getegid()
	u.uids = idMapper{m: o.UIDMap, squash: o.SquashUID}
	u.gids = idMapper{m: o.GIDMap, squash: o.SquashGID}
	var devs []uint64
	if o.Upper != "" {
		l, err := openLayer(o.Upper, true)
		if err != nil {
			return nil, err
		}
		u.upper = l
		devs = append(devs, l.dev)
	}
	for _, p := range o.Lowers {
		l, err := openLayer(p, false)
		if err != nil {
			u.close()
			return nil, err
		}
		u.lowers = append(u.lowers, l)
		devs = append(devs, l.dev)
	}
	u.inos = newInoMapper(devs)
	if o.Work != "" {
		var st unix.Stat_t
		if err := unix.Stat(o.Work, &st); err != nil {
			u.close()
			return nil, fmt.Errorf("work dir %s: %w", o.Work, err)
		}
		u.workDev, u.workIno, u.hideWork = st.Dev, st.Ino, true
		u.workPath = filepath.Join(o.Work, "layerfs")
		if !u.readOnly {
			for _, d := range []string{u.workPath, filepath.Join(u.workPath, "index"), filepath.Join(u.workPath, "tmp")} {
				if err := os.Mkdir(d, 0o700); err != nil && !os.IsExist(err) {
					u.close()
					return nil, fmt.Errorf("prepare work dir: %w", err)
				}
			}
			// Leftovers of a crash: half-built copy-ups never became
			// visible.
			if ents, err := os.ReadDir(filepath.Join(u.workPath, "tmp")); err == nil {
				for _, e := range ents {
					os.RemoveAll(filepath.Join(u.workPath, "tmp", e.Name()))
				}
			}
		}
		// A read-only view of a used upper still needs the hardlink
		// index to read; a fresh one has none.
		fd, err := unix.Open(u.workPath, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil && !(u.readOnly && os.IsNotExist(err)) {
			u.close()
			return nil, fmt.Errorf("open work dir: %w", err)
		}
		if err != nil {
			fd = -1
		}
		u.workFd = fd
		u.indexRel = "index"
		if u.upper != nil {
			var ust unix.Stat_t
			if err := unix.Fstat(fd, &ust); err == nil && ust.Dev != u.upper.dev {
				u.close()
				return nil, fmt.Errorf("work dir %s and upper %s are on different filesystems", o.Work, o.Upper)
			}
		}
	}
	owners, err := openSpecialOwners(&o)
	if err != nil {
		u.close()
		return nil, err
	}
	u.owners = owners
	return u, nil
}

func (u *union) close() {
	if u.upper != nil {
		unix.Close(u.upper.fd)
	}
	for _, l := range u.lowers {
		unix.Close(l.fd)
	}
	if u.workFd >= 0 {
		unix.Close(u.workFd)
	}
	u.owners.close()
}

func (u *union) tmpName() string {
	u.tmpMu.Lock()
	u.tmpN++
	n := u.tmpN
	u.tmpMu.Unlock()
	return fmt.Sprintf("tmp/%d-%d", u.pid, n)
}

func (u *union) debugf(msg string, args ...any) {
	if u.opts.Debug {
		u.log.Debug(msg, args...)
	}
}

// hidden reports whether an entry of a layer is the work dir.
func (u *union) isWorkDir(l *layer, ino uint64) bool {
	return u.hideWork && l.dev == u.workDev && ino == u.workIno
}

// lowerDir is one lower layer merged into a directory.
type lowerDir struct {
	layer int  // index in union.lowers
	xwh   bool // the dir may hold xattr whiteouts
}

// found describes what a name resolves to in the union.
type found struct {
	st    unix.Stat_t // of the topmost object (gives the attributes)
	upper bool        // topmost object is in the upper
	// non-directories found in a lower: which one
	lowerLayer int
	// the object's path in the lowers (differs from the union path under a
	// redirected directory)
	lowerRel string
	// directories: the lower dirs merged, top first
	lowerDirs []lowerDir
	// lowerNlink: st_nlink of the lower object (non-dirs)
	lowerNlink uint32
	lowerIno   uint64 // view ino of the topmost lower object, 0 if none
	// lowerDirBytes sums the st_size of the lower dirs: a cheap measure
	// of how many names they hold.
	lowerDirBytes int64
}

// resolve looks name up in directory d. ENOENT when hidden or absent.
func (u *union) resolve(d *node, name string) (*found, syscall.Errno) {
	if whiteout.ClassifyName(name).Kind != whiteout.None {
		return nil, syscall.ENOENT
	}
	index := u.nameIndex(d)
	d.mu.Lock()
	ds := dirState{hasUpper: d.hasUpper, lowers: d.lowerDirs(), lowerRel: d.dirLowerRel(), index: index}
	ds.noWhFiles = d.noWhFilesLocked()
	d.mu.Unlock()
	if ds.hasUpper && u.upper != nil {
		urel, ok := d.upperRel()
		if !ok {
			return nil, syscall.ENOENT
		}
		ds.upperRel = urel
	}
	return u.resolveIn(&ds, name)
}

// dirState is what resolving a name needs to know of its directory.
type dirState struct {
	hasUpper bool
	upperRel string // the directory's path in the upper (when hasUpper)
	lowers   []lowerDir
	lowerRel string
	index    *nameIndex // names of the lowers' dirs; may be nil
	// noWhFiles: the upper dir holds no ".wh." files (upperMadeHere).
	noWhFiles bool
}

// resolvePath resolves a path of the view from the root without the
// go-fuse tree (the names need not have been looked up).
func (u *union) resolvePath(rel string) (*found, syscall.Errno) {
	ds := dirState{hasUpper: u.upper != nil, upperRel: ".", lowers: u.rootDirs, lowerRel: "."}
	comps := strings.Split(rel, "/")
	for i, c := range comps {
		f, errno := u.resolveIn(&ds, c)
		if errno != 0 {
			return nil, errno
		}
		if i == len(comps)-1 {
			return f, 0
		}
		if f.st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil, syscall.ENOTDIR
		}
		ds = dirState{hasUpper: f.upper, upperRel: join(ds.upperRel, c), lowers: f.lowerDirs, lowerRel: f.lowerRel}
	}
	return nil, syscall.ENOENT
}

// resolveIn looks name up in the directory ds describes.
func (u *union) resolveIn(ds *dirState, name string) (*found, syscall.Errno) {
	if whiteout.ClassifyName(name).Kind != whiteout.None || name == "" || name == "." || name == ".." {
		return nil, syscall.ENOENT
	}
	index := ds.index
	dirUpper := ds.hasUpper
	lowers := ds.lowers
	dirLowerRel := ds.lowerRel

	f := &found{lowerLayer: -1}
	// unverified: lowerRel came from a redirect, so its directories were
	// never checked to be directories in each layer.
	unverified := false
	lowerRel := join(dirLowerRel, name)
	searchLowers := lowers
	if dirUpper && u.upper != nil {
		rel := join(ds.upperRel, name)
		var st unix.Stat_t
		err := u.upper.lstat(rel, &st)
		switch {
		case err == nil && u.isWorkDir(u.upper, st.Ino):
			return nil, syscall.ENOENT
		case err == nil && isWhiteout(u.upper, rel, &st, false):
			return nil, syscall.ENOENT
		case err == nil:
			f.st, f.upper = st, true
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return f, 0
			}
			m := readDirMarks(u.upper, rel)
			if m.opaque || (!ds.noWhFiles && hasWhFile(u.upper, rel)) {
				f.lowerRel = lowerRel
				return f, 0
			}
			if m.hasRedirect && m.redirect != "" {
				target, abs, ok := parseRedirect(m.redirect)
				if !ok {
					// A redirect we cannot trust merges nothing.
					f.lowerRel = lowerRel
					return f, 0
				}
				unverified = true
				index = nil
				if abs {
					lowerRel = target
					searchLowers = nil
					for i := range u.lowers {
						searchLowers = append(searchLowers, lowerDir{layer: i})
					}
				} else {
					lowerRel = join(dirLowerRel, target)
				}
			}
		case err == syscall.ENOENT || err == syscall.ENOTDIR:
			if !ds.noWhFiles && hasWhFile(u.upper, rel) {
				return nil, syscall.ENOENT
			}
		default:
			return nil, toErrno(err)
		}
	}
	f.lowerRel = lowerRel
	var holders, whHolders uint64
	if index != nil {
		holders, whHolders = index.holders(name), index.holders(whiteout.Prefix+name)
	}
	for i, ld := range searchLowers {
		l := u.lowers[ld.layer]
		if bit := uint64(1) << uint(i); index != nil && i < maxIndexedLayers && index.read&bit != 0 {
			// The dir was read: answer absent names without a
			// syscall.
			if holders&bit == 0 {
				if whHolders&bit != 0 {
					break
				}
				continue
			}
		}
		var st unix.Stat_t
		var err error
		if unverified {
			err = l.lstatBeneath(lowerRel, &st)
		} else {
			err = l.lstat(lowerRel, &st)
		}
		if err != nil {
			if !unverified && hasWhFile(l, lowerRel) {
				break
			}
			continue
		}
		if u.isWorkDir(l, st.Ino) || isWhiteout(l, lowerRel, &st, ld.xwh) {
			break
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if !f.upper && f.lowerIno == 0 && len(f.lowerDirs) == 0 {
			// First, topmost object.
			f.st = st
			f.lowerIno = u.inos.ino(st.Dev, st.Ino)
			if !isDir {
				f.lowerLayer = ld.layer
				f.lowerNlink = uint32(st.Nlink)
				return f, 0
			}
		} else if !isDir {
			// A non-dir below a dir ends the merge.
			break
		}
		if f.upper && f.lowerIno == 0 {
			f.lowerIno = u.inos.ino(st.Dev, st.Ino)
		}
		m := readDirMarks(l, lowerRel)
		f.lowerDirs = append(f.lowerDirs, lowerDir{layer: ld.layer, xwh: m.xwhiteouts})
		f.lowerDirBytes += st.Size
		if m.opaque || hasWhFile(l, lowerRel) {
			break
		}
	}
	if !f.upper && f.lowerIno == 0 {
		return nil, syscall.ENOENT
	}
	return f, 0
}

// viewIno computes the inode number the view shows for f.
func (u *union) viewIno(f *found, upperRel string) uint64 {
	if f.upper {
		if o, ok := u.upperOrigin(u.upper.path(upperRel)); ok { // kernelindex.go
			return o
		}
		return u.inos.ino(f.st.Dev, f.st.Ino)
	}
	return f.lowerIno
}

// indexRelFor is the hardlink index entry of a view inode.
func (u *union) indexRelFor(ino uint64) string {
	return fmt.Sprintf("%s/%016x", u.indexRel, ino)
}

// fillAttr converts a host stat into the view's attributes.
func (u *union) fillAttr(path string, st *unix.Stat_t, ino uint64, out *fuse.Attr) {
	u.fillAttrX(path, st, ino, out, true)
}

// fillAttrX is fillAttr that reads no override record when the object is
// known to have no xattrs at all.
func (u *union) fillAttrX(path string, st *unix.Stat_t, ino uint64, out *fuse.Attr, mayHaveXattrs bool) {
	out.FromStat(toSyscallStat(st))
	out.Ino = ino
	var ov statoverride.Stat
	ok := false
	if mayHaveXattrs {
		// Symlinks, FIFOs and sockets cannot carry the record: theirs
		// are in the special-owners tables (presentSpecialOwner).
		ov, ok, _ = getOverride(path, st)
	}
	if ok {
		out.Uid, out.Gid = ov.UID, ov.GID
		out.Mode = out.Mode&unix.S_IFMT | ov.Mode&07777
		if ov.HasType() && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0 {
			// A rootless store keeps devices, fifos and sockets as
			// empty files that say what they stand for.
			out.Mode = ov.Mode
			out.Rdev = uint32(ov.Rdev)
		}
		if u.opts.SquashUID != nil {
			out.Uid = *u.opts.SquashUID
		}
		if u.opts.SquashGID != nil {
			out.Gid = *u.opts.SquashGID
		}
	} else {
		out.Uid = u.uids.toView(out.Uid)
		out.Gid = u.gids.toView(out.Gid)
	}
}

func (u *union) timeouts(upper bool) time.Duration {
	if upper {
		return u.opts.Timeout
	}
	return u.opts.LowerTimeout
}

func toSyscallStat(st *unix.Stat_t) *syscall.Stat_t {
	return &syscall.Stat_t{
		Dev: st.Dev, Ino: st.Ino, Nlink: st.Nlink, Mode: st.Mode, Uid: st.Uid, Gid: st.Gid,
		Rdev: st.Rdev, Size: st.Size, Blksize: st.Blksize, Blocks: st.Blocks,
		Atim: syscall.Timespec(st.Atim), Mtim: syscall.Timespec(st.Mtim), Ctim: syscall.Timespec(st.Ctim),
	}
}

// parseRedirect validates an overlay redirect xattr: an absolute path from
// the layer roots, or one name relative to the parent's lower path.
func parseRedirect(v string) (target string, abs, ok bool) {
	v = strings.TrimRight(v, "\x00")
	if strings.HasPrefix(v, "/") {
		c := filepath.Clean(v)
		if c == "/" {
			return ".", true, true
		}
		return c[1:], true, true
	}
	if v == "" || v == "." || v == ".." || strings.Contains(v, "/") {
		return "", false, false
	}
	return v, false, true
}

// presentedType is the file type the view shows for an object at path
// with stat st (an override_stat record may turn an empty file into a
// device, fifo or socket).
func presentedType(path string, st *unix.Stat_t) uint32 {
	t := st.Mode & unix.S_IFMT
	if t == unix.S_IFREG && st.Size == 0 {
		if ov, ok, _ := pathRef(path).override(); ok && ov.HasType() {
			return ov.Mode & unix.S_IFMT
		}
	}
	return t
}

// maxIndexBytes bounds the name indexes of one mount (about 13 bytes and
// the name per entry: a 100k-entry directory over 4 layers takes 2 MiB).
// Most lookups follow a listing of their directory closely (ls -l, find,
// and READDIRPLUS itself), so a few recent indexes serve them.
// maxListingBytes bounds the listings (about 21 bytes and the name per
// entry): the kernel keeps what it read, but in page cache, so a listing
// is needed while the kernel reads it and again whenever reclaim took the
// kernel's copy (on a busy or memory-managed host, within minutes); the
// least recently used go first.
const (
	maxIndexBytes   = 3 << 20
	maxListingBytes = 4 << 20
)

// Deep stacks: a lookup of a name that most layers lack costs two stats
// per layer (the name and its ".wh." file). Directories whose lower copies
// are small together are read once instead and their names kept; big ones
// are never loaded by a lookup (only a readdir builds their index).
const (
	indexMinLayers = 3
	indexMaxBytes  = 256 << 10
)

// nameIndex returns d's index of its lower dirs' names: the cached one, or
// for a small directory spread over several lower layers a new one; nil
// for others until a readdir builds theirs.
func (u *union) nameIndex(d *node) *nameIndex {
	lowers := d.lowerDirs()
	if len(lowers) == 0 {
		return nil
	}
	d.mu.Lock()
	slot := d.x.names
	bytes := d.x.lowerDirBytes
	d.mu.Unlock()
	if slot != nil {
		if x := slot.get(); x != nil {
			return x
		}
	}
	if len(lowers) < indexMinLayers || bytes <= 0 || bytes > indexMaxBytes {
		return nil
	}
	var b indexBuilder
	rel := d.dirLowerRel()
	for i, ld := range lowers {
		ents, err := readLayerDir(u.lowers[ld.layer], rel)
		if err != nil {
			continue // not marked read: that layer is asked name by name
		}
		b.add(i, ents)
	}
	x := b.build()
	u.keepIndex(d, x)
	return x
}

// keepIndex stores x as directory d's index, in the mount's bounded cache.
func (u *union) keepIndex(d *node, x *nameIndex) {
	d.mu.Lock()
	slot := d.x.names
	if slot == nil {
		slot = &cachedIndex{}
		d.x.names = slot
	}
	d.mu.Unlock()
	u.indexes.put(slot, x, x.size())
}
