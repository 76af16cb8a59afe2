// Package apply turns the entries of a layer tar into a layer directory in
// the overlay-native format the store keeps: OCI ".wh.NAME" whiteouts become
// 0/0 character devices, ".wh..wh..opq" markers and overlay opaque xattrs
// become the opaque xattr of the namespace the caller asks for.
//
// Safety: every name is resolved beneath the layer directory with openat2
// (RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS) and created with
// the *at system calls on the parent's descriptor, so no entry can reach
// outside the directory, not even through a symlink an earlier entry made.
// Entries whose path runs through a symlink are refused rather than
// followed: a layer directory is applied on its own, never on top of its
// parent. Nothing is ever removed or renamed while applying, so a directory
// descriptor, once resolved, keeps naming the directory it was opened for.
//
// Hardlinks must name a non-directory entry that this same tar applied
// earlier. They are made with linkat without AT_SYMLINK_FOLLOW, so a
// hardlink to a symlink entry links the symlink itself (as tar -x and
// ostree-made images expect), never what it points to. A hardlink entry's
// own owner, mode, times and xattrs are ignored: the inode keeps those of
// the entry it links to, as with tar -x.
//
// Times: mtimes and atimes (the PAX atime, else the mtime) are set with
// nanoseconds, symlinks included; directories get theirs in a final pass,
// deepest first, after everything inside them exists. Directories the tar
// never named but that its paths need are created 0755, owned by the
// caller, and keep the time of their creation.
//
// Whiteouts: ".wh.NAME" becomes a 0/0 character device NAME unless the tar
// also holds NAME itself (before or after): OCI whiteouts only hide lower
// layers, so the layer's own entry wins. ".wh..wh..opq" and a tar's own
// trusted/user.overlay.opaque="y" on a directory set the opaque xattr of
// Options.OpaqueNamespace. Other overlay and layerfs private xattrs in a
// tar are skipped with a warning.
//
// Rootless (Options.Rootless): nothing is chowned. The tar's owner, group,
// full mode and type go into the user.containers.override_stat xattr of
// every regular file and directory. Linux refuses user.* xattrs on
// anything else, so the records of symlinks and FIFOs (hardlinks to them
// included) go into Result.SpecialOwners instead, which the caller keeps
// beside the layer (package ownertable). A 0/0 character device entry is
// a whiteout on disk: its owner is lost, with a warning when that loses
// something. Whiteouts have no metadata of their own and get no record. Implicitly created parent
// directories get "0:0:0755:dir", as a privileged import would show them.
// On disk, files keep mode|0600 and directories mode|0700, without setuid,
// setgid or sticky (those live only in the xattr); character and block
// devices other than 0/0 become empty 0600 regular files whose xattr
// records the device. A security.capability the kernel refuses (it needs
// CAP_SETFCAP) is kept in statoverride.CapabilityXattr (the containers
// convention fuse-overlayfs reads too); other security.* and trusted.*
// xattrs the kernel refuses (EPERM) are skipped with a warning.
//
// The caller syncs: no file is fsynced here.
package apply

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/ownertable"
	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// Source is a tar stream consumed entry by entry. *tar.Reader satisfies it.
type Source interface {
	Next() (*tar.Header, error)
	Read(p []byte) (int, error)
}

// ChunkSource is a Source that can also hand out an entry's content in
// buffers of its own, saving the copy into the applier's buffer.
// ReadChunk returns the next bytes of the current entry's content (io.EOF
// at its end), valid and unchanged until the next call of Next, Read or
// ReadChunk. *layertar.Splitter satisfies it.
type ChunkSource interface {
	Source
	ReadChunk() ([]byte, error)
}

