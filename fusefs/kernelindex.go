package fusefs

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/whiteout"
)

// Kernel overlayfs with index=on copies a lower hardlink group up once, to
// Work/index/<hex of the lower's file handle>, and links into the upper
// only the name the change came through; the group's other names find the
// copy through that index entry until an operation links them up. An
// upper the kernel wrote is therefore not the whole view: read alone, it
// shows those other names with the lower's old data.
//
// adoptKernelIndex reconciles such an upper before the union serves it,
// for each regular entry of Work/index:
//
//   - the lower object is found by its file handle (open_by_handle_at,
//     which needs CAP_DAC_READ_SEARCH; only real root gets index=on from
//     the kernel anyway);
//   - every name of its group that the union finds showing that lower
//     object (at its lower path, or under a directory the upper redirects
//     there) is linked to the entry in the upper, as the union's own
//     copy-up of a hardlink group does, so the upper alone describes the
//     view and a commit reads the new data under every name;
//   - the entry is linked as the union's own index entry of the object's
//     view inode, with NS.layerfs.origin and NS.layerfs.nlink set, so names
//     the union could not find (in other layers) still resolve to it, and
//     every name shows one st_ino: the lower's, as under the kernel;
//   - the link count the view shows is taken from the kernel's
//     overlay.nlink ("U+N": the upper's st_nlink plus N), and that record
//     is rewritten for the links added here, so the kernel still counts
//     right when it mounts the upper again.
//
// Entries the union cannot place (a handle that no lower decodes, a layer
// too big to walk for its hardlinks) are logged and left alone.
func (u *union) adoptKernelIndex() {
	if u.upper == nil || u.readOnly || u.workFd < 0 || u.opts.Work == "" {
		return
	}
	dir := filepath.Join(u.opts.Work, "index")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return // never mounted by the kernel with index=on
	}
	var redirects map[string][]string
	redirected := func() map[string][]string {
		if redirects == nil {
			redirects = u.upperRedirects()
		}
		return redirects
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue // nfs_export's directory entries and whiteouts
		}
		if err := u.adoptIndexEntry(filepath.Join(dir, e.Name()), redirected); err != nil {
			u.log.Warn("kernel overlay index entry not read", "entry", e.Name(), "err", err)
		}
	}
}

// ovlFidOffset is where the file id starts in overlayfs's struct ovl_fb:
// version, magic (0xfb), len, flags, type, then a 16-byte uuid.
const ovlFidOffset = 21

// decodeOvlHandle parses the name of an index entry (the hex of an ovl_fb).
func decodeOvlHandle(name string) (typ int32, fid []byte, err error) {
	fb, err := hex.DecodeString(name)
	if err != nil {
		return 0, nil, fmt.Errorf("not a file handle: %w", err)
	}
	return parseOvlFb(fb)
}

// parseOvlFb parses a struct ovl_fb: an index entry's name decoded, or
// the value of an overlay.origin xattr.
func parseOvlFb(fb []byte) (typ int32, fid []byte, err error) {
	if len(fb) <= ovlFidOffset || fb[0] != 0 || fb[1] != 0xfb || int(fb[2]) != len(fb) {
		return 0, nil, errors.New("not an overlayfs file handle")
	}
	return int32(fb[4]), fb[ovlFidOffset:], nil
}

// parseOvlNlink reads the kernel's overlay.nlink record: "U+N", "U-N",
// "L+N" or "L-N", the view's link count relative to the upper's or the
// lower's st_nlink.
func parseOvlNlink(v string) (base byte, delta int, ok bool) {
	v = strings.TrimRight(v, "\x00")
	if len(v) < 3 || (v[0] != 'U' && v[0] != 'L') {
		return 0, 0, false
	}
	d, err := strconv.Atoi(v[1:])
	if err != nil {
		return 0, 0, false
	}
	return v[0], d, true
}

// decodeIndexEntry reads an entry of Work/index without changing it: the
// lower object its name (the object's file handle) stands for, the entry's
// own stat, and the view's link count from the kernel's overlay.nlink
// record (-1 when there is none) with the namespace it was found in.
func (u *union) decodeIndexEntry(entry string) (lst, est unix.Stat_t, viewNlink int, kernelNs string, err error) {
	typ, fid, err := decodeOvlHandle(filepath.Base(entry))
	if err != nil {
		return lst, est, -1, "", err
	}
	if lst, err = u.statLowerByHandle(typ, fid); err != nil {
		return lst, est, -1, "", err
	}
	if err := unix.Lstat(entry, &est); err != nil {
		return lst, est, -1, "", err
	}
	viewNlink = -1 // unknown until the group's names are
	for _, ns := range []string{"trusted", "user"} {
		v, err := getXattr(entry, ns+".overlay.nlink")
		if err != nil {
			continue
		}
		if base, d, ok := parseOvlNlink(string(v)); ok {
			kernelNs = ns
			viewNlink = int(est.Nlink) + d
			if base == 'L' {
				viewNlink = int(lst.Nlink) + d
			}
		}
		break
	}
	return lst, est, viewNlink, kernelNs, nil
}

