package fusefs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir %s: %v", dir, err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func lstat(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return &st
}

func setX(t *testing.T, p, name, v string) {
	t.Helper()
	if err := unix.Lsetxattr(p, name, []byte(v), 0); err != nil {
		t.Fatalf("setxattr %s %s: %v", p, name, err)
	}
}

// TestLookupHidesWhatOverlayHides builds every whiteout and opaque format
// and checks lookup and readdir agree with overlayfs's rules.
func TestLookupHidesWhatOverlayHides(t *testing.T) {
	needFuse(t) // the layers get trusted.* xattrs and foreign owners
	lowers, upper, work := layerDirs(t, 2)
	top, bottom := lowers[0], lowers[1]
	for _, n := range []string{"devwh", "ociwh", "kept", "dir/old", "opq/old", "ociopq/old", "xw/gone", "xw/stays", "file2dir/x"} {
		mustWrite(t, filepath.Join(bottom, n), "bottom "+n)
	}
	mustMkdir(t, filepath.Join(bottom, "nondirhides"))
	mustWrite(t, filepath.Join(bottom, "nondirhides/inner"), "x")
	mustWhiteout(t, filepath.Join(top, "devwh"))
	mustWrite(t, filepath.Join(top, ".wh.ociwh"), "")
	mustWrite(t, filepath.Join(top, "dir/new"), "top")
	mustWrite(t, filepath.Join(top, "opq/new"), "top")
	setX(t, filepath.Join(top, "opq"), "trusted.overlay.opaque", "y")
	mustWrite(t, filepath.Join(top, "ociopq/new"), "top")
	mustWrite(t, filepath.Join(top, "ociopq/.wh..wh..opq"), "")
	mustMkdir(t, filepath.Join(top, "xw"))
	setX(t, filepath.Join(top, "xw"), "user.overlay.opaque", "x")
	mustWrite(t, filepath.Join(top, "xw/gone"), "")
	setX(t, filepath.Join(top, "xw/gone"), "user.overlay.whiteout", "")
	mustWrite(t, filepath.Join(top, "nondirhides"), "a file now")
	mustWrite(t, filepath.Join(top, ".wh..wh..plnk"), "")
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})

	tests := []struct {
		dir  string
		want string
	}{
		{".", "dir file2dir kept nondirhides ociopq opq xw"},
		{"dir", "new old"},
		{"opq", "new"},
		{"ociopq", "new"},
		{"xw", "stays"},
	}
	for _, tc := range tests {
		if got := strings.Join(names(t, filepath.Join(mnt, tc.dir)), " "); got != tc.want {
			t.Errorf("readdir %s = %q, want %q", tc.dir, got, tc.want)
		}
	}
	for _, hidden := range []string{"devwh", "ociwh", ".wh.ociwh", "opq/old", "ociopq/old", "ociopq/.wh..wh..opq", "xw/gone", "nondirhides/inner", ".wh..wh..plnk"} {
		if _, err := os.Lstat(filepath.Join(mnt, hidden)); !os.IsNotExist(err) && !errorsIs(err, syscall.ENOTDIR) {
			t.Errorf("lookup %s: err %v, want ENOENT", hidden, err)
		}
	}
	if st := lstat(t, filepath.Join(mnt, "nondirhides")); st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		t.Errorf("nondirhides mode %o, want a regular file", st.Mode)
	}
	if b, _ := os.ReadFile(filepath.Join(mnt, "dir/old")); string(b) != "bottom dir/old" {
		t.Errorf("dir/old = %q", b)
	}
}