// Options configure Apply.
type Options struct {
	// OpaqueNamespace: which opaque xattr to write (whiteout.Trusted as
	// root, whiteout.User rootless).
	OpaqueNamespace whiteout.Namespace
	// Rootless: the caller cannot chown or mknod devices; ownership and
	// types are kept in the override_stat xattr instead (see package doc).
	Rootless bool
	// ChownMapped (with Rootless), for root of a user namespace: also
	// give each entry the tar's owner and group on disk where the
	// namespace maps them (a full subordinate range maps 0-65535), so
	// kernel overlayfs in that namespace shows them too. The record is
	// written all the same; disk modes stay as Rootless makes them.
	ChownMapped bool
	// Logger receives warnings about skipped xattrs; nil discards them.
	Logger *slog.Logger
	// StartWriteback sends the data of large files to the disk while the
	// rest is applied (sync_file_range, on a goroutine of its own), for
	// a caller that syncs the file system at the end: its sync then has
	// less left to wait for. It makes nothing durable by itself.
	StartWriteback bool
}

// Result sums up what Apply wrote.
type Result struct {
	// Entries counts the tar entries applied: every entry the stream
	// yields except PAX global headers, whiteouts included.
	Entries int
	// Size is the sum of the apparent sizes of regular files.
	Size int64
	// SpecialOwners (Options.Rootless) holds the override_stat record of
	// every symlink and FIFO, by cleaned name: they cannot carry the
	// xattr. Nil when the layer has none.
	SpecialOwners ownertable.Table
}

// ErrUnsafeName is wrapped by the errors for entries whose name (or
// hardlink target) is absolute, climbs with "..", holds a NUL byte, is
// empty, or resolves through a symlink.
var ErrUnsafeName = errors.New("unsafe name")

// copyBufSize is the one buffer every file's content goes through. A
// multiple of holeBlock, so sparse detection stays aligned to file offsets.
const copyBufSize = 1 << 20

// holeBlock is the granularity of holes written for sparse entries.
const holeBlock = 4096

// Apply writes every entry of src beneath dir (an existing, empty
// directory) and nothing anywhere else. Each entry's content is read to
// io.EOF before the next is asked for. On error the directory holds a
// partial layer that the caller must remove.
func Apply(ctx context.Context, src Source, dir string, opts Options) (Result, error) {
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Result{}, fmt.Errorf("apply: open layer dir %s: %w", dir, err)
	}
	chunks, _ := src.(ChunkSource)
	a := &applier{
		ctx:      ctx,
		src:      src,
		chunks:   chunks,
		opts:     opts,
		log:      opts.Logger,
		root:     root,
		buf:      make([]byte, copyBufSize),
		zero:     make([]byte, holeBlock),
		seen:     make(map[string]kind),
		dirTimes: make(map[string]*[2]unix.Timespec),
		fds:      make(map[string]int),
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if opts.StartWriteback {
		a.wb = newWriteback()
	}
	defer a.closeAll()
	a.initCreation()

	last := ""
	for {
		if err := ctx.Err(); err != nil {
			return a.res, fmt.Errorf("apply: %w", err)
		}
		hdr, err := src.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if last == "" {
				return a.res, fmt.Errorf("apply: read first entry: %w", err)
			}
			return a.res, fmt.Errorf("apply: read entry after %s: %w", last, err)
		}
		if err := a.entry(hdr); err != nil {
			return a.res, err
		}
		last = hdr.Name
	}
	if err := a.finish(); err != nil {
		return a.res, err
	}
	if a.wb != nil {
		wb := a.wb
		a.wb = nil
		if err := wb.stop(); err != nil {
			return a.res, err
		}
	}
	return a.res, nil
}

// kind is what the tar put at a cleaned name, for duplicate and hardlink
// checks and for the whiteout rule.
type kind uint8

const (
	kindDir         kind = iota + 1 // a directory entry
	kindImplicitDir                 // a parent the tar never named
	kindNonDir                      // anything else that exists on disk under its name
	kindWhiteout                    // a .wh. entry: nothing exists under this name
)

func (k kind) isDir() bool { return k == kindDir || k == kindImplicitDir }

type pendingWhiteout struct {
	entry  string // the tar's name, for errors
	parent string // cleaned parent directory
	target string // the name it hides
}

type applier struct {
	ctx    context.Context
	src    Source
	chunks ChunkSource // src, when it can hand out chunks
	opts   Options
	log    *slog.Logger
	root   int
	buf    []byte
	zero   []byte
	res    Result

	seen      map[string]kind
	dirTimes  map[string]*[2]unix.Timespec // directories the tar named
	whiteouts []pendingWhiteout
	fds       map[string]int // cached directory descriptors by cleaned path

	create creation   // what openat makes of a new file
	wb     *writeback // with Options.StartWriteback
	// started is how much of the file being written was handed to wb.
	started int64
}