// statLowerByHandle stats the lower object a file handle names.
func (u *union) statLowerByHandle(typ int32, fid []byte) (unix.Stat_t, error) {
	var st unix.Stat_t
	tried := map[uint64]bool{}
	for _, l := range u.lowers {
		if tried[l.dev] {
			continue
		}
		tried[l.dev] = true
		// open_by_handle_at refuses an O_PATH descriptor as its mount fd.
		mfd, err := unix.Openat(l.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return st, fmt.Errorf("open lower %s: %w", l.root, err)
		}
		fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(typ, fid), unix.O_PATH|unix.O_CLOEXEC)
		unix.Close(mfd)
		if err != nil {
			if errors.Is(err, unix.EPERM) {
				return st, fmt.Errorf("decode the lower file handle: %w (needs CAP_DAC_READ_SEARCH)", err)
			}
			continue
		}
		err = unix.Fstat(fd, &st)
		unix.Close(fd)
		if err == nil {
			return st, nil
		}
	}
	return st, errors.New("its file handle names no object of the lower layers")
}

// upperOrigin is the view inode number an upper object shows: the one its
// NS.layerfs.origin records (a copy-up by the union), else, for a
// non-directory kernel overlayfs copied up, the number of the lower object
// its overlay.origin names, where that object has no other names (st_nlink
// 1), as the kernel shows it: st_ino then stays the same across copy-up
// and across drivers. A lower hardlink group the kernel copied up goes
// through its index, which Mount adopts. The kernel's handle needs
// CAP_DAC_READ_SEARCH to decode; without it the upper's own number shows.
func (u *union) upperOrigin(path string) (uint64, bool) {
	if o, ok := readOrigin(path); ok {
		return o, true
	}
	fb, err := getXattr(path, u.ns.String()+".overlay.origin")
	if err != nil {
		return 0, false
	}
	typ, fid, err := parseOvlFb(fb)
	if err != nil {
		return 0, false
	}
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil || st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return 0, false
	}
	lst, err := u.statLowerByHandle(typ, fid)
	if err != nil || lst.Nlink != 1 || lst.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT {
		return 0, false
	}
	return u.inos.ino(lst.Dev, lst.Ino), true
}

// groupLayer is the first lower layer whose hardlink groups hold lower
// object lst (walking layers for their groups as needed).
func (u *union) groupLayer(lst *unix.Stat_t) (int, error) {
	for i, l := range u.lowers {
		if l.dev == lst.Dev && len(u.hardlinks(l).names[lst.Ino]) > 0 {
			return i, nil
		}
	}
	return -1, fmt.Errorf("lower inode %d: no layer's hardlink groups hold it", lst.Ino)
}

