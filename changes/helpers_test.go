package changes

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/apply"
	"github.com/layerfs/layerfs/fusefs"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/kernel/overlay"
	"github.com/layerfs/layerfs/whiteout"
)

// op builds one object in a layer directory.
type op func(t testing.TB, root string)

// fixedTime is what every object built by the ops is stamped with, so the
// trees are reproducible; ns exercises PAX sub-second times.
func fixedTime() time.Time { return time.Unix(1_700_000_000, 123456789) }

func touch(t testing.TB, p string) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(fixedTime().UnixNano()), unix.NsecToTimespec(fixedTime().UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("utimes %s: %v", p, err)
	}
}

func mkparents(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
}

func file(rel, data string) op { return fileMode(rel, data, 0o644) }

func fileMode(rel, data string, mode os.FileMode) op {
	return func(t testing.TB, root string) {
		p := filepath.Join(root, rel)
		mkparents(t, p)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(p, uint32(mode&0o777)|suidBits(mode)); err != nil {
			t.Fatal(err)
		}
	}
}

func suidBits(m os.FileMode) uint32 {
	var b uint32
	if m&os.ModeSetuid != 0 {
		b |= unix.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		b |= unix.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		b |= unix.S_ISVTX
	}
	return b
}

func dir(rel string) op {
	return func(t testing.TB, root string) {
		if err := os.MkdirAll(filepath.Join(root, rel), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func symlink(rel, target string) op {
	return func(t testing.TB, root string) {
		p := filepath.Join(root, rel)
		mkparents(t, p)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
}

func hardlink(rel, existing string) op {
	return func(t testing.TB, root string) {
		p := filepath.Join(root, rel)
		mkparents(t, p)
		if err := os.Link(filepath.Join(root, existing), p); err != nil {
			t.Fatal(err)
		}
	}
}

func fifo(rel string) op {
	return func(t testing.TB, root string) {
		p := filepath.Join(root, rel)
		mkparents(t, p)
		if err := unix.Mkfifo(p, 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

func chardev(rel string, major, minor uint32) op {
	return func(t testing.TB, root string) {
		p := filepath.Join(root, rel)
		mkparents(t, p)
		if err := unix.Mknod(p, unix.S_IFCHR|0o620, int(unix.Mkdev(major, minor))); err != nil {
			t.Fatal(err)
		}
	}
}

func blockdev(rel string, major, minor uint32) op {
	return func(t testing.TB, root string) {
		p := filepath.Join(root, rel)
		mkparents(t, p)
		if err := unix.Mknod(p, unix.S_IFBLK|0o660, int(unix.Mkdev(major, minor))); err != nil {
			t.Fatal(err)
		}
	}
}

// whDev makes an overlay-native 0/0 whiteout.
func whDev(rel string) op {
	return func(t testing.TB, root string) {
		p := filepath.Join(root, rel)
		mkparents(t, p)
		if err := whiteout.CreatePath(p); err != nil {
			t.Fatal(err)
		}
	}
}

// whFile makes an OCI ".wh.NAME" whiteout file.
func whFile(rel string) op {
	return func(t testing.TB, root string) {
		d, base := filepath.Split(rel)
		file(filepath.Join(d, whiteout.Prefix+base), "")(t, root)
	}
}

// xwhiteout makes a Linux 6.7 xattr whiteout (an empty file with the
// overlay.whiteout xattr; its parent carries overlay.opaque="x").
func xwhiteout(rel string, ns whiteout.Namespace) op {
	return func(t testing.TB, root string) {
		file(rel, "")(t, root)
		xattr(rel, ns.WhiteoutXattr(), "")(t, root)
		xattr(filepath.Dir(rel), ns.OpaqueXattr(), "x")(t, root)
	}
}

func opaqueXattr(rel string, ns whiteout.Namespace) op {
	return func(t testing.TB, root string) {
		dir(rel)(t, root)
		if err := whiteout.SetOpaque(filepath.Join(root, rel), ns); err != nil {
			t.Fatal(err)
		}
	}
}

func opaqueFile(rel string) op {
	return func(t testing.TB, root string) { file(filepath.Join(rel, whiteout.OpaqueMarker), "")(t, root) }
}

func redirect(rel, value string, ns whiteout.Namespace) op {
	return func(t testing.TB, root string) {
		dir(rel)(t, root)
		xattr(rel, ns.OverlayPrefix()+"redirect", value)(t, root)
	}
}

func xattr(rel, name, value string) op {
	return func(t testing.TB, root string) {
		if err := unix.Lsetxattr(filepath.Join(root, rel), name, []byte(value), 0); err != nil {
			t.Fatalf("setxattr %s %s: %v", rel, name, err)
		}
	}
}

func chown(rel string, uid, gid int) op {
	return func(t testing.TB, root string) {
		if err := os.Lchown(filepath.Join(root, rel), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
}

// sparseFile writes data at each offset of a file of size bytes, the rest
// holes.
func sparseFile(rel string, size int64, data map[int64]string) op {
	return func(t testing.TB, root string) {
		p := filepath.Join(root, rel)
		mkparents(t, p)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		for off, d := range data {
			if _, err := f.WriteAt([]byte(d), off); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// build runs ops in root and stamps every object with fixedTime, deepest
// first so directory times survive.
func build(t testing.TB, root string, ops []op) {
	t.Helper()
	for _, o := range ops {
		o(t, root)
	}
	stampTimes(t, root)
}

func stampTimes(t testing.TB, root string) {
	t.Helper()
	var paths []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		return nil
	})
	slices.Reverse(paths)
	for _, p := range paths {
		touch(t, p)
	}
}

// makeStack builds lowers (top first) and an upper in fresh temp dirs.
func makeStack(t testing.TB, lowers [][]op, upper []op) (lowerDirs []string, upperDir string) {
	t.Helper()
	base := t.TempDir()
	for i, ops := range lowers {
		d := filepath.Join(base, fmt.Sprintf("lower%d", i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		build(t, d, ops)
		lowerDirs = append(lowerDirs, d)
	}
	upperDir = filepath.Join(base, "upper")
	if err := os.Mkdir(upperDir, 0o755); err != nil {
		t.Fatal(err)
	}
	build(t, upperDir, upper)
	return lowerDirs, upperDir
}

func writeLayer(t testing.TB, upper string, lowers []string, opts WriteOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteLayer(context.Background(), &buf, upper, lowers, opts); err != nil {
		t.Fatalf("WriteLayer: %v", err)
	}
	return buf.Bytes()
}

// tarEntry is the part of a tar header the tests compare.
type tarEntry struct {
	hdr  *tar.Header
	body string
}

func readTar(t testing.TB, data []byte) []tarEntry {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	var out []tarEntry
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read tar entry %s: %v", hdr.Name, err)
		}
		out = append(out, tarEntry{hdr, string(body)})
	}
}

// --- mounted views -------------------------------------------------------

// view is how a stack is mounted for comparison: the kernel overlay, or
// the layerfs union where the layers use formats the kernel does not read
// (".wh." files, user.overlay.* without userxattr).
type view int

const (
	kernelView view = iota
	unionView
)

// mountStack mounts lowers (top first) read-only and unmounts in
// t.Cleanup. upper, when set, is mounted as the union's upper (read-only)
// or the kernel's topmost lower (it reads whiteouts, opaque dirs and, with
// redirect_dir, redirects in lowers the same way).
func mountStack(t testing.TB, v view, upper string, lowers []string) string {
	t.Helper()
	testutil.NeedRoot(t)
	mnt := t.TempDir()
	if v == kernelView {
		all := lowers
		if upper != "" {
			all = append([]string{upper}, lowers...)
		}
		if len(all) < 2 {
			// A mount without an upper needs two lowers.
			all = append(all, t.TempDir())
		}
		if _, err := overlay.Mount(mnt, overlay.Options{Lowers: all, RedirectDir: true, ReadOnly: true}); err != nil {
			t.Fatalf("kernel overlay: %v", err)
		}
		t.Cleanup(func() {
			if err := overlay.Unmount(mnt, false); err != nil {
				t.Errorf("unmount: %v", err)
				overlay.Unmount(mnt, true)
			}
		})
		return mnt
	}
	_, err := os.Stat("/dev/fuse")
	testutil.Need(t, err == nil, "needs /dev/fuse")
	opts := fusefs.Options{Lowers: lowers, ReadOnly: true, Logger: slog.New(slog.DiscardHandler)}
	if upper != "" {
		opts.Upper = upper
		opts.Work = filepath.Join(filepath.Dir(upper), "work-"+filepath.Base(upper))
		if err := os.MkdirAll(opts.Work, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := fusefs.Mount(mnt, opts)
	if err != nil {
		t.Fatalf("union mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return mnt
}

// applyLayer applies a layer tar into a fresh directory with the project's
// applier (OCI whiteouts become 0/0 devices, opaque markers the trusted
// opaque xattr).
func applyLayer(t testing.TB, data []byte) string {
	t.Helper()
	d := t.TempDir()
	if _, err := apply.Apply(context.Background(), tar.NewReader(bytes.NewReader(data)), d, apply.Options{OpaqueNamespace: whiteout.Trusted}); err != nil {
		t.Fatalf("apply the layer: %v", err)
	}
	return d
}

// snapshot describes a mounted tree: one line per path with its type,
// permissions, owner, mtime, size and content hash, symlink target, device
// and xattrs; plus the hardlink groups.
func snapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	groups := map[[2]uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("type=%o perm=%o uid=%d gid=%d", st.Mode&unix.S_IFMT, st.Mode&0o7777, st.Uid, st.Gid)
		desc += fmt.Sprintf(" mtime=%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			desc += fmt.Sprintf(" size=%d sha=%s", st.Size, hex.EncodeToString(sum[:8]))
			if st.Nlink > 1 {
				k := [2]uint64{st.Dev, st.Ino}
				groups[k] = append(groups[k], rel)
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			desc += fmt.Sprintf(" dev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		xa, err := readXattrs(p)
		if err != nil {
			return err
		}
		var keys []string
		for k := range xa {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			desc += fmt.Sprintf(" %s=%q", k, xa[k])
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	for _, names := range groups {
		if len(names) > 1 {
			slices.Sort(names)
			out["hardlinks "+strings.Join(names, " ")] = "linked"
		}
	}
	return out
}

func compareSnapshots(t testing.TB, want, got map[string]string) {
	t.Helper()
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		w, wok := want[k]
		g, gok := got[k]
		switch {
		case !gok:
			t.Errorf("%s: missing after the round trip (want %s)", k, w)
		case !wok:
			t.Errorf("%s: appeared after the round trip (%s)", k, g)
		case w != g:
			t.Errorf("%s:\n  want %s\n  got  %s", k, w, g)
		}
	}
}
