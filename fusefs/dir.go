package fusefs

import (
	"slices"
	"sort"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

func isPrivateXattr(name string) bool { return whiteout.IsPrivateXattr(name) }

// rawEntry is one name of one layer directory.
type rawEntry struct {
	name string
	ino  uint64
	typ  uint8
}

// readLayerDir lists a directory of one layer with getdents.
func readLayerDir(l *layer, rel string) ([]rawEntry, error) {
	fd, err := openLayerDir(l, rel)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return readDirents(fd, make([]byte, 32*1024))
}

func openLayerDir(l *layer, rel string) (int, error) {
	return unix.Openat(l.fd, rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// readDirents lists open directory fd, reading through buf.
func readDirents(fd int, buf []byte) ([]rawEntry, error) {
	var out []rawEntry
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return out, nil
		}
		b := buf[:n]
		for len(b) > 0 {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name
			reclen := int(b[16]) | int(b[17])<<8
			ino := uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
				uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
			typ := b[18]
			nameb := b[19:reclen]
			for i, c := range nameb {
				if c == 0 {
					nameb = nameb[:i]
					break
				}
			}
			name := string(nameb)
			b = b[reclen:]
			if name == "." || name == ".." {
				continue
			}
			out = append(out, rawEntry{name: name, ino: ino, typ: typ})
		}
	}
}

// readMergeSource reads one layer's copy of a directory for list, with
// buf as getdents' buffer: one buffer serves every layer of a listing (a
// 64-layer directory would otherwise leave 2 MiB of garbage each time it
// is read). overrides reports an override_stat record on the directory,
// as rootless stores give every entry: its empty files may then stand for
// devices, so their d_type must come from their records.
func readMergeSource(l *layer, rel string, buf []byte) (ents []rawEntry, overrides bool, err error) {
	fd, err := openLayerDir(l, rel)
	if err != nil {
		return nil, false, err
	}
	defer unix.Close(fd)
	// On the descriptor: a path would be looked up again, component by
	// component, for every layer.
	if _, err := unix.Fgetxattr(fd, statoverride.Xattr, nil); err == nil {
		overrides = true
	}
	ents, err = readDirents(fd, buf)
	return ents, overrides, err
}

func dtToMode(t uint8) uint32 {
	switch t {
	case unix.DT_DIR:
		return unix.S_IFDIR
	case unix.DT_REG:
		return unix.S_IFREG
	case unix.DT_LNK:
		return unix.S_IFLNK
	case unix.DT_CHR:
		return unix.S_IFCHR
	case unix.DT_BLK:
		return unix.S_IFBLK
	case unix.DT_FIFO:
		return unix.S_IFIFO
	case unix.DT_SOCK:
		return unix.S_IFSOCK
	}
	return 0
}

// list merges the directory's layers: upper first, then the lowers, a name
// decided by the first layer that has it (or whites it out); private names
// never show. Inode numbers are the ones Lookup gives. Reading every lower
// dir anyway, it leaves their names in the directory's index for the
// lookups that follow (ls -l, find).
func (u *union) list(n *node) (*listing, syscall.Errno) {
	n.mu.Lock()
	hasUpper := n.hasUpper
	n.mu.Unlock()
	lowers := n.lowerDirs()
	lowerRel := n.dirLowerRel()

	seen := map[string]struct{}{}
	out := &listing{}
	parentIno := n.ino
	if _, p := n.Parent(); p != nil {
		parentIno = p.ino
	}
	out.add(".", unix.S_IFDIR, n.ino)
	out.add("..", unix.S_IFDIR, parentIno)

	type src struct {
		l   *layer
		rel string
		xwh bool
	}
	var srcs []src
	if hasUpper && u.upper != nil {
		rel, ok := n.upperRel()
		if !ok {
			return nil, syscall.ENOENT
		}
		srcs = append(srcs, src{l: u.upper, rel: rel})
	}
	for _, ld := range lowers {
		srcs = append(srcs, src{l: u.lowers[ld.layer], rel: lowerRel, xwh: ld.xwh})
	}
	var index indexBuilder
	buf := make([]byte, 32*1024)
	for i, s := range srcs {
		ents, overrides, err := readMergeSource(s.l, s.rel, buf)
		if err != nil {
			if i == 0 {
				return nil, toErrno(err)
			}
			continue
		}
		if !s.l.upper {
			index.add(i-(len(srcs)-len(lowers)), ents)
		}
		var hideBelow []string
		for _, e := range ents {
			if k := whiteout.ClassifyName(e.name); k.Kind != whiteout.None {
				if k.Kind == whiteout.Whiteout {
					hideBelow = append(hideBelow, k.Target)
				}
				continue
			}
			if _, ok := seen[e.name]; ok {
				continue
			}
			rel := join(s.rel, e.name)
			mode := dtToMode(e.typ)
			if e.typ == unix.DT_CHR || e.typ == unix.DT_UNKNOWN || (e.typ == unix.DT_REG && (s.xwh || overrides)) {
				var st unix.Stat_t
				if err := s.l.lstat(rel, &st); err != nil {
					continue
				}
				mode = st.Mode & unix.S_IFMT
				if isWhiteout(s.l, rel, &st, s.xwh) {
					seen[e.name] = struct{}{}
					continue
				}
				if overrides {
					mode = presentedType(s.l.path(rel), &st)
				}
			}
			if u.isWorkDir(s.l, e.ino) {
				continue
			}
			seen[e.name] = struct{}{}
			ino := u.inos.ino(s.l.dev, e.ino)
			if s.l.upper {
				if o, ok := u.upperOrigin(s.l.path(rel)); ok { // kernelindex.go
					ino = o
				}
			}
			out.add(e.name, mode, ino)
		}
		for _, h := range hideBelow {
			seen[h] = struct{}{}
		}
	}
	if len(lowers) > 0 {
		u.keepIndex(n, index.build())
	}
	return out, 0
}

// Reading a directory. The kernel never opens one (rawFS.OpenDir), so a
// READDIR or READDIRPLUS carries nothing but a position, and a position
// must mean the same in every listing of the directory, whatever was added
// or removed since the reader started: it is a cookie derived from the
// name of the last entry returned (as ext4's hashed directories do), and a
// listing is served in cookie order. seekdir to any position telldir gave
// works for as long as the directory exists, and an entry that neither
// went nor came in the meantime is returned exactly once.
//
// The merged listing of a directory is built when the first request for
// it comes, kept (packed, see index.go) in a cache of bounded size shared
// by the mount's directories, and rebuilt when the directory changed
// through the view (node.listGen) or the cache dropped it. The kernel
// keeps the listings it has read itself (a directory it never opened is
// cached as if opened with FOPEN_CACHE_DIR), so requests come only for
// directories not read since they changed, or whose kernel copy was
// reclaimed with the rest of the page cache: then the union's copy
// answers without reading the layers again.

// dirListing returns d's merged listing in cookie order.
func (d *node) dirListing() (*listing, syscall.Errno) {
	u := d.u
	d.mu.Lock()
	x := d.more()
	gen, slot := x.listGen, x.listing
	if slot == nil {
		slot = &cachedListing{}
		x.listing = slot
	}
	d.mu.Unlock()
	if l := slot.get(); l != nil && l.gen == gen {
		return l, 0
	}
	l, errno := u.list(d)
	if errno != 0 {
		return nil, errno
	}
	l.gen = gen
	l.sortByCookie()
	u.listings.put(slot, l, l.size())
	return l, 0
}

// dirChanged records that directory d's listing changed through the view.
func (d *node) dirChanged() {
	d.mu.Lock()
	d.more().listGen++
	d.mu.Unlock()
}

// cookie is the readdir position after the entry called name: FNV-1a of
// the name, past the positions of "." (1) and ".." (2), within the 63
// bits telldir returns.
func cookie(name string) uint64 {
	switch name {
	case ".":
		return 1
	case "..":
		return 2
	}
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	h >>= 1
	if h < 3 {
		h += 3
	}
	return h
}

// sortByCookie orders the listing by cookie. Two names with one cookie
// (one chance in 2^63 per pair) get consecutive ones, so none is lost; a
// reader resuming between them may then see one twice.
func (l *listing) sortByCookie() {
	idx := make([]int, l.len())
	for i := range idx {
		idx[i] = i
	}
	l.cookies = make([]uint64, l.len())
	for i := range idx {
		l.cookies[i] = cookie(l.name(i))
	}
	sort.Slice(idx, func(a, b int) bool { return l.cookies[idx[a]] < l.cookies[idx[b]] })
	s := &listing{names: make([]byte, 0, len(l.names)), cookies: make([]uint64, 0, len(idx)), gen: l.gen}
	s.ends = make([]uint32, 0, len(idx))
	s.inos = make([]uint64, 0, len(idx))
	s.types = make([]uint8, 0, len(idx))
	for _, i := range idx {
		s.names = append(s.names, l.name(i)...)
		s.ends = append(s.ends, uint32(len(s.names)))
		s.inos = append(s.inos, l.inos[i])
		s.types = append(s.types, l.types[i])
		s.cookies = append(s.cookies, l.cookies[i])
	}
	spreadCookies(s.cookies)
	*l = *s
}

// spreadCookies makes sorted cookies distinct: a cookie equal to the one
// before it moves up by one.
func spreadCookies(cs []uint64) {
	for i := 1; i < len(cs); i++ {
		if cs[i] <= cs[i-1] {
			cs[i] = cs[i-1] + 1
		}
	}
}

// after returns the index of the first entry past position off.
func (l *listing) after(off uint64) int {
	i, _ := slices.BinarySearch(l.cookies, off+1)
	return i
}

// plusMaxNames: READDIRPLUS answers with attributes (saving a LOOKUP per
// name for ls -l, find, du, tar) in directories of at most this many
// names. A bigger one is usually listed, not statted (a 100k-name
// directory by ls), and giving the kernel a node for every name would cost
// more than the lookups it saves.
const plusMaxNames = 8192

// readdir answers READDIR (plus: READDIRPLUS) of directory d from
// position off.
func (d *node) readdir(off uint64, out *fuse.DirEntryList, plus bool) syscall.Errno {
	l, errno := d.dirListing()
	if errno != 0 {
		return errno
	}
	attrs := plus && l.len() <= d.u.plusMax+2
	i := l.after(off)
	if i == l.len() {
		// The end. The listing stays in the cache all the same: the
		// kernel keeps what it read only in page cache, which memory
		// pressure (or a host's proactive reclaim) takes back within
		// minutes, and reading a directory again from every layer
		// costs far more than answering from the listing.
		return 0
	}
	for ; i < l.len(); i++ {
		e := l.entry(i)
		if !plus {
			if !out.AddDirEntry(e) {
				return 0
			}
			continue
		}
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			return 0
		}
		if !attrs || e.Name == "." || e.Name == ".." || d.u.tree.known(e.Ino) {
			// No node ID: the kernel makes no entry for it, as
			// for a plain READDIR. An object the kernel holds a
			// node for already (it read the directory before and
			// dropped its copy of the listing, not its entries)
			// needs no lookup again.
			continue
		}
		n, errno := d.lookup(e.Name, eo)
		if errno != 0 {
			*eo = fuse.EntryOut{}
			continue
		}
		if n.fileType() != e.Mode&unix.S_IFMT {
			out.FixMode(n.fileType())
		}
	}
	return 0
}

// fsyncdir syncs directory d's upper copy.
func (d *node) fsyncdir() syscall.Errno {
	if d.u.opts.Volatile {
		return 0
	}
	l, errno := d.where()
	if errno != 0 || !l.upper {
		return 0
	}
	fd, err := unix.Openat(l.fd, l.rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return toErrno(err)
	}
	defer unix.Close(fd)
	return toErrno(unix.Fsync(fd))
}