func (u *union) adoptIndexEntry(entry string, redirected func() map[string][]string) error {
	lst, est, viewNlink, kernelNs, err := u.decodeIndexEntry(entry)
	if err != nil {
		return err
	}
	ino := u.inos.ino(lst.Dev, lst.Ino)
	idx := u.indexRelFor(ino)
	var ist unix.Stat_t
	ierr := unix.Fstatat(u.workFd, idx, &ist, unix.AT_SYMLINK_NOFOLLOW)
	if ierr == nil && ist.Dev == est.Dev && ist.Ino == est.Ino && viewNlink >= 0 {
		if v, ok := overlayXattr(entry, nlinkSuffix); ok && v == strconv.Itoa(viewNlink) {
			// Adopted by an earlier mount, and the kernel has not
			// changed the group since: no need to walk the layer.
			return nil
		}
	}
	li, err := u.groupLayer(&lst)
	if err != nil {
		return err
	}
	if viewNlink < 0 {
		viewNlink = int(u.lowerViewNlink(li, &lst))
	}

	switch err := ierr; {
	case err == nil && (ist.Dev != est.Dev || ist.Ino != est.Ino):
		return fmt.Errorf("the union's index holds another copy of lower inode %d (%s)", lst.Ino, idx)
	case err == nil:
	case errors.Is(err, unix.ENOENT):
		if err := setOverlayXattr(entry, u.ns, originSuffix, strconv.FormatUint(ino, 10)); err != nil {
			return fmt.Errorf("record origin: %w", err)
		}
		if err := unix.Linkat(unix.AT_FDCWD, entry, u.workFd, idx, 0); err != nil {
			return fmt.Errorf("link into the union's index: %w", err)
		}
	default:
		return err
	}

	linkUp := func(p string) {
		dir, _ := splitRel(p)
		if _, err := u.ensureUpperDir(dir, nil); err != nil {
			u.log.Warn("kernel overlay index: cannot link a name of a hardlink group", "path", p, "err", err)
			return
		}
		if err := unix.Linkat(unix.AT_FDCWD, entry, u.upper.fd, p, 0); err != nil && !errors.Is(err, unix.EEXIST) {
			u.log.Warn("kernel overlay index: cannot link a name of a hardlink group", "path", p, "err", err)
		}
	}
	vis, _ := u.visibleGroupNames(li, &lst)
	for _, p := range vis {
		linkUp(p)
	}
	viewNlink = max(viewNlink, 1)
	if err := unix.Lstat(entry, &est); err != nil {
		return err
	}
	if names := int(est.Nlink) - 2; names < viewNlink {
		// Names the lower paths did not lead to may show under a
		// directory the kernel renamed (redirect_dir): look there.
		for _, p := range u.hardlinks(u.lowers[li]).names[lst.Ino] {
			for _, v := range redirectedPaths(redirected(), p) {
				f, errno := u.resolvePath(v)
				if errno == 0 && !f.upper && f.lowerLayer == li && f.st.Dev == lst.Dev && f.st.Ino == lst.Ino {
					linkUp(v)
					vis = append(vis, v)
				}
			}
		}
	}
	if err := setOverlayXattr(entry, u.ns, nlinkSuffix, strconv.Itoa(viewNlink)); err != nil {
		return fmt.Errorf("record link count: %w", err)
	}
	if kernelNs != "" {
		if err := unix.Lstat(entry, &est); err != nil {
			return err
		}
		rec := "U" + fmt.Sprintf("%+d", viewNlink-int(est.Nlink))
		if err := unix.Lsetxattr(entry, kernelNs+".overlay.nlink", []byte(rec), 0); err != nil {
			u.log.Warn("kernel overlay index: cannot update its link count", "entry", entry, "err", err)
		}
	}
	u.debugf("adopted kernel index entry", "entry", filepath.Base(entry), "ino", ino, "linked", len(vis), "nlink", viewNlink)
	return nil
}

// upperRedirects maps the lower paths that the upper's redirected
// directories (overlay.redirect, absolute or relative) show to the view
// paths they show them under. It reads every directory of the upper.
func (u *union) upperRedirects() map[string][]string {
	out := map[string][]string{}
	var walk func(view, lower string)
	walk = func(view, lower string) {
		ents, err := os.ReadDir(u.upper.path(view))
		if err != nil {
			return
		}
		for _, e := range ents {
			if !e.IsDir() {
				continue
			}
			v, low := join(view, e.Name()), join(lower, e.Name())
			if r, ok := overlayXattr(u.upper.path(v), redirectSuffix); ok {
				if target, abs, ok := parseRedirect(r); ok {
					if abs {
						low = target
					} else {
						low = join(lower, target)
					}
					out[low] = append(out[low], v)
				}
			}
			walk(v, low)
		}
	}
	walk(".", ".")
	return out
}

// redirectedPaths are the view paths under which lower path p may show
// through a redirected directory.
func redirectedPaths(redirects map[string][]string, p string) []string {
	var out []string
	for d := p; ; {
		d, _ = splitRel(d)
		if d == "." {
			return out
		}
		for _, v := range redirects[d] {
			out = append(out, v+p[len(d):])
		}
	}
}

