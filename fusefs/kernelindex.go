package fusefs

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
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

func (u *union) adoptIndexEntry(entry string, redirected func() map[string][]string) error {
	typ, fid, err := decodeOvlHandle(filepath.Base(entry))
	if err != nil {
		return err
	}
	var lst unix.Stat_t
	decoded := false
	tried := map[uint64]bool{}
	for _, l := range u.lowers {
		if tried[l.dev] {
			continue
		}
		tried[l.dev] = true
		// open_by_handle_at refuses an O_PATH descriptor as its mount fd.
		mfd, err := unix.Openat(l.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open lower %s: %w", l.root, err)
		}
		fd, err := unix.OpenByHandleAt(mfd, unix.NewFileHandle(typ, fid), unix.O_PATH|unix.O_CLOEXEC)
		unix.Close(mfd)
		if err != nil {
			if errors.Is(err, unix.EPERM) {
				return fmt.Errorf("decode the lower file handle: %w (needs CAP_DAC_READ_SEARCH)", err)
			}
			continue
		}
		err = unix.Fstat(fd, &lst)
		unix.Close(fd)
		if err == nil {
			decoded = true
			break
		}
	}
	if !decoded {
		return errors.New("its file handle names no object of the lower layers")
	}
	var est unix.Stat_t
	if err := unix.Lstat(entry, &est); err != nil {
		return err
	}
	viewNlink := -1 // unknown until the group's names are
	kernelNs := ""
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
	li := -1
	for i, l := range u.lowers {
		if l.dev == lst.Dev && len(u.hardlinks(l).names[lst.Ino]) > 0 {
			li = i
			break
		}
	}
	if li < 0 {
		return fmt.Errorf("lower inode %d: no layer's hardlink groups hold it", lst.Ino)
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
	if _, _, err := u.rootNode(); err != nil {
		return fmt.Errorf("adopt kernel index of %s: %w", opts.Upper, err)
	}
	u.adoptKernelIndex()
	return nil
}
