package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/whiteout"
)

func TestEscapeOption(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/a/b", "/a/b"},
		{"/a:b", `/a\:b`},
		{"/a,b", `/a\,b`},
		{`/a\b`, `/a\\b`},
		{`/x:,\y`, `/x\:\,\\y`},
	} {
		if got := escapeOption(tc.in); got != tc.want {
			t.Errorf("escapeOption(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	got := dataString([]string{"/l:1", "/l2"}, "/u,p", "/w", []string{"userxattr"})
	if want := `lowerdir=/l\:1:/l2,upperdir=/u\,p,workdir=/w,userxattr`; got != want {
		t.Errorf("dataString = %q, want %q", got, want)
	}
}

func TestMakePlan(t *testing.T) {
	dir := t.TempDir()
	l, u, w := mkdirs(t, dir, "l"), mkdirs(t, dir, "u"), mkdirs(t, dir, "w")
	for _, tc := range []struct {
		name        string
		opts        Options
		wantErr     string
		wantFlags   []string
		wantDropped []string
	}{
		{name: "no lowers", opts: Options{}, wantErr: "no lower"},
		{name: "too many lowers", opts: Options{Lowers: slices.Repeat([]string{l}, MaxLowers+1)}, wantErr: "at most 500"},
		{name: "upper without work", opts: Options{Lowers: []string{l}, Upper: u}, wantErr: "go together"},
		{name: "missing lower", opts: Options{Lowers: []string{dir + "/nope"}}, wantErr: "no such file"},
		{name: "privileged features", opts: Options{Lowers: []string{l}, Upper: u, Work: w, RedirectDir: true, Index: true, NFSExport: true, XinoAuto: true},
			wantFlags: []string{"redirect_dir=on", "index=on", "nfs_export=on", "xino=auto"}},
		{name: "userxattr forbids redirect and metacopy", opts: Options{Lowers: []string{l}, Upper: u, Work: w, UserXattr: true, RedirectDir: true, Index: true, Metacopy: true},
			wantFlags: []string{"userxattr", "index=on"}, wantDropped: []string{"redirect_dir=on", "metacopy=on"}},
		{name: "nfs_export needs index", opts: Options{Lowers: []string{l}, Upper: u, Work: w, NFSExport: true},
			wantDropped: []string{"nfs_export=on"}},
		{name: "nfs_export excludes metacopy", opts: Options{Lowers: []string{l}, Upper: u, Work: w, Index: true, NFSExport: true, Metacopy: true},
			wantFlags: []string{"index=on", "metacopy=on"}, wantDropped: []string{"nfs_export=on"}},
		{name: "index useless without upper", opts: Options{Lowers: []string{l}, Index: true, ExtraOptions: []string{"volatile"}},
			wantFlags: []string{"volatile"}, wantDropped: []string{"index=on"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := makePlan(tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(p.flags, tc.wantFlags) {
				t.Errorf("flags = %q, want %q", p.flags, tc.wantFlags)
			}
			var dropped []string
			for _, d := range p.dropped {
				if d.Reason == "" {
					t.Errorf("%s dropped without a reason", d.Feature)
				}
				dropped = append(dropped, d.Feature)
			}
			if !slices.Equal(dropped, tc.wantDropped) {
				t.Errorf("dropped = %q, want %q", dropped, tc.wantDropped)
			}
		})
	}
}

func mkdirs(t testing.TB, parts ...string) string {
	t.Helper()
	p := filepath.Join(parts...)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	mkdirs(t, filepath.Dir(path))
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func notExist(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: want it gone, lstat says %v", path, err)
	}
}

// mountT mounts and makes sure the mount is gone when the test ends,
// whatever happened.
func mountT(t testing.TB, target string, opts Options) *Result {
	t.Helper()
	res, err := Mount(target, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(target, true); err != nil && !errors.Is(err, ErrNotMounted) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return res
}

// stack is a three-layer test stack: top hides a bottom file with a 0/0
// whiteout; mid makes a directory opaque over bottom's copy.
type stack struct {
	lowers             []string
	upper, work, mount string
}

func newStack(t testing.TB, dir string, ns whiteout.Namespace) stack {
	t.Helper()
	s := stack{
		lowers: []string{mkdirs(t, dir, "top"), mkdirs(t, dir, "mid"), mkdirs(t, dir, "bottom")},
		upper:  mkdirs(t, dir, "upper"), work: mkdirs(t, dir, "work"), mount: mkdirs(t, dir, "mnt"),
	}
	top, mid, bottom := s.lowers[0], s.lowers[1], s.lowers[2]
	writeFile(t, filepath.Join(bottom, "gone"), "bottom")
	writeFile(t, filepath.Join(bottom, "kept"), "bottom")
	writeFile(t, filepath.Join(bottom, "opq", "hidden"), "bottom")
	writeFile(t, filepath.Join(bottom, "merged", "b"), "bottom")
	writeFile(t, filepath.Join(bottom, "tree", "leaf"), "bottom")
	writeFile(t, filepath.Join(mid, "opq", "shown"), "mid")
	writeFile(t, filepath.Join(mid, "merged", "m"), "mid")
	writeFile(t, filepath.Join(top, "kept"), "top")
	if err := whiteout.SetOpaque(filepath.Join(mid, "opq"), ns); err != nil {
		t.Fatal(err)
	}
	if err := whiteout.CreatePath(filepath.Join(top, "gone")); err != nil {
		t.Fatal(err)
	}
	return s
}

// checkStack asserts the merged view of newStack and that a write lands in
// the upper.
func checkStack(t testing.TB, s stack) {
	t.Helper()
	m := s.mount
	if got := readFile(t, filepath.Join(m, "kept")); got != "top" {
		t.Errorf("kept = %q, want the top layer's", got)
	}
	notExist(t, filepath.Join(m, "gone"))
	notExist(t, filepath.Join(m, "opq", "hidden"))
	if got := readFile(t, filepath.Join(m, "opq", "shown")); got != "mid" {
		t.Errorf("opq/shown = %q", got)
	}
	ents, err := os.ReadDir(filepath.Join(m, "merged"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"b", "m"}) {
		t.Errorf("merged dir lists %q, want [b m]", names)
	}
	writeFile(t, filepath.Join(m, "merged", "new"), "written")
	if got := readFile(t, filepath.Join(s.upper, "merged", "new")); got != "written" {
		t.Errorf("upper has %q", got)
	}
	for _, l := range s.lowers {
		notExist(t, filepath.Join(l, "merged", "new"))
	}
	if err := os.Remove(filepath.Join(m, "kept")); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(s.upper, "kept"), &st); err != nil || !whiteout.IsWhiteoutStat(&st) {
		t.Errorf("deleting a lower file left no 0/0 whiteout in the upper (%v, mode %o rdev %d)", err, st.Mode, st.Rdev)
	}
}

func TestMountMethods(t *testing.T) {
	testutil.NeedRoot(t)
	for _, m := range []Method{MethodAuto, MethodFsconfig, MethodMountData, MethodShortLinks} {
		t.Run(m.String(), func(t *testing.T) {
			// Separators in the paths check the escaping of the legacy
			// option string.
			s := newStack(t, mkdirs(t, t.TempDir(), `odd:na,me\x`), whiteout.Trusted)
			res := mountT(t, s.mount, Options{Lowers: s.lowers, Upper: s.upper, Work: s.work, Method: m})
			if want := m; want != MethodAuto && res.Method != want {
				t.Errorf("method = %v, want %v", res.Method, want)
			}
			if m == MethodAuto && res.Method != MethodFsconfig {
				t.Errorf("auto chose %v on a kernel with lowerdir+", res.Method)
			}
			checkStack(t, s)
			for range 3 { // unmount/mount cycles keep the upper
				if err := Unmount(s.mount, false); err != nil {
					t.Fatal(err)
				}
				notExist(t, filepath.Join(s.mount, "merged"))
				if _, err := Mount(s.mount, Options{Lowers: s.lowers, Upper: s.upper, Work: s.work, Method: m}); err != nil {
					t.Fatal(err)
				}
				if got := readFile(t, filepath.Join(s.mount, "merged", "new")); got != "written" {
					t.Errorf("after remount merged/new = %q", got)
				}
				notExist(t, filepath.Join(s.mount, "kept"))
			}
		})
	}
}

func TestRedirectAndIndex(t *testing.T) {
	testutil.NeedRoot(t)
	s := newStack(t, t.TempDir(), whiteout.Trusted)
	// a hardlink pair in a lower: index=on keeps it one inode on copy-up
	if err := os.Link(filepath.Join(s.lowers[2], "tree", "leaf"), filepath.Join(s.lowers[2], "leaf-link")); err != nil {
		t.Fatal(err)
	}
	res := mountT(t, s.mount, Options{Lowers: s.lowers, Upper: s.upper, Work: s.work, RedirectDir: true, Index: true})
	for _, want := range []string{"redirect_dir=on", "index=on"} {
		if !slices.Contains(res.SuperOptions, want) {
			t.Errorf("kernel options %q lack %s (dropped: %v)", res.SuperOptions, want, res.Dropped)
		}
	}
	if err := os.Rename(filepath.Join(s.mount, "tree"), filepath.Join(s.mount, "moved")); err != nil {
		t.Fatalf("rename of a lower directory: %v", err)
	}
	if got := readFile(t, filepath.Join(s.mount, "moved", "leaf")); got != "bottom" {
		t.Errorf("moved/leaf = %q", got)
	}
	notExist(t, filepath.Join(s.mount, "tree"))
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(filepath.Join(s.upper, "moved"), "trusted.overlay.redirect", buf)
	if err != nil {
		t.Fatalf("upper dir has no redirect xattr: %v", err)
	}
	if got := string(buf[:n]); !strings.Contains(got, "tree") {
		t.Errorf("redirect = %q, want it to name tree", got)
	}
	f, err := os.OpenFile(filepath.Join(s.mount, "moved", "leaf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("+"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := readFile(t, filepath.Join(s.mount, "leaf-link")); got != "bottom+" {
		t.Errorf("hardlink after copy-up of the other name = %q, want bottom+ (index=on)", got)
	}
}

func TestReadOnly(t *testing.T) {
	testutil.NeedRoot(t)
	for _, withUpper := range []bool{true, false} {
		t.Run(fmt.Sprintf("upper=%v", withUpper), func(t *testing.T) {
			s := newStack(t, t.TempDir(), whiteout.Trusted)
			opts := Options{Lowers: s.lowers, ReadOnly: true}
			if withUpper {
				opts.Upper, opts.Work = s.upper, s.work
			}
			mountT(t, s.mount, opts)
			if got := readFile(t, filepath.Join(s.mount, "kept")); got != "top" {
				t.Errorf("kept = %q", got)
			}
			notExist(t, filepath.Join(s.mount, "gone"))
			err := os.WriteFile(filepath.Join(s.mount, "new"), nil, 0o644)
			if !errors.Is(err, syscall.EROFS) {
				t.Errorf("write on a read-only mount: %v, want EROFS", err)
			}
			if err := os.Remove(filepath.Join(s.mount, "kept")); !errors.Is(err, syscall.EROFS) {
				t.Errorf("remove on a read-only mount: %v, want EROFS", err)
			}
		})
	}
}

// deepStack makes n lowers whose paths are longer than fsconfig takes as a
// string, each holding its own file and a shared one the top must win.
func deepStack(t testing.TB, n int) (lowers []string, dir string) {
	dir = t.TempDir()
	long := strings.Repeat("d", 200)
	for i := range n {
		l := mkdirs(t, dir, long, fmt.Sprintf("layer-%03d-%s", i, strings.Repeat("x", 60)))
		writeFile(t, filepath.Join(l, fmt.Sprintf("f%d", i)), fmt.Sprint(i))
		writeFile(t, filepath.Join(l, "shared"), fmt.Sprint(i))
		lowers = append(lowers, l)
	}
	if len(lowers[0]) <= fsconfigStringMax {
		t.Fatalf("layer paths are too short (%d) to test passing by fd", len(lowers[0]))
	}
	return lowers, dir
}

func TestManyLowers(t *testing.T) {
	testutil.NeedRoot(t)
	for _, tc := range []struct {
		n      int
		method Method
		want   Method
	}{
		{128, MethodAuto, MethodFsconfig},
		{300, MethodAuto, MethodFsconfig},
		{300, MethodShortLinks, MethodShortLinks},
		{MaxLowers, MethodShortLinks, MethodShortLinks},
	} {
		t.Run(fmt.Sprintf("%d-%v", tc.n, tc.method), func(t *testing.T) {
			lowers, dir := deepStack(t, tc.n)
			if data := dataString(lowers, "", "", nil); len(data) < os.Getpagesize() {
				t.Fatalf("option string is only %d bytes: not a deep-stack test", len(data))
			}
			upper, work, mnt := mkdirs(t, dir, "u"), mkdirs(t, dir, "w"), mkdirs(t, dir, "m")
			res := mountT(t, mnt, Options{Lowers: lowers, Upper: upper, Work: work, Method: tc.method})
			if res.Method != tc.want {
				t.Errorf("method = %v, want %v", res.Method, tc.want)
			}
			if got := readFile(t, filepath.Join(mnt, "shared")); got != "0" {
				t.Errorf("shared = %q, want the top layer's 0", got)
			}
			ents, err := os.ReadDir(mnt)
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != tc.n+1 {
				t.Errorf("root lists %d entries, want %d", len(ents), tc.n+1)
			}
			last := tc.n - 1
			if got := readFile(t, filepath.Join(mnt, fmt.Sprintf("f%d", last))); got != fmt.Sprint(last) {
				t.Errorf("bottom layer file = %q", got)
			}
			writeFile(t, filepath.Join(mnt, "new"), "n")
			if got := readFile(t, filepath.Join(upper, "new")); got != "n" {
				t.Errorf("upper/new = %q", got)
			}
		})
	}
	t.Run("mount-data-too-long", func(t *testing.T) {
		lowers, dir := deepStack(t, 40)
		mnt := mkdirs(t, dir, "m")
		_, err := Mount(mnt, Options{Lowers: lowers, Method: MethodMountData})
		if !errors.Is(err, errDataTooLong) {
			_ = Unmount(mnt, true)
			t.Fatalf("err = %v, want errDataTooLong", err)
		}
	})
}

func TestUnmount(t *testing.T) {
	testutil.NeedRoot(t)
	s := newStack(t, t.TempDir(), whiteout.Trusted)
	if err := Unmount(s.mount, false); !errors.Is(err, ErrNotMounted) {
		t.Errorf("unmount of a plain dir: %v, want ErrNotMounted", err)
	}
	mountT(t, s.mount, Options{Lowers: s.lowers, Upper: s.upper, Work: s.work})
	f, err := os.Open(filepath.Join(s.mount, "kept"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = Unmount(s.mount, false)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "lazily") {
		t.Fatalf("unmount of a busy mount: %v, want ErrBusy with advice", err)
	}
	if err := Unmount(s.mount, true); err != nil {
		t.Fatalf("lazy unmount: %v", err)
	}
	if _, err := superOptions(s.mount); err == nil {
		t.Error("the overlay is still in mountinfo after a lazy unmount")
	}
	// the open file still reads: lazy unmount detaches, it does not revoke
	b := make([]byte, 3)
	if _, err := f.Read(b); err != nil || string(b) != "top" {
		t.Errorf("read through the detached mount: %q %v", b, err)
	}
}

func TestSupported(t *testing.T) {
	testutil.NeedRoot(t)
	t.Run("disk", func(t *testing.T) {
		s := Supported(ProbeOptions{Dir: t.TempDir(), Options: Options{RedirectDir: true, Index: true}})
		if !s.OK {
			t.Fatalf("not supported on the local disk: %s", s.Reason)
		}
		if s.Result == nil || len(s.Result.Dropped) != 0 {
			t.Errorf("features dropped as root on the local disk: %+v", s.Result)
		}
	})
	t.Run("deep-lowers-only", func(t *testing.T) {
		s := Supported(ProbeOptions{Dir: t.TempDir(), LowersOnly: true, Lowers: 300})
		if !s.OK {
			t.Fatalf("lowers-only probe failed: %s", s.Reason)
		}
	})
	t.Run("upper-on-overlay", func(t *testing.T) {
		s := newStack(t, t.TempDir(), whiteout.Trusted)
		mountT(t, s.mount, Options{Lowers: s.lowers, Upper: s.upper, Work: s.work})
		got := Supported(ProbeOptions{Dir: s.mount})
		if got.OK {
			t.Fatal("probe says an upper inside an overlay mount works")
		}
		if !strings.Contains(got.Reason, "overlayfs") {
			t.Errorf("reason does not name the cause: %s", got.Reason)
		}
		t.Logf("reason: %s", got.Reason)
		ents, _ := os.ReadDir(s.mount)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".overlay-probe-") {
				t.Errorf("probe left %s behind", e.Name())
			}
		}
	})
	t.Run("no-dir", func(t *testing.T) {
		if s := Supported(ProbeOptions{Dir: filepath.Join(t.TempDir(), "missing")}); s.OK || s.Reason == "" {
			t.Errorf("probe in a missing dir: %+v", s)
		}
	})
}

func TestSupportedOnFUSE(t *testing.T) {
	testutil.NeedRoot(t)
	_, err := os.Stat("/dev/fuse")
	testutil.Need(t, err == nil, "needs /dev/fuse")
	dir := t.TempDir()
	backing, mnt := mkdirs(t, dir, "backing"), mkdirs(t, dir, "fuse")
	root, err := gofs.NewLoopbackRoot(backing)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gofs.Mount(mnt, root, &gofs.Options{MountOptions: fuse.MountOptions{FsName: "layerfs-test", AllowOther: false}})
	if err != nil {
		t.Fatalf("go-fuse loopback mount: %v", err)
	}
	t.Cleanup(func() {
		if srv.Unmount() != nil {
			_ = Unmount(mnt, true)
		}
	})
	s := Supported(ProbeOptions{Dir: mnt})
	if s.OK {
		t.Fatal("probe says an upper on FUSE works")
	}
	if !strings.Contains(s.Reason, "FUSE") {
		t.Errorf("reason does not name FUSE: %s", s.Reason)
	}
	t.Logf("reason: %s", s.Reason)
}