// TestInodeNumbers: one st_dev, readdir's d_ino equals stat's st_ino,
// hardlinks share it, and copy-up and remount keep it.
func TestInodeNumbers(t *testing.T) {
	lowers, upper, work := layerDirs(t, 2)
	mustWrite(t, filepath.Join(lowers[1], "a"), "a")
	mustWrite(t, filepath.Join(lowers[1], "d/b"), "b")
	mustWrite(t, filepath.Join(lowers[0], "d/c"), "c")
	mustWrite(t, filepath.Join(lowers[0], "h1"), "hard")
	if err := os.Link(filepath.Join(lowers[0], "h1"), filepath.Join(lowers[0], "d/h2")); err != nil {
		t.Fatal(err)
	}
	opts := Options{Lowers: lowers, Upper: upper, Work: work}
	inos := func(mnt string) map[string]uint64 {
		m := map[string]uint64{}
		dev := lstat(t, mnt).Dev
		filepath.Walk(mnt, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Dev != dev {
				t.Errorf("%s: st_dev %d, root has %d", p, st.Dev, dev)
			}
			rel, _ := filepath.Rel(mnt, p)
			m[rel] = st.Ino
			return nil
		})
		// d_ino from getdents must be the same numbers.
		for _, dir := range []string{".", "d"} {
			f, err := os.Open(filepath.Join(mnt, dir))
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 8192)
			n, err := unix.Getdents(int(f.Fd()), buf)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			for b := buf[:n]; len(b) > 0; {
				reclen := int(b[16]) | int(b[17])<<8
				ino := uint64(0)
				for i := 7; i >= 0; i-- {
					ino = ino<<8 | uint64(b[i])
				}
				name := string(bytes.TrimRight(b[19:reclen], "\x00"))
				b = b[reclen:]
				if name == "." || name == ".." {
					continue
				}
				if want := m[filepath.Join(dir, name)]; ino != want {
					t.Errorf("d_ino of %s/%s = %d, stat says %d", dir, name, ino, want)
				}
			}
		}
		return m
	}
	mnt := mountT(t, opts)
	before := inos(mnt)
	if before["h1"] != before["d/h2"] {
		t.Errorf("hardlinks h1 and d/h2: ino %d vs %d", before["h1"], before["d/h2"])
	}
	if st := lstat(t, filepath.Join(mnt, "h1")); st.Nlink != 2 {
		t.Errorf("nlink of h1 = %d, want 2 from the first stat", st.Nlink)
	}
	seen := map[uint64]string{}
	for p, ino := range before {
		if q, dup := seen[ino]; dup && !(strings.Contains(p+q, "h1") && strings.Contains(p+q, "h2")) {
			t.Errorf("%s and %s share ino %d", p, q, ino)
		}
		seen[ino] = p
	}
	// Copy-ups of a file, a hardlink name and a directory.
	for _, p := range []string{"a", "d/h2"} {
		if err := os.Chmod(filepath.Join(mnt, p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(mnt, "d/new"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	after := inos(mnt)
	for p, ino := range before {
		if after[p] != ino {
			t.Errorf("%s: ino %d before copy-up, %d after", p, ino, after[p])
		}
	}
	// Remount the same view.
	mnt2 := mountT(t, opts)
	again := inos(mnt2)
	for p, ino := range after {
		if again[p] != ino {
			t.Errorf("%s: ino %d, %d after remount", p, ino, again[p])
		}
	}
}

// TestCopyUp checks data, holes, owner, mode, ns times and xattrs, and that
// the lower never changes.
func TestCopyUp(t *testing.T) {
	needFuse(t) // the layers get trusted.* xattrs and foreign owners
	lowers, upper, work := layerDirs(t, 1)
	low := filepath.Join(lowers[0], "dir/sparse")
	mustMkdir(t, filepath.Dir(low))
	f, err := os.Create(low)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("tail"), 5<<30) // past 4 GiB
	f.Close()
	os.Chown(low, 1234, 5678)
	os.Chmod(low, 0o751)
	os.Chmod(filepath.Dir(low), 0o711)
	os.Chown(filepath.Dir(low), 42, 43)
	setX(t, low, "user.keep", "me")
	capv := []byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if err := unix.Lsetxattr(low, "security.capability", capv, 0); err != nil {
		t.Fatal(err)
	}
	ts := []unix.Timespec{{Sec: 1000, Nsec: 123456789}, {Sec: 2000, Nsec: 987654321}}
	unix.UtimesNanoAt(unix.AT_FDCWD, low, ts, unix.AT_SYMLINK_NOFOLLOW)
	lowBefore := lstat(t, low)

	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	p := filepath.Join(mnt, "dir/sparse")
	// setxattr triggers a copy-up that keeps everything else.
	if err := unix.Lsetxattr(p, "user.new", []byte("v"), 0); err != nil {
		t.Fatalf("setxattr: %v", err)
	}
	up := filepath.Join(upper, "dir/sparse")
	ust := lstat(t, up)
	if ust.Uid != 1234 || ust.Gid != 5678 || ust.Mode&07777 != 0o751 {
		t.Errorf("upper copy owner %d:%d mode %o", ust.Uid, ust.Gid, ust.Mode&07777)
	}
	if ust.Mtim != lowBefore.Mtim || ust.Atim.Sec != lowBefore.Atim.Sec {
		t.Errorf("upper copy mtime %v, lower %v", ust.Mtim, lowBefore.Mtim)
	}
	if ust.Blocks > 256 {
		t.Errorf("upper copy uses %d blocks: holes were filled", ust.Blocks)
	}
	if ust.Size != lowBefore.Size {
		t.Errorf("size %d, want %d", ust.Size, lowBefore.Size)
	}
	if v, _ := getXattr(up, "user.keep"); string(v) != "me" {
		t.Errorf("user.keep not copied: %q", v)
	}
	if v, _ := getXattr(up, "security.capability"); !bytes.Equal(v, capv) {
		t.Errorf("security.capability not copied: %v", v)
	}
	dst := lstat(t, filepath.Join(upper, "dir"))
	if dst.Uid != 42 || dst.Mode&07777 != 0o711 {
		t.Errorf("parent copied up as %d mode %o", dst.Uid, dst.Mode&07777)
	}
	// Write through the view, check lower untouched.
	if err := os.WriteFile(p, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Errorf("read back %q", b)
	}
	if st := lstat(t, low); st.Size != lowBefore.Size || st.Mtim != lowBefore.Mtim {
		t.Errorf("lower changed: size %d", st.Size)
	}
	// Private xattrs never show.
	sz, _ := unix.Llistxattr(p, nil)
	buf := make([]byte, sz+10)
	n, _ := unix.Llistxattr(p, buf)
	for _, x := range strings.Split(string(buf[:n]), "\x00") {
		if whiteout.IsPrivateXattr(x) {
			t.Errorf("private xattr %s listed", x)
		}
	}
}

// TestHardlinkGroupCopyUp: writing one name of a lower hardlink group is
// seen through the other names, in this mount and the next.
func TestHardlinkGroupCopyUp(t *testing.T) {
	lowers, upper, work := layerDirs(t, 2)
	mustWrite(t, filepath.Join(lowers[1], "a"), "old")
	// The upper lower layer hardlinks its parent's file (a materialized
	// chain) under another name.
	mustMkdir(t, filepath.Join(lowers[0], "sub"))
	if err := os.Link(filepath.Join(lowers[1], "a"), filepath.Join(lowers[0], "sub/b")); err != nil {
		t.Fatal(err)
	}
	opts := Options{Lowers: lowers, Upper: upper, Work: work}
	mnt := mountT(t, opts)
	if err := os.WriteFile(filepath.Join(mnt, "sub/b"), []byte("new data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(mnt, "a")); string(b) != "new data" {
		t.Errorf("other name reads %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(lowers[1], "a")); string(b) != "old" {
		t.Errorf("lower changed: %q", b)
	}
	if a, b := lstat(t, filepath.Join(mnt, "a")), lstat(t, filepath.Join(mnt, "sub/b")); a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("ino %d vs %d, nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	mnt2 := mountT(t, opts)
	if b, _ := os.ReadFile(filepath.Join(mnt2, "a")); string(b) != "new data" {
		t.Errorf("after remount other name reads %q", b)
	}
}

// TestWhiteoutsAndOpaque: the upper is written in overlayfs's own format.
func TestWhiteoutsAndOpaque(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "f"), "f")
	mustWrite(t, filepath.Join(lowers[0], "d/inner"), "i")
	mustWrite(t, filepath.Join(lowers[0], "e/inner"), "i")
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work, XattrNamespace: whiteout.User})
	if err := os.Remove(filepath.Join(mnt, "f")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(mnt, "d")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"f", "d"} {
		st := lstat(t, filepath.Join(upper, p))
		if !whiteout.IsWhiteoutDevice(st.Mode, st.Rdev) {
			t.Errorf("upper %s: mode %o rdev %d, want a 0/0 whiteout", p, st.Mode, st.Rdev)
		}
		if _, err := os.Lstat(filepath.Join(mnt, p)); !os.IsNotExist(err) {
			t.Errorf("%s still visible: %v", p, err)
		}
	}
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := names(t, filepath.Join(mnt, "d")); len(got) != 0 {
		t.Errorf("new dir over whiteout shows %v", got)
	}
	if v, err := getXattr(filepath.Join(upper, "d"), "user.overlay.opaque"); err != nil || string(v) != "y" {
		t.Errorf("user.overlay.opaque = %q, %v", v, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("again"), 0o600); err != nil {
		t.Fatalf("create over whiteout: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(mnt, "f")); string(b) != "again" {
		t.Errorf("f = %q", b)
	}
	// rmdir of a dir the union shows empty but whose upper holds a
	// whiteout.
	if err := os.Remove(filepath.Join(mnt, "e/inner")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "e")); err != nil {
		t.Fatalf("rmdir e: %v", err)
	}
	if got := names(t, mnt); strings.Join(got, " ") != "d f" {
		t.Errorf("root shows %v", got)
	}
}

// TestRenameLowerDir: a directory from the lowers can be renamed (overlayfs
// without redirect_dir says EXDEV); its contents follow, also after a
// remount.
func TestRenameLowerDir(t *testing.T) {
	lowers, upper, work := layerDirs(t, 2)
	mustWrite(t, filepath.Join(lowers[1], "src/a"), "a")
	mustWrite(t, filepath.Join(lowers[0], "src/sub/b"), "b")
	mustWrite(t, filepath.Join(lowers[0], "dst/junk"), "j")
	opts := Options{Lowers: lowers, Upper: upper, Work: work}
	mnt := mountT(t, opts)
	srcIno := lstat(t, filepath.Join(mnt, "src")).Ino
	if err := os.Rename(filepath.Join(mnt, "src"), filepath.Join(mnt, "moved")); err != nil {
		t.Fatalf("rename lower dir: %v", err)
	}
	check := func(mnt string) {
		t.Helper()
		if _, err := os.Lstat(filepath.Join(mnt, "src")); !os.IsNotExist(err) {
			t.Errorf("old name still there: %v", err)
		}
		if got := strings.Join(names(t, filepath.Join(mnt, "moved")), " "); got != "a sub" {
			t.Errorf("moved shows %q", got)
		}
		if b, _ := os.ReadFile(filepath.Join(mnt, "moved/sub/b")); string(b) != "b" {
			t.Errorf("moved/sub/b = %q", b)
		}
	}
	check(mnt)
	if ino := lstat(t, filepath.Join(mnt, "moved")).Ino; ino != srcIno {
		t.Errorf("renamed dir ino %d, was %d", ino, srcIno)
	}
	// Rename over an empty-looking lower dir, and a dir into a subdir.
	if err := os.Remove(filepath.Join(mnt, "dst/junk")); err != nil {
		t.Fatal(err)
	}
	// syscall.Rename: os.Rename refuses an existing directory itself.
	if err := syscall.Rename(filepath.Join(mnt, "moved/sub"), filepath.Join(mnt, "dst")); err != nil {
		t.Fatalf("rename over empty dir: %v", err)
	}
	if got := strings.Join(names(t, filepath.Join(mnt, "dst")), " "); got != "b" {
		t.Errorf("dst shows %q", got)
	}
	if err := os.WriteFile(filepath.Join(mnt, "moved/a"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt2 := mountT(t, opts)
	if got := strings.Join(names(t, filepath.Join(mnt2, "moved")), " "); got != "a" {
		t.Errorf("after remount moved shows %q", got)
	}
	if b, _ := os.ReadFile(filepath.Join(mnt2, "moved/a")); string(b) != "changed" {
		t.Errorf("after remount moved/a = %q", b)
	}
	if got := strings.Join(names(t, filepath.Join(mnt2, "dst")), " "); got != "b" {
		t.Errorf("after remount dst shows %q", got)
	}
}

// TestRenameFlags: RENAME_NOREPLACE and RENAME_EXCHANGE on lower objects.
func TestRenameFlags(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "x"), "x")
	mustWrite(t, filepath.Join(lowers[0], "d/y"), "y")
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	x, d := filepath.Join(mnt, "x"), filepath.Join(mnt, "d")
	if err := unix.Renameat2(unix.AT_FDCWD, x, unix.AT_FDCWD, d, unix.RENAME_NOREPLACE); err != unix.EEXIST {
		t.Errorf("RENAME_NOREPLACE: %v, want EEXIST", err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, x, unix.AT_FDCWD, d, unix.RENAME_EXCHANGE); err != nil {
		t.Fatalf("RENAME_EXCHANGE: %v", err)
	}
	if b, _ := os.ReadFile(d); string(b) != "x" {
		t.Errorf("d now reads %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(x, "y")); string(b) != "y" {
		t.Errorf("x/y reads %q", b)
	}
}

// TestReadOnlyView: no upper means EROFS for every change.
func TestReadOnlyView(t *testing.T) {
	lowers, _, _ := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "f"), "f")
	mnt := mountT(t, Options{Lowers: lowers})
	p := filepath.Join(mnt, "f")
	for name, op := range map[string]func() error{
		"create": func() error { return os.WriteFile(filepath.Join(mnt, "g"), nil, 0o644) },
		"write":  func() error { return os.WriteFile(p, []byte("x"), 0o644) },
		"chmod":  func() error { return os.Chmod(p, 0o600) },
		"unlink": func() error { return os.Remove(p) },
		"mkdir":  func() error { return os.Mkdir(filepath.Join(mnt, "d"), 0o755) },
		"xattr":  func() error { return unix.Setxattr(p, "user.x", []byte("1"), 0) },
	} {
		if err := op(); !errorsIs(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", name, err)
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "f" {
		t.Errorf("read %q", b)
	}
}

// TestOwnerPresentation: override_stat, ID maps and squashing.
func TestOwnerPresentation(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "ov"), "o")
	if err := statoverride.Set(filepath.Join(lowers[0], "ov"), statoverride.Stat{UID: 7, GID: 8, Mode: 0o4711}); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(lowers[0], "mapped"), "m")
	os.Chown(filepath.Join(lowers[0], "mapped"), 100005, 100006)
	mustWrite(t, filepath.Join(lowers[0], "unmapped"), "u")
	os.Chown(filepath.Join(lowers[0], "unmapped"), 5, 5)
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work,
		UIDMap: []IDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GIDMap: []IDMap{{ContainerID: 0, HostID: 100000, Size: 65536}}})
	if st := lstat(t, filepath.Join(mnt, "ov")); st.Uid != 7 || st.Gid != 8 || st.Mode&07777 != 0o4711 {
		t.Errorf("override_stat shown as %d:%d %o", st.Uid, st.Gid, st.Mode&07777)
	}
	if st := lstat(t, filepath.Join(mnt, "mapped")); st.Uid != 5 || st.Gid != 6 {
		t.Errorf("mapped shown as %d:%d, want 5:6", st.Uid, st.Gid)
	}
	if st := lstat(t, filepath.Join(mnt, "unmapped")); st.Uid != OverflowID {
		t.Errorf("unmapped shown as %d, want %d", st.Uid, OverflowID)
	}
	if err := os.Chown(filepath.Join(mnt, "mapped"), 9, 9); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, filepath.Join(upper, "mapped")); st.Uid != 100009 {
		t.Errorf("chown 9 stored as %d, want 100009", st.Uid)
	}
	if err := os.Chmod(filepath.Join(mnt, "ov"), 0o640); err != nil {
		t.Fatal(err)
	}
	if s, ok, _ := statoverride.Get(filepath.Join(upper, "ov")); !ok || s.Mode&07777 != 0o640 || s.UID != 7 {
		t.Errorf("chmod of an overridden file: record %+v %v", s, ok)
	}
	root := uint32(0)
	mnt2 := mountT(t, Options{Lowers: lowers, SquashUID: &root, SquashGID: &root})
	if st := lstat(t, filepath.Join(mnt2, "mapped")); st.Uid != 0 || st.Gid != 0 {
		t.Errorf("squashed shown as %d:%d", st.Uid, st.Gid)
	}
}