func (a *applier) entry(hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		_, err := a.drain(hdr.Name)
		return err
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return fmt.Errorf("apply %q: %w", hdr.Name, err)
	}
	a.res.Entries++
	parent, base := splitName(name)
	if err := checkID(hdr); err != nil {
		return fmt.Errorf("apply %s: %w", hdr.Name, err)
	}

	if name == "" {
		if !isDirType(hdr) {
			return fmt.Errorf("apply %q: the layer root must be a directory, not type %q", hdr.Name, hdr.Typeflag)
		}
		if _, err := a.drain(hdr.Name); err != nil {
			return err
		}
		if err := a.dirMeta("", node{pfd: -1, fd: a.root}, hdr); err != nil {
			return err
		}
		a.noteDir("", hdr)
		return nil
	}

	switch e := whiteout.ClassifyName(base); e.Kind {
	case whiteout.Opaque:
		return a.opaqueMarker(hdr, name, parent)
	case whiteout.Whiteout:
		return a.whiteoutEntry(hdr, name, parent, e.Target)
	case whiteout.Meta:
		return fmt.Errorf("apply %s: reserved whiteout name %q", hdr.Name, base)
	}

	if prev, ok := a.seen[name]; ok && !(prev.isDir() && isDirType(hdr)) {
		return fmt.Errorf("apply %s: duplicate entry %s", hdr.Name, name)
	}

	if isDirType(hdr) {
		return a.dir(hdr, name, parent, base)
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont, tar.TypeGNUSparse:
		return a.file(hdr, name, parent, base)
	case tar.TypeSymlink:
		return a.symlink(hdr, name, parent, base)
	case tar.TypeLink:
		return a.hardlink(hdr, name, parent, base)
	case tar.TypeFifo:
		return a.special(hdr, name, parent, base, unix.S_IFIFO)
	case tar.TypeChar:
		return a.special(hdr, name, parent, base, unix.S_IFCHR)
	case tar.TypeBlock:
		return a.special(hdr, name, parent, base, unix.S_IFBLK)
	}
	return fmt.Errorf("apply %s: unsupported entry type %q", hdr.Name, hdr.Typeflag)
}

// typeGNUDumpdir is GNU tar's incremental-dump directory: a directory whose
// data (a listing) has no meaning for a layer.
const typeGNUDumpdir = 'D'

func isDirType(hdr *tar.Header) bool {
	switch hdr.Typeflag {
	case tar.TypeDir, typeGNUDumpdir:
		return true
	case tar.TypeRegA:
		// Pre-POSIX archives mark directories with a trailing slash only.
		return strings.HasSuffix(hdr.Name, "/")
	}
	return false
}

func checkID(hdr *tar.Header) error {
	// -1 would mean "leave unchanged" to chown; base-256 fields can encode it.
	if hdr.Uid < 0 || hdr.Uid >= 1<<32-1 || hdr.Gid < 0 || hdr.Gid >= 1<<32-1 {
		return fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	return nil
}

func (a *applier) file(hdr *tar.Header, name, parent, base string) error {
	pfd, err := a.dirFd(hdr.Name, parent, true)
	if err != nil {
		return err
	}
	mode, permSet, ownerSet := a.fileCreation(hdr, parent)
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return fmt.Errorf("apply %s: create: %w", hdr.Name, err)
	}
	a.seen[name] = kindNonDir
	a.started = 0
	n, err := a.writeContent(hdr, fd, isSparse(hdr))
	a.res.Size += n
	if err == nil {
		err = a.meta(hdr, node{pfd: pfd, base: base, fd: fd, permSet: permSet, ownerSet: ownerSet}, unix.S_IFREG, 0)
	}
	if a.wb != nil && (a.started > 0 || err == nil && n >= writebackMin) && a.wb.startAndClose(fd, a.started, hdr.Name, a.started > 0) {
		return err
	}
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = fmt.Errorf("apply %s: close: %w", hdr.Name, cerr)
	}
	return err
}