// AdoptKernelIndex does to opts.Upper what Mount does first (see "What the
// union reads" in the package doc), without mounting: after kernel
// overlayfs mounted it with index=on, it links the names of the hardlink
// groups the kernel indexed into the upper, so a commit or a diff that
// reads the upper alone sees what the view showed. It does nothing when
// the kernel never indexed anything.
func AdoptKernelIndex(opts Options) error {
	if opts.Upper == "" || opts.Work == "" {
		return nil
	}
	if _, err := os.Stat(filepath.Join(opts.Work, "index")); err != nil {
		return nil
	}
	opts.ReadOnly = false
	if err := opts.validate(); err != nil {
		return fmt.Errorf("adopt kernel index of %s: %w", opts.Upper, err)
	}
	o := opts.withDefaults()
	u, err := newUnion(o)
	if err != nil {
		return fmt.Errorf("adopt kernel index of %s: %w", opts.Upper, err)
	}
	defer u.close()
	if err := u.rootNode(); err != nil {
		return fmt.Errorf("adopt kernel index of %s: %w", opts.Upper, err)
	}
	u.adoptKernelIndex()
	return nil
}

// KernelIndexNames reads the hardlink index kernel overlayfs (index=on)
// keeps in opts.Work/index and returns the names that only it serves: for
// each regular entry, the view paths ("/dir/name") of the group's names
// that show the lower object in the upper and lowers as they are (the
// kernel serves the entry's data there), each mapped to the entry's path,
// a link of the upper copy. Names already in the upper are not listed.
//
// Unlike AdoptKernelIndex it writes nothing, neither in the upper nor in
// the work dir, so it may read a view that the kernel has mounted right
// now, where changing either is undefined behaviour: a commit or a diff
// of such a view adds these names itself. Entries it cannot place (a
// handle no lower decodes, a layer too big to walk for its hardlinks) are
// logged to opts.Logger and left out.
func KernelIndexNames(opts Options) (map[string]string, error) {
	if opts.Upper == "" || opts.Work == "" {
		return nil, nil
	}
	dir := filepath.Join(opts.Work, "index")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // never mounted by the kernel with index=on
	}
	if err != nil {
		return nil, fmt.Errorf("read kernel index of %s: %w", opts.Upper, err)
	}
	// Read-only: newUnion then creates and cleans nothing in the work dir.
	opts.ReadOnly = true
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("read kernel index of %s: %w", opts.Upper, err)
	}
	o := opts.withDefaults()
	u, err := newUnion(o)
	if err != nil {
		return nil, fmt.Errorf("read kernel index of %s: %w", opts.Upper, err)
	}
	defer u.close()
	if err := u.rootNode(); err != nil {
		return nil, fmt.Errorf("read kernel index of %s: %w", opts.Upper, err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue // nfs_export's directory entries and whiteouts
		}
		entry := filepath.Join(dir, e.Name())
		names, err := u.indexEntryNames(entry)
		if err != nil {
			u.log.Warn("kernel overlay index entry not read", "entry", e.Name(), "err", err)
			continue
		}
		for _, p := range names {
			out["/"+p] = entry
		}
	}
	return out, nil
}

// indexEntryNames are the view paths under which the view shows the lower
// object of index entry entry from a lower layer: at the names' lower
// paths and under directories the upper redirects there.
func (u *union) indexEntryNames(entry string) ([]string, error) {
	lst, est, _, _, err := u.decodeIndexEntry(entry)
	if err != nil {
		return nil, err
	}
	if lst.Mode&unix.S_IFMT != est.Mode&unix.S_IFMT || lst.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil, fmt.Errorf("entry of type %#o for a lower object of type %#o", est.Mode&unix.S_IFMT, lst.Mode&unix.S_IFMT)
	}
	li, err := u.groupLayer(&lst)
	if err != nil {
		return nil, err
	}
	vis, _ := u.visibleGroupNames(li, &lst)
	return vis, nil
}

// The kernel's side of the union's own index. A lower hardlink group the
// union copies up through Work/layerfs/index (names in other layers, or a
// layer too big to walk) keeps names that only that index serves, and
// kernel overlayfs does not read it. So the union also writes the entry
// the kernel would have made, as links of the same copy: the kernel then
// serves those names from it when it mounts the upper with index=on, and
// shows the group as one inode with the lower's st_ino, as the union does.
//
//   - Work/index/<hex of the lower object's overlayfs file handle>: a
//     struct ovl_fb (version 0, magic 0xfb, length, flags, the handle's
//     type, the lower filesystem's uuid) followed by the handle
//     name_to_handle_at gives, which is what exportfs encodes for the
//     kernel too;
//   - trusted.overlay.origin = that ovl_fb, on the copy (the kernel checks
//     it on the index entry, and reads it on the upper names);
//   - trusted.overlay.nlink = "U" + the view's link count less the copy's
//     st_nlink, kept in step with NS.layerfs.nlink (syncKernelNlink).
//
// Only with trusted.* xattrs: the kernel turns the index off with
// userxattr. Where the lower's filesystem has no file handles nothing is
// written, and the kernel shows such names with the lower's data.

