package changes

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// WriteOptions configure WriteLayer.
type WriteOptions struct {
	// NoSparse writes files with holes as ordinary entries, their holes
	// as zeros. By default they are GNU PAX 1.0 sparse entries.
	NoSparse bool
	// Logger receives warnings about objects a tar cannot hold (sockets
	// are left out); nil discards them.
	Logger *slog.Logger
	// UpperOwnerTable and LowerOwnerTables (same order as the lowers; ""
	// or a missing file: none) are the special-owners tables (package
	// ownertable) that keep the owners and modes of a rootless store's
	// symlinks and FIFOs: a record there wins over the object's owner
	// and mode on disk, as an override_stat xattr does for other
	// objects (owners.go).
	UpperOwnerTable  string
	LowerOwnerTables []string
	// IndexedNames are names the view shows that the upper itself lacks:
	// an absolute view path ("/dir/name") mapped to a file holding the
	// object shown there, a link of an upper file. Kernel overlayfs with
	// index=on serves the other names of a lower hardlink group it copied
	// up from its index (Work/index/<file handle>) and links only the
	// name the change came through into the upper; a commit of a view the
	// kernel has mounted (so nothing may be linked into the upper) passes
	// those names here. Each is written as a hardlink of the object's
	// first name in the tar (the lowers' directories leading to it as
	// well); a name the upper holds itself, or hides, is not.
	IndexedNames map[string]string
}

// WriteLayer writes the upper as an OCI layer tar to w (uncompressed; the
// caller hashes and registers it). The same upper and lowers always give
// the same bytes: entries come in name order, each directory before its
// contents; within a directory its opaque marker comes first, then the
// whiteouts, then the objects. Headers are PAX (nanosecond mtimes, long
// names, big ids, xattrs as SCHILY.xattr.*); no atime, ctime, user or
// group names are written, so reading the upper does not change the tar.
//
// Objects carry their owner, mode (setuid, setgid, sticky kept), mtime and
// xattrs except the private overlay/layerfs ones; a
// user.containers.override_stat record wins over the on-disk owner and
// mode, and turns a placeholder file into the device, FIFO or socket it
// records. Several names of one inode are written as the first name plus
// hardlink entries to it. Sockets are left out (tar has no type for them).
//
// The upper must not change while it is written: a file whose size or
// inode changed between the walk and the read is an error, never a torn
// entry.
func WriteLayer(ctx context.Context, w io.Writer, upper string, lowers []string, opts WriteOptions) error {
	lw := &layerWriter{
		w:     w,
		tw:    tar.NewWriter(w),
		opts:  opts,
		log:   opts.Logger,
		buf:   make([]byte, 1<<20),
		links: map[inode]string{},
	}
	if lw.log == nil {
		lw.log = slog.New(slog.DiscardHandler)
	}
	owners, err := newSpecialOwners(upper, lowers, opts) // owners.go
	if err != nil {
		return fmt.Errorf("write layer of %s: %w", upper, err)
	}
	lw.owners = owners
	if err := walkWith(ctx, upper, lowers, newExtraNames(opts.IndexedNames), lw.event); err != nil {
		return fmt.Errorf("write layer of %s: %w", upper, err)
	}
	if err := lw.tw.Close(); err != nil {
		return fmt.Errorf("write layer of %s: %w", upper, err)
	}
	return nil
}

type inode struct{ dev, ino uint64 }

type layerWriter struct {
	w     io.Writer
	tw    *tar.Writer
	opts  WriteOptions
	log   *slog.Logger
	buf   []byte
	links map[inode]string
	// owners: nil without tables.
	owners *specialOwners
}

// epoch stamps the marker entries (whiteouts, opaque markers), which have
// no object to take a time from: a constant keeps the tar reproducible.
func epoch() time.Time { return time.Unix(0, 0) }

func tarName(p string) string { return strings.TrimPrefix(p, "/") }

func (lw *layerWriter) event(ev event) error {
	switch ev.kind {
	case evWhiteout:
		dir, name := splitPath(ev.path)
		return lw.marker(joinTar(dir, whiteout.Prefix+name), ev.path)
	case evOpaque:
		return lw.marker(joinTar(tarName(ev.path), whiteout.OpaqueMarker), ev.path)
	case evEntry:
		return lw.entry(ev)
	}
	return nil
}

func splitPath(p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	return tarName(p[:i]), p[i+1:]
}

func joinTar(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (lw *layerWriter) marker(name, p string) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, ModTime: epoch(), Format: tar.FormatPAX}
	if err := lw.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write whiteout for %s: %w", p, err)
	}
	return nil
}