func (a *applier) dir(hdr *tar.Header, name, parent, base string) error {
	if _, err := a.drain(hdr.Name); err != nil {
		return err
	}
	pfd, err := a.dirFd(hdr.Name, parent, true)
	if err != nil {
		return err
	}
	if _, again := a.seen[name]; !again {
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
			return fmt.Errorf("apply %s: mkdir: %w", hdr.Name, err)
		}
	}
	a.seen[name] = kindDir
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("apply %s: open directory: %w", hdr.Name, err)
	}
	err = a.dirMeta(name, node{pfd: pfd, base: base, fd: fd}, hdr)
	unix.Close(fd)
	if err == nil {
		a.noteDir(name, hdr)
	}
	return err
}

// dirMeta applies a directory entry's metadata now and keeps its times for
// finish, once everything inside it exists.
func (a *applier) dirMeta(name string, n node, hdr *tar.Header) error {
	if err := a.meta(hdr, n, unix.S_IFDIR, 0); err != nil {
		return err
	}
	ts := entryTimes(hdr)
	if p := a.dirTimes[name]; p != nil {
		*p = ts
	} else {
		a.dirTimes[name] = &ts
	}
	return nil
}

func (a *applier) symlink(hdr *tar.Header, name, parent, base string) error {
	if _, err := a.drain(hdr.Name); err != nil {
		return err
	}
	if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
		return fmt.Errorf("apply %s: invalid symlink target %q", hdr.Name, hdr.Linkname)
	}
	pfd, err := a.dirFd(hdr.Name, parent, true)
	if err != nil {
		return err
	}
	// The target is data: it is never resolved here.
	if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
		return fmt.Errorf("apply %s: symlink: %w", hdr.Name, err)
	}
	a.seen[name] = kindNonDir
	if err := a.meta(hdr, node{pfd: pfd, base: base, fd: -1}, unix.S_IFLNK, 0); err != nil {
		return err
	}
	a.keepSpecialOwner(name, hdr, unix.S_IFLNK)
	return nil
}

// keepSpecialOwner records, rootless, the owner and mode of an object that
// cannot carry the override_stat xattr. Nothing an apply does removes or
// replaces an entry (duplicates are refused, whiteouts hide only lower
// layers), so a record, once made, stays right.
func (a *applier) keepSpecialOwner(name string, hdr *tar.Header, ifmt uint32) {
	if !a.opts.Rootless || !ownertable.NeedsTable(ifmt) {
		return
	}
	if a.res.SpecialOwners == nil {
		a.res.SpecialOwners = ownertable.Table{}
	}
	a.res.SpecialOwners[name] = statoverride.Stat{UID: uint32(hdr.Uid), GID: uint32(hdr.Gid), Mode: ifmt | uint32(hdr.Mode)&0o7777}
}

func (a *applier) hardlink(hdr *tar.Header, name, parent, base string) error {
	if _, err := a.drain(hdr.Name); err != nil {
		return err
	}
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("apply %s: hardlink target %q: %w", hdr.Name, hdr.Linkname, err)
	}
	if a.seen[target] != kindNonDir {
		return fmt.Errorf("apply %s: hardlink target %q is not a non-directory entry applied earlier from this tar: %w",
			hdr.Name, hdr.Linkname, ErrUnsafeName)
	}
	tparent, tbase := splitName(target)
	tfd, err := a.dirFd(hdr.Name, tparent, false)
	if err != nil {
		return err
	}
	// dirFd may evict tfd from its cache when resolving the second
	// directory, so hold a descriptor of our own for the target's parent.
	tfd, err = unix.Dup(tfd)
	if err != nil {
		return fmt.Errorf("apply %s: %w", hdr.Name, err)
	}
	defer unix.Close(tfd)
	pfd, err := a.dirFd(hdr.Name, parent, true)
	if err != nil {
		return err
	}
	// No AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("apply %s: link to %s: %w", hdr.Name, hdr.Linkname, err)
	}
	a.seen[name] = kindNonDir
	if rec, ok := a.res.SpecialOwners[target]; ok {
		// Another name of the same symlink or FIFO: the table is by name.
		a.res.SpecialOwners[name] = rec
	}
	return nil
}