// ovlFlagBigEndian is overlayfs's OVL_FH_FLAG_BIG_ENDIAN: handles record
// the byte order of the CPU that encoded them.
const ovlFlagBigEndian = 1 << 0

// fsIocGetFsUUID is FS_IOC_GETFSUUID, _IOR(0x15, 0, struct fsuuid2).
const fsIocGetFsUUID = 0x80111500

// kernelOriginXattr is where kernel overlayfs (without userxattr) keeps
// a copy's origin; kernelNlinkXattr its link count record.
const (
	kernelOriginXattr = "trusted.overlay.origin"
	kernelNlinkXattr  = "trusted.overlay.nlink"
)

// kernelHandle returns the overlayfs file handle (struct ovl_fb) that
// kernel overlayfs computes for the lower object at rel in layer l, or nil
// where the kernel keeps no index for this union.
func (u *union) kernelHandle(l *layer, rel string) []byte {
	if u.ns != whiteout.Trusted || u.opts.Work == "" {
		return nil
	}
	fd, err := unix.Openat(l.fd, rel, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	fh, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH)
	if err != nil || fh.Type() < 0 || fh.Type() > 0xff {
		u.debugf("no file handle for the kernel's index", "path", rel, "err", err)
		return nil
	}
	fid := fh.Bytes()
	if ovlFidOffset+len(fid) > 0xff {
		return nil
	}
	fb := make([]byte, ovlFidOffset+len(fid))
	fb[0], fb[1], fb[2], fb[4] = 0, 0xfb, byte(len(fb)), byte(fh.Type())
	if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 {
		fb[3] = ovlFlagBigEndian
	}
	copy(fb[5:ovlFidOffset], lowerUUID(l))
	copy(fb[ovlFidOffset:], fid)
	return fb
}

// lowerUUID is the uuid of layer l's filesystem as the kernel holds it
// (super_block s_uuid), null where the filesystem has none.
func lowerUUID(l *layer) []byte {
	var u struct {
		len  uint8
		uuid [16]byte
	}
	fd, err := unix.Openat(l.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocGetFsUUID, uintptr(unsafe.Pointer(&u))); errno != 0 || u.len > 16 {
		return nil
	}
	return u.uuid[:u.len]
}

// linkKernelIndex links the union's index entry idx (whose copy carries
// trusted.overlay.origin = fb) as the kernel's entry for fb, and records
// the link count the kernel is to show.
func (u *union) linkKernelIndex(idx string, fb []byte) {
	dir := filepath.Join(u.opts.Work, "index")
	// Mode 0, as the kernel makes it; the kernel keeps an existing one.
	if err := unix.Mkdir(dir, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		u.log.Warn("kernel overlay index: cannot make it", "dir", dir, "err", err)
		return
	}
	entry := filepath.Join(dir, hex.EncodeToString(fb))
	if err := unix.Linkat(u.workFd, idx, unix.AT_FDCWD, entry, 0); err != nil {
		var est, ist unix.Stat_t
		if !errors.Is(err, unix.EEXIST) || unix.Lstat(entry, &est) != nil ||
			unix.Fstatat(u.workFd, idx, &ist, unix.AT_SYMLINK_NOFOLLOW) != nil || est.Ino != ist.Ino || est.Dev != ist.Dev {
			u.log.Warn("kernel overlay index: cannot link the union's copy", "entry", entry, "err", err)
			return
		}
	}
	setKernelNlink(entry)
}

// syncKernelNlink brings the kernel's link count record of an index entry
// (when it has one) in step with the union's, after names were linked or
// removed.
func syncKernelNlink(path string) {
	if _, err := getXattr(path, kernelNlinkXattr); err == nil {
		setKernelNlink(path)
	}
}

// setKernelNlink writes the kernel's overlay.nlink record of an index
// entry from the union's own count: "U" and the difference from the
// copy's st_nlink, which counts the index links and the upper names.
func setKernelNlink(path string) {
	v, ok := overlayXattr(path, nlinkSuffix)
	if !ok {
		return
	}
	view, err := strconv.Atoi(v)
	var st unix.Stat_t
	if err != nil || view < 1 || unix.Lstat(path, &st) != nil {
		return
	}
	unix.Lsetxattr(path, kernelNlinkXattr, []byte(fmt.Sprintf("U%+d", view-int(st.Nlink))), 0)
}