func (lw *layerWriter) entry(ev event) error {
	st := ev.st
	hdr := &tar.Header{
		Name:    tarName(ev.path),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		Format:  tar.FormatPAX,
	}
	full := procPath(ev.dirfd, ev.name)
	ifmt := st.Mode & unix.S_IFMT
	perm := st.Mode & 07777
	rdev := st.Rdev
	if ifmt == unix.S_IFREG || ifmt == unix.S_IFDIR {
		// Linux keeps user.* xattrs on regular files and directories only.
		ov, ok, err := statoverride.Get(full)
		if err != nil {
			return fmt.Errorf("%s: %w", ev.path, err)
		}
		if ok {
			hdr.Uid, hdr.Gid, perm = int(ov.UID), int(ov.GID), ov.Mode&07777
			if t := ov.Mode & unix.S_IFMT; ov.HasType() && t != ifmt && ifmt == unix.S_IFREG && st.Size == 0 {
				switch t {
				case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
					// A placeholder a rootless import made for a device.
					ifmt, rdev = t, ov.Rdev
				}
			}
		}
	} else if rec, ok, err := lw.owners.record(ev.dirfd, ev.name, ifmt); err != nil {
		return fmt.Errorf("%s: %w", ev.path, err)
	} else if ok {
		hdr.Uid, hdr.Gid = int(rec.UID), int(rec.GID)
		if ifmt != unix.S_IFLNK {
			perm = rec.Mode & 07777 // a symlink's mode is 0777 on Linux
		}
	}
	hdr.Mode = int64(perm)

	if ifmt != unix.S_IFDIR && (st.Nlink > 1 || ev.indexed) {
		key := inode{st.Dev, st.Ino}
		if first, ok := lw.links[key]; ok {
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
			if err := lw.tw.WriteHeader(hdr); err != nil {
				return fmt.Errorf("write %s: %w", ev.path, err)
			}
			return nil
		}
		if ifmt != unix.S_IFSOCK {
			lw.links[key] = hdr.Name
		}
	}

	xattrs, err := readXattrs(full)
	if err != nil {
		return fmt.Errorf("%s: %w", ev.path, err)
	}
	for k, v := range xattrs {
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = v
	}

	switch ifmt {
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case unix.S_IFLNK:
		hdr.Typeflag = tar.TypeSymlink
		target, err := readlinkAt(ev.dirfd, ev.name)
		if err != nil {
			return fmt.Errorf("readlink %s: %w", ev.path, err)
		}
		hdr.Linkname = target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if ifmt == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(rdev)), int64(unix.Minor(rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	case unix.S_IFSOCK:
		lw.log.Warn("a tar cannot hold a socket: left out of the layer", "path", ev.path)
		return nil
	case unix.S_IFREG:
		hdr.Typeflag = tar.TypeReg
		return lw.regular(ev, hdr)
	default:
		return fmt.Errorf("%s: unknown file type %#o", ev.path, ifmt)
	}
	if err := lw.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write %s: %w", ev.path, err)
	}
	return nil
}

// regular writes a regular file's header and content, as a sparse entry
// when it has holes.
func (lw *layerWriter) regular(ev event, hdr *tar.Header) error {
	dirfd, name := ev.dirfd, ev.name
	if ev.metacopy != nil {
		// Only the metadata was copied up; the data is in the lower.
		dirfd, name = ev.metacopy.topFd, ev.metacopy.topName
	}
	fd, err := openFile(dirfd, name)
	if err != nil {
		return fmt.Errorf("open %s: %w", ev.path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", ev.path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s: replaced by another file type while being read", ev.path)
	}
	size := ev.st.Size
	if ev.metacopy == nil && (st.Ino != ev.st.Ino || st.Size != size) {
		return fmt.Errorf("%s: changed while being read (the upper must not change during a commit)", ev.path)
	}
	hdr.Size = size
	if !lw.opts.NoSparse && size > 0 && st.Blocks*512 < size {
		frags, err := dataFragments(fd, size)
		if err != nil {
			return fmt.Errorf("map holes of %s: %w", ev.path, err)
		}
		if frags != nil {
			return lw.sparse(fd, hdr, frags)
		}
	}
	if err := lw.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write %s: %w", ev.path, err)
	}
	n, err := io.CopyBuffer(lw.tw, io.LimitReader(fdReader(fd), size), lw.buf)
	if err != nil {
		return fmt.Errorf("copy %s: %w", ev.path, err)
	}
	if n != size {
		return fmt.Errorf("%s: shrank from %d to %d bytes while being read", ev.path, size, n)
	}
	return nil
}

// openFile opens a regular file for reading without following a symlink
// and, where allowed, without touching its atime.
func openFile(dirfd int, name string) (int, error) {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	return fd, err
}

type fdReader int

func (f fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(f), p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, len(buf)*4)
	}
}

// readXattrs returns the xattrs of p (not following a symlink) that
// belong in a layer: all but the private overlay/layerfs ones. A
// capability a rootless store kept (statoverride.CapabilityXattr) goes in
// as the security.capability it stands for, unless p has a real one.
func readXattrs(p string) (map[string]string, error) {
	names, err := listXattrs(p)
	if err != nil {
		return nil, err
	}
	keptCapability := slices.Contains(names, statoverride.CapabilityXattr) && !slices.Contains(names, statoverride.SecurityCapability)
	if keptCapability {
		names = append(slices.Clone(names), statoverride.SecurityCapability)
	}
	var out map[string]string
	for _, name := range names {
		if whiteout.IsPrivateXattr(name) {
			continue
		}
		stored := name
		if keptCapability && name == statoverride.SecurityCapability {
			stored = statoverride.CapabilityXattr
		}
		v, err := getXattr(p, stored)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read xattr %s: %w", name, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = string(v)
	}
	return out, nil
}

func listXattrs(p string) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list xattrs: %w", err)
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

func getXattr(p, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