// special makes FIFOs and devices; rootless, devices other than 0/0 become
// placeholder files.
func (a *applier) special(hdr *tar.Header, name, parent, base string, ifmt uint32) error {
	if _, err := a.drain(hdr.Name); err != nil {
		return err
	}
	var rdev uint64
	if ifmt != unix.S_IFIFO {
		// mknod takes a 32-bit dev_t: 12 bits of major, 20 of minor.
		// Larger numbers would be silently truncated into another device.
		if hdr.Devmajor < 0 || hdr.Devmajor > 0xfff || hdr.Devminor < 0 || hdr.Devminor > 0xf_ffff {
			return fmt.Errorf("apply %s: device number %d:%d out of range", hdr.Name, hdr.Devmajor, hdr.Devminor)
		}
		rdev = unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	}
	pfd, err := a.dirFd(hdr.Name, parent, true)
	if err != nil {
		return err
	}
	n := node{pfd: pfd, base: base, fd: -1}
	if a.opts.Rootless && ifmt != unix.S_IFIFO && !whiteout.IsWhiteoutDevice(ifmt, rdev) {
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("apply %s: create device placeholder: %w", hdr.Name, err)
		}
		a.seen[name] = kindNonDir
		n.fd = fd
		n.placeholder = true
		err = a.meta(hdr, n, ifmt, rdev)
		if cerr := unix.Close(fd); err == nil && cerr != nil {
			err = fmt.Errorf("apply %s: close: %w", hdr.Name, cerr)
		}
		return err
	}
	if err := unix.Mknodat(pfd, base, ifmt|0o600, int(rdev)); err != nil {
		return fmt.Errorf("apply %s: mknod: %w", hdr.Name, err)
	}
	a.seen[name] = kindNonDir
	if err := a.meta(hdr, n, ifmt, rdev); err != nil {
		return err
	}
	a.keepSpecialOwner(name, hdr, ifmt)
	return nil
}

// whiteoutEntry records a ".wh.NAME" entry; the device is made in finish,
// once it is known whether the tar also holds NAME (which then wins).
func (a *applier) whiteoutEntry(hdr *tar.Header, name, parent, target string) error {
	if err := a.noData(hdr); err != nil {
		return err
	}
	if target == "." || target == ".." {
		return fmt.Errorf("apply %s: whiteout of %q: %w", hdr.Name, target, ErrUnsafeName)
	}
	if _, dup := a.seen[name]; dup {
		return fmt.Errorf("apply %s: duplicate entry %s", hdr.Name, name)
	}
	if _, err := a.dirFd(hdr.Name, parent, true); err != nil {
		return err
	}
	a.seen[name] = kindWhiteout
	a.whiteouts = append(a.whiteouts, pendingWhiteout{entry: hdr.Name, parent: parent, target: target})
	return nil
}

func (a *applier) opaqueMarker(hdr *tar.Header, name, parent string) error {
	if err := a.noData(hdr); err != nil {
		return err
	}
	if _, dup := a.seen[name]; dup {
		return fmt.Errorf("apply %s: duplicate entry %s", hdr.Name, name)
	}
	pfd, err := a.dirFd(hdr.Name, parent, true)
	if err != nil {
		return err
	}
	a.seen[name] = kindWhiteout
	n := node{pfd: -1, fd: pfd}
	if err := n.setxattr(a.opts.OpaqueNamespace.OpaqueXattr(), whiteout.OpaqueValue); err != nil {
		return fmt.Errorf("apply %s: mark %q opaque: %w", hdr.Name, parent, err)
	}
	return nil
}

// noData drains a whiteout entry and refuses it if it carried content.
func (a *applier) noData(hdr *tar.Header) error {
	n, err := a.drain(hdr.Name)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("apply %s: whiteout entry carries %d bytes of data", hdr.Name, n)
	}
	return nil
}

