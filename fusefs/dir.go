package fusefs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
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
	fd, err := unix.Openat(l.fd, rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []rawEntry
	buf := make([]byte, 32*1024)
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
	parentIno := n.ino()
	if _, p := n.Parent(); p != nil {
		parentIno = p.StableAttr().Ino
	}
	out.add(".", unix.S_IFDIR, n.ino())
	out.add("..", unix.S_IFDIR, parentIno)

	type src struct {
		l   *layer
		rel string
		xwh bool
		// overrides: the dir has an override_stat record, as rootless
		// stores give every entry; its empty files may stand for
		// devices, so d_type must come from their records.
		overrides bool
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
	for i, s := range srcs {
		if _, err := getXattr(s.l.path(s.rel), statoverride.Xattr); err == nil {
			s.overrides = true
		}
		ents, err := readLayerDir(s.l, s.rel)
		if err != nil {
			if i == 0 {
				return nil, fs.ToErrno(err)
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
			if e.typ == unix.DT_CHR || e.typ == unix.DT_UNKNOWN || (e.typ == unix.DT_REG && (s.xwh || s.overrides)) {
				var st unix.Stat_t
				if err := s.l.lstat(rel, &st); err != nil {
					continue
				}
				mode = st.Mode & unix.S_IFMT
				if isWhiteout(s.l, rel, &st, s.xwh) {
					seen[e.name] = struct{}{}
					continue
				}
				if s.overrides {
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

// dirHandle serves a snapshot of the merged listing, so offsets (index+1)
// stay valid across telldir/seekdir whatever changes. The snapshot is
// taken at the first read, not at opendir: a lower-only directory the
// kernel has cached is opened without being read. A seek to 0 (rewinddir)
// takes a new snapshot, as POSIX asks.
type dirHandle struct {
	n    *node
	mu   sync.Mutex
	ents *listing // nil until the first read
	pos  int
	fd   int
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
	_ fs.FileReleasedirer = (*dirHandle)(nil)
	_ fs.FileFsyncdirer   = (*dirHandle)(nil)
)

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	n.mu.Lock()
	upper := n.hasUpper
	n.mu.Unlock()
	var fl uint32
	if !upper {
		// Nothing can change a lower-only directory but this mount,
		// and every change invalidates it.
		fl = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	}
	dh := &dirHandle{n: n, fd: -1}
	// Kept so fstat works after the directory is renamed over or removed.
	if l, errno := n.where(); errno == 0 {
		if fd, err := unix.Openat(l.fd, l.rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			dh.fd = fd
		} else if upper {
			return nil, 0, fs.ToErrno(err)
		}
	}
	return dh, fl, 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ents == nil {
		ents, errno := d.n.u.list(d.n)
		if errno != 0 {
			return nil, errno
		}
		d.ents = ents
	}
	if d.pos >= d.ents.len() {
		return nil, 0
	}
	e := d.ents.entry(d.pos)
	d.pos++
	e.Off = uint64(d.pos)
	return &e, 0
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off == 0 {
		d.ents = nil
	}
	d.pos = int(off)
	return 0
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	if d.n.u.opts.Volatile {
		return 0
	}
	l, errno := d.n.where()
	if errno != 0 || !l.upper {
		return 0
	}
	fd, err := unix.Openat(l.fd, l.rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fs.ToErrno(err)
	}
	defer unix.Close(fd)
	return fs.ToErrno(unix.Fsync(fd))
}