func errorsIs(err error, target syscall.Errno) bool {
	for err != nil {
		if e, ok := err.(syscall.Errno); ok {
			return e == target
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// TestOverrideStatType: an empty file whose override_stat names a device
// shows as that device.
func TestOverrideStatType(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	p := filepath.Join(lowers[0], "null")
	mustWrite(t, p, "")
	if err := statoverride.Set(p, statoverride.Stat{UID: 0, GID: 0, Mode: unix.S_IFCHR | 0o666, Rdev: unix.Mkdev(1, 3)}); err != nil {
		t.Fatal(err)
	}
	if err := statoverride.Set(lowers[0], statoverride.Stat{UID: 0, GID: 0, Mode: unix.S_IFDIR | 0o755}); err != nil {
		t.Fatal(err)
	}
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	// Plain getdents first (no lookup yet), then stat.
	f, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := unix.Getdents(int(f.Fd()), buf)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	for b := buf[:n]; len(b) > 0; {
		reclen := int(b[16]) | int(b[17])<<8
		if name := string(bytes.TrimRight(b[19:reclen], "\x00")); name == "null" && b[18] != unix.DT_CHR {
			t.Errorf("getdents d_type of null = %d, want DT_CHR", b[18])
		}
		b = b[reclen:]
	}
	st := lstat(t, filepath.Join(mnt, "null"))
	if st.Mode != unix.S_IFCHR|0o666 || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("null shows mode %o rdev %x", st.Mode, st.Rdev)
	}
	ents, _ := os.ReadDir(mnt)
	if len(ents) != 1 || ents[0].Type()&os.ModeCharDevice == 0 {
		t.Errorf("readdir type of null: %v", ents)
	}
}

// TestFileOps covers what posixtest does not: shared writable mmap and
// flock on a copied-up lower file, utimensat with UTIME_NOW/UTIME_OMIT and
// nanoseconds, statfs of the upper, fdatasync.
func TestFileOps(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "m"), strings.Repeat("a", 8192))
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	p := filepath.Join(mnt, "m")
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// In another process: see helperCommand.
	if out, err := helperCommand("mmap-write", p, "4096", "mapped").CombinedOutput(); err != nil {
		t.Fatalf("mmap write: %v: %s", err, out)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Errorf("flock: %v", err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Errorf("fdatasync: %v", err)
	}
	f.Close()
	b, _ := os.ReadFile(filepath.Join(upper, "m"))
	if string(b[4096:4102]) != "mapped" {
		t.Errorf("upper copy after mmap write: %q", b[4096:4102])
	}
	if b, _ := os.ReadFile(filepath.Join(lowers[0], "m")); strings.Contains(string(b), "mapped") {
		t.Error("mmap write reached the lower")
	}

	before := lstat(t, p)
	ts := []unix.Timespec{{Sec: 0, Nsec: unix.UTIME_NOW}, {Sec: 0, Nsec: unix.UTIME_OMIT}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0); err != nil {
		t.Fatal(err)
	}
	st := lstat(t, p)
	if st.Mtim != before.Mtim || st.Atim.Sec < time0().Unix() {
		t.Errorf("UTIME_NOW/OMIT: atime %v mtime %v (mtime before %v)", st.Atim, st.Mtim, before.Mtim)
	}
	ts = []unix.Timespec{{Sec: 0, Nsec: unix.UTIME_OMIT}, {Sec: 1234, Nsec: 567890123}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, p); st.Mtim.Sec != 1234 || st.Mtim.Nsec != 567890123 {
		t.Errorf("mtime %v, want 1234.567890123", st.Mtim)
	}

	var vs, us unix.Statfs_t
	unix.Statfs(mnt, &vs)
	unix.Statfs(upper, &us)
	if vs.Blocks != us.Blocks || vs.Bsize != us.Bsize {
		t.Errorf("statfs: view %d blocks of %d, upper %d of %d", vs.Blocks, vs.Bsize, us.Blocks, us.Bsize)
	}
}

// time0 is a time shortly before the test ran.
func time0() time.Time { return time.Now().Add(-time.Hour) }

// TestMountOptions: generic mount options reach the kernel mount.
func TestMountOptions(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work, ExtraMountOptions: []string{"noatime", "nosuid", "nodev"}})
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == mnt {
			for _, want := range []string{"noatime", "nosuid", "nodev"} {
				if !strings.Contains(f[5], want) {
					t.Errorf("mount options %q lack %s", f[5], want)
				}
			}
			if !strings.Contains(line, "default_permissions") {
				t.Errorf("mount lacks default_permissions: %s", line)
			}
			return
		}
	}
	t.Fatalf("%s not in mountinfo", mnt)
}