// finish makes the surviving whiteouts, then sets directory times deepest
// first, after every change inside them.
func (a *applier) finish() error {
	for _, w := range a.whiteouts {
		if _, real := a.seen[joinName(w.parent, w.target)]; real {
			a.log.Debug("whiteout dropped: the layer holds the name itself", "entry", w.entry)
			continue
		}
		pfd, err := a.dirFd(w.entry, w.parent, false)
		if err != nil {
			return err
		}
		if err := whiteout.Create(pfd, w.target); err != nil {
			return fmt.Errorf("apply %s: %w", w.entry, err)
		}
	}

	dirs := make([]string, 0, len(a.dirTimes))
	for d := range a.dirTimes {
		dirs = append(dirs, d)
	}
	slices.SortFunc(dirs, func(x, y string) int {
		return strings.Count(y, "/") + boolInt(y != "") - strings.Count(x, "/") - boolInt(x != "")
	})
	a.closeCache()
	for _, d := range dirs {
		if err := a.ctx.Err(); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		fd := a.root
		if d != "" {
			var err error
			fd, err = openBeneath(a.root, d)
			if err != nil {
				return fmt.Errorf("apply %s: set times: %w", d, resolveErr(err))
			}
		}
		err := futimens(fd, a.dirTimes[d])
		if fd != a.root {
			unix.Close(fd)
		}
		if err != nil {
			return fmt.Errorf("apply %s: set times: %w", d, err)
		}
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (a *applier) closeCache() {
	for _, fd := range a.fds {
		unix.Close(fd)
	}
	clear(a.fds)
}

func (a *applier) closeAll() {
	if a.wb != nil {
		a.wb.stop()
		a.wb = nil
	}
	a.closeCache()
	unix.Close(a.root)
}

// dirFd returns a descriptor of the directory parent (a cleaned name, ""
// for the layer root), creating missing directories when create is set.
// The descriptor belongs to the cache: callers must not close it, and it
// stays valid only until the next dirFd call.
func (a *applier) dirFd(entry, parent string, create bool) (int, error) {
	if parent == "" {
		return a.root, nil
	}
	if fd, ok := a.fds[parent]; ok {
		return fd, nil
	}
	if len(a.fds) >= maxCachedDirs {
		a.closeCache()
	}
	fd, err := openBeneath(a.root, parent)
	if err == nil {
		a.fds[parent] = fd
		return fd, nil
	}
	if err != unix.ENOENT || !create {
		return -1, fmt.Errorf("apply %s: parent %s: %w", entry, parent, resolveErr(err))
	}

	// Walk down, making the directories the tar skipped.
	cur := a.root
	closeCur := func() {
		if cur != a.root {
			unix.Close(cur)
		}
	}
	for i := 0; ; {
		j := strings.IndexByte(parent[i:], '/')
		if j < 0 {
			j = len(parent)
		} else {
			j += i
		}
		comp := parent[i:j]
		next, err := openBeneath(cur, comp)
		if err == unix.ENOENT {
			next, err = a.implicitDir(cur, comp, parent[:j])
		}
		if err != nil {
			closeCur()
			return -1, fmt.Errorf("apply %s: parent %s: %w", entry, parent[:j], resolveErr(err))
		}
		closeCur()
		cur = next
		if j == len(parent) {
			break
		}
		i = j + 1
	}
	a.fds[parent] = cur
	return cur, nil
}

// maxCachedDirs bounds the open directory descriptors; tars list a
// directory's entries together, so a few suffice.
const maxCachedDirs = 64

func (a *applier) implicitDir(pfd int, comp, path string) (int, error) {
	if err := unix.Mkdirat(pfd, comp, 0o755); err != nil {
		return -1, err
	}
	a.seen[path] = kindImplicitDir
	fd, err := openBeneath(pfd, comp)
	if err != nil {
		return -1, err
	}
	// Creation honours the umask; the layer must not depend on it.
	err = unix.Fchmod(fd, 0o755)
	if err == nil && a.opts.Rootless {
		n := node{pfd: -1, fd: fd}
		err = n.setxattr(statoverride.Xattr, statoverride.Format(statoverride.Stat{Mode: unix.S_IFDIR | 0o755}))
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// drain reads the rest of the current entry and returns how many bytes
// that was.
func (a *applier) drain(entry string) (int64, error) {
	var total int64
	for {
		n, err := a.src.Read(a.buf)
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("apply %s: %w", entry, err)
		}
	}
}