// TestConcurrentCopyUp: many writers of one lower file copy it up once,
// and a read-only descriptor opened before keeps working (no EIO from
// mixing cached and passthrough opens).
func TestConcurrentCopyUp(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	for i := 0; i < 8; i++ {
		mustWrite(t, filepath.Join(lowers[0], "d", fmt.Sprint("f", i)), "lower")
	}
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	ro, err := os.Open(filepath.Join(mnt, "d/f0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			p := filepath.Join(mnt, "d", fmt.Sprint("f", w%8))
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{byte('A' + w%8)}, 0); err != nil {
				errs <- err
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent open/write: %v", err)
	}
	for i := 0; i < 8; i++ {
		b, err := os.ReadFile(filepath.Join(mnt, "d", fmt.Sprint("f", i)))
		if err != nil || string(b) != string(rune('A'+i))+"ower" {
			t.Errorf("f%d = %q, %v", i, b, err)
		}
		if b, _ := os.ReadFile(filepath.Join(lowers[0], "d", fmt.Sprint("f", i))); string(b) != "lower" {
			t.Errorf("lower f%d changed: %q", i, b)
		}
	}
	buf := make([]byte, 5)
	if _, err := ro.ReadAt(buf, 0); err != nil {
		t.Errorf("read through the descriptor opened before copy-up: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(work, "layerfs/tmp"))
	if len(ents) != 0 {
		t.Errorf("work dir keeps %d temporaries", len(ents))
	}
}

// TestAncestorAttrsAfterCopyUp: lower-only dirs are cached for a long
// time; copying them up (for a create deeper down) must not leave the
// kernel showing the lower attributes.
func TestAncestorAttrsAfterCopyUp(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "a/b/f"), "f")
	old := time.Unix(1_000_000_000, 0)
	os.Chtimes(filepath.Join(lowers[0], "a"), old, old)
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	if st := lstat(t, filepath.Join(mnt, "a")); st.Mtim.Sec != old.Unix() {
		t.Fatalf("a mtime %d, want %d", st.Mtim.Sec, old.Unix())
	}
	if err := os.WriteFile(filepath.Join(mnt, "a/b/new"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	want := lstat(t, filepath.Join(upper, "a")).Mtim
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := lstat(t, filepath.Join(mnt, "a")).Mtim
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a shows mtime %v, upper copy has %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReadOnlyOverUsedUpper: a read-only view of an upper the union wrote
// shows its changes (hardlink index included) and changes nothing.
func TestReadOnlyOverUsedUpper(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "a"), "old")
	os.Link(filepath.Join(lowers[0], "a"), filepath.Join(lowers[0], "b"))
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	if err := os.WriteFile(filepath.Join(mnt, "a"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := run(t, "find", upper, work, "-printf", "%p %s %T@\n")
	ro := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work, ReadOnly: true})
	for _, n := range []string{"a", "b"} {
		if b, err := os.ReadFile(filepath.Join(ro, n)); string(b) != "new" {
			t.Errorf("%s reads %q, %v in the read-only view", n, b, err)
		}
	}
	if err := os.WriteFile(filepath.Join(ro, "b"), []byte("x"), 0o644); !errorsIs(err, syscall.EROFS) {
		t.Errorf("write: %v, want EROFS", err)
	}
	if after := run(t, "find", upper, work, "-printf", "%p %s %T@\n"); after != before {
		t.Errorf("read-only view changed upper or work:\n%s\n%s", before, after)
	}
}

// TestCrossDeviceLayers: a lower on another filesystem (tmpfs) than the
// upper: st_ino stays unique and stable (device index packed in), and
// copy-up falls back from copy_file_range to read/write.
func TestCrossDeviceLayers(t *testing.T) {
	needFuse(t)
	shm, err := os.MkdirTemp("/dev/shm", "fusefs-xdev-")
	if err != nil {
		t.Skip("no writable /dev/shm")
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	lowers, upper, work := layerDirs(t, 1)
	var a, b unix.Stat_t
	unix.Stat(shm, &a)
	unix.Stat(upper, &b)
	if a.Dev == b.Dev {
		t.Skip("/dev/shm is on the same filesystem")
	}
	for i := 0; i < 20; i++ {
		mustWrite(t, filepath.Join(shm, fmt.Sprint("s", i)), fmt.Sprint("shm", i))
		mustWrite(t, filepath.Join(lowers[0], fmt.Sprint("e", i)), fmt.Sprint("ext", i))
	}
	mnt := mountT(t, Options{Lowers: []string{shm, lowers[0]}, Upper: upper, Work: work})
	seen := map[uint64]string{}
	for _, n := range names(t, mnt) {
		ino := lstat(t, filepath.Join(mnt, n)).Ino
		if other, dup := seen[ino]; dup {
			t.Errorf("%s and %s share st_ino %d", n, other, ino)
		}
		seen[ino] = n
	}
	before := lstat(t, filepath.Join(mnt, "s3")).Ino
	if err := os.WriteFile(filepath.Join(mnt, "s3"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(upper, "s3")); string(b) != "changed" {
		t.Errorf("upper copy holds %q", b)
	}
	if err := unix.Setxattr(filepath.Join(mnt, "s4"), "user.x", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(upper, "s4")); string(b) != "shm4" {
		t.Errorf("cross-device copy-up data: %q", b)
	}
	if after := lstat(t, filepath.Join(mnt, "s3")).Ino; after != before {
		t.Errorf("st_ino %d before copy-up, %d after", before, after)
	}
}

// TestOpsDuringAncestorRename: a change or query of a file by descriptor
// while a directory above it is renamed finds the file. The kernel sends
// such requests without locking the file's ancestors, so the union's
// path for the file may be mid-change when it arrives.
func TestOpsDuringAncestorRename(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	const lowerFiles = 1000 // copied up one by one, through a descriptor of b
	for i := range lowerFiles {
		mustWrite(t, filepath.Join(lowers[0], "a/b", fmt.Sprint("lf", i)), "lower")
	}
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	mustWrite(t, filepath.Join(mnt, "a/b/f"), "f")
	if err := os.Mkdir(filepath.Join(mnt, "links"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target", filepath.Join(mnt, "a/b/l")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(mnt, "a/b/f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	lfd, err := unix.Open(filepath.Join(mnt, "a/b/l"), unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Fsetxattr(fd, "user.k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	dfd, err := unix.Open(filepath.Join(mnt, "a/b"), unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)

	stop := make(chan struct{})
	renamed := make(chan error, 1)
	go func() {
		names := [2]string{filepath.Join(mnt, "a"), filepath.Join(mnt, "z")}
		for i := 0; ; i++ {
			select {
			case <-stop:
				renamed <- nil
				return
			default:
			}
			if err := os.Rename(names[i%2], names[(i+1)%2]); err != nil {
				renamed <- err
				return
			}
		}
	}()
	ops := []struct {
		name string
		do   func(i int) error
	}{
		{"fchmod", func(i int) error { return unix.Fchmod(fd, uint32(0o600+i%2*0o40)) }},
		{"fsetxattr", func(i int) error { return unix.Fsetxattr(fd, "user.k", []byte("v"), 0) }},
		{"fgetxattr", func(int) error { _, err := unix.Fgetxattr(fd, "user.k", make([]byte, 8)); return err }},
		{"flistxattr", func(int) error { _, err := unix.Flistxattr(fd, make([]byte, 64)); return err }},
		{"fremovexattr", func(int) error {
			if err := unix.Fremovexattr(fd, "user.k"); err != nil {
				return err
			}
			return unix.Fsetxattr(fd, "user.k", []byte("v"), 0)
		}},
		{"readlink", func(int) error { _, err := unix.Readlinkat(lfd, "", make([]byte, 16)); return err }},
		// linkat of a /proc link sends a LINK of the object, no lookup.
		{"link", func(i int) error {
			// Not in the renamed directory's parent, which the
			// kernel locks for the rename.
			dst := filepath.Join(mnt, "links", fmt.Sprint(i%4))
			os.Remove(dst)
			return unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
		}},
		// Names in b, through a descriptor of b: requests on b.
		{"create, unlink", func(int) error {
			c, err := unix.Openat(dfd, "c", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
			if err != nil {
				return err
			}
			unix.Close(c)
			return unix.Unlinkat(dfd, "c", 0)
		}},
		{"mkdir, rmdir", func(int) error {
			if err := unix.Mkdirat(dfd, "d", 0o755); err != nil {
				return fmt.Errorf("mkdir: %w", err)
			}
			if err := unix.Unlinkat(dfd, "d", unix.AT_REMOVEDIR); err != nil {
				return fmt.Errorf("rmdir: %w", err)
			}
			return nil
		}},
		{"symlink, rename", func(int) error {
			if err := unix.Symlinkat("x", dfd, "s"); err != nil {
				return fmt.Errorf("symlink: %w", err)
			}
			if err := unix.Renameat(dfd, "s", dfd, "s2"); err != nil {
				return fmt.Errorf("rename: %w", err)
			}
			if err := unix.Unlinkat(dfd, "s2", 0); err != nil {
				return fmt.Errorf("unlink: %w", err)
			}
			return nil
		}},
		{"mknod", func(int) error {
			if err := unix.Mknodat(dfd, "p", unix.S_IFIFO|0o644, 0); err != nil {
				return fmt.Errorf("mknod: %w", err)
			}
			if err := unix.Unlinkat(dfd, "p", 0); err != nil {
				return fmt.Errorf("unlink: %w", err)
			}
			return nil
		}},
		{"copy-up", func(i int) error {
			if i >= lowerFiles {
				return nil
			}
			c, err := unix.Openat(dfd, fmt.Sprint("lf", i), unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(c)
			_, err = unix.Write(c, []byte("+"))
			return err
		}},
		// Reopening through /proc sends an OPEN with no lookup.
		{"reopen", func(int) error {
			g, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", fd))
			if err == nil {
				g.Close()
			}
			return err
		}},
	}
	failures := map[string]error{}
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		for _, op := range ops {
			if err := op.do(i); err != nil && failures[op.name] == nil {
				failures[op.name] = fmt.Errorf("iteration %d: %w", i, err)
			}
		}
	}
	close(stop)
	if err := <-renamed; err != nil {
		t.Fatalf("rename: %v", err)
	}
	for name, err := range failures {
		t.Errorf("%s while an ancestor is renamed: %v", name, err)
	}
	// Every copy landed where the directory is now, none elsewhere.
	b := filepath.Join(mnt, "a/b")
	if _, err := os.Stat(b); err != nil {
		b = filepath.Join(mnt, "z/b")
	}
	for i := range lowerFiles {
		got, err := os.ReadFile(filepath.Join(b, fmt.Sprint("lf", i)))
		if err != nil || string(got) != "lower+" && string(got) != "lower" {
			t.Fatalf("lf%d after its copy-up: %q, %v", i, got, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(upper, "a")); len(ents) > 0 {
		if ents2, _ := os.ReadDir(filepath.Join(upper, "z")); len(ents2) > 0 {
			t.Errorf("both a and z hold entries in the upper")
		}
	}
}

// TestNamelessOpenFile: an open file no name leads to any more (unlinked,
// renamed over, or made with O_TMPFILE) takes every change and query
// through its descriptor, as on any Linux file system. The union reaches
// such a file through its own descriptor's /proc link, which the
// no-follow (l*) calls would have acted on instead of the file.
func TestNamelessOpenFile(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "lower"), "lower data")
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	open := func(t *testing.T, name string) *os.File {
		f, err := os.OpenFile(filepath.Join(mnt, name), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	cases := []struct {
		name     string
		nameless func(t *testing.T) *os.File
	}{
		{"unlinked", func(t *testing.T) *os.File {
			mustWrite(t, filepath.Join(mnt, "u"), "data")
			f := open(t, "u")
			if err := os.Remove(filepath.Join(mnt, "u")); err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{"lower, copied up and unlinked", func(t *testing.T) *os.File {
			f := open(t, "lower")
			if err := os.Remove(filepath.Join(mnt, "lower")); err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{"renamed over", func(t *testing.T) *os.File {
			mustWrite(t, filepath.Join(mnt, "r"), "data")
			mustWrite(t, filepath.Join(mnt, "r2"), "other")
			f := open(t, "r")
			if err := os.Rename(filepath.Join(mnt, "r2"), filepath.Join(mnt, "r")); err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{"O_TMPFILE", func(t *testing.T) *os.File {
			fd, err := unix.Open(mnt, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			return os.NewFile(uintptr(fd), "tmpfile")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.nameless(t)
			defer f.Close()
			fd := int(f.Fd())
			steps := []struct {
				what string
				err  error
			}{
				{"fchmod", unix.Fchmod(fd, 0o640)},
				{"fchown", unix.Fchown(fd, 1, 2)},
				{"ftruncate", unix.Ftruncate(fd, 3)},
				{"futimens", unix.Futimes(fd, []unix.Timeval{{Sec: 5}, {Sec: 7}})},
				{"fsetxattr", unix.Fsetxattr(fd, "user.k", []byte("v"), 0)},
			}
			for _, s := range steps {
				if s.err != nil {
					t.Errorf("%s: %v", s.what, s.err)
				}
			}
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode != unix.S_IFREG|0o640 || st.Uid != 1 || st.Gid != 2 || st.Size != 3 || st.Mtim.Sec != 7 {
				t.Errorf("stat: mode %o uid %d gid %d size %d mtime %d; want %o 1 2 3 7",
					st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Sec, unix.S_IFREG|0o640)
			}
			buf := make([]byte, 16)
			if n, err := unix.Fgetxattr(fd, "user.k", buf); err != nil || string(buf[:n]) != "v" {
				t.Errorf("fgetxattr = %q, %v", buf[:max(n, 0)], err)
			}
			if n, err := unix.Flistxattr(fd, buf); err != nil || !strings.Contains(string(buf[:max(n, 0)]), "user.k") {
				t.Errorf("flistxattr = %q, %v", buf[:max(n, 0)], err)
			}
			if err := unix.Fremovexattr(fd, "user.k"); err != nil {
				t.Errorf("fremovexattr: %v", err)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "r")); err != nil || string(b) != "other" {
		t.Errorf("the file renamed over r: %q, %v", b, err)
	}
	if b, _ := os.ReadFile(filepath.Join(lowers[0], "lower")); string(b) != "lower data" {
		t.Errorf("lower file changed: %q", b)
	}
}
