package viewtest

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/graph"
	"github.com/layerfs/layerfs/internal/imagegen"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/kernel/overlay"
)

// needDriver skips or fails a test whose driver this environment lacks:
// the kernel driver needs real root (the rootless pass skips it), the
// union root or the rootless pass, and /dev/fuse.
func needDriver(t *testing.T, driver string) {
	t.Helper()
	if driver == Kernel {
		testutil.NeedRootOnly(t, "kernel overlayfs outside a user namespace")
		return
	}
	testutil.NeedRootOrRootlessPass(t)
	_, err := os.Stat("/dev/fuse")
	testutil.Need(t, err == nil, "needs /dev/fuse")
}

// sampleStore is a store holding imagegen's sample image as demo:1.
func sampleStore(t *testing.T) (*graph.Store, *graph.Image) {
	t.Helper()
	layers, err := imagegen.SampleLayers()
	if err != nil {
		t.Fatal(err)
	}
	return storeWith(t, layers)
}

// linksStore is a store holding demo:1, one layer owned by the user
// running the test (so a rootless run can write to it) with the hardlink
// group {data/a, data/b}.
func linksStore(t *testing.T) (*graph.Store, *graph.Image) {
	t.Helper()
	uid, gid := os.Getuid(), os.Getgid()
	layer, err := imagegen.Tar([]imagegen.Entry{
		{Name: "data/", Type: tar.TypeDir, UID: uid, GID: gid},
		{Name: "data/a", Type: tar.TypeReg, UID: uid, GID: gid, Content: []byte("data\n")},
		{Name: "data/b", Type: tar.TypeLink, UID: uid, GID: gid, Linkname: "data/a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return storeWith(t, [][]byte{layer})
}

func storeWith(t *testing.T, layers [][]byte) (*graph.Store, *graph.Image) {
	t.Helper()
	ctx := context.Background()
	s, err := graph.Open(ctx, filepath.Join(t.TempDir(), "store"), graph.Options{})
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if _, err := imagegen.WriteOCILayout(layout, layers, compression.Gzip, "demo:1"); err != nil {
		t.Fatal(err)
	}
	imgs, err := s.ImportImage(ctx, layout, graph.ImportImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s, imgs[0]
}

func isMounted(t *testing.T, path string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// gone checks that nothing of a discarded view is left.
func gone(t *testing.T, s *graph.Store, path, upper, viewID string) {
	t.Helper()
	if isMounted(t, path) {
		t.Errorf("%s is still mounted", path)
	}
	for _, p := range []string{path, filepath.Dir(path), upper} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left behind (%v)", p, err)
		}
	}
	if s != nil {
		views, err := s.Views()
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range views {
			if v.ID == viewID {
				t.Errorf("store view %s is left behind", viewID)
			}
		}
	}
}

func TestNewSourcesAndDrivers(t *testing.T) {
	for _, driver := range []string{Kernel, Fuse} {
		for _, kind := range []string{"image", "layer", "dirs"} {
			t.Run(driver+"/"+kind, func(t *testing.T) {
				needDriver(t, driver)
				var (
					src   Source
					store *graph.Store
					want  = map[string]string{}
				)
				switch kind {
				case "image", "layer":
					var img *graph.Image
					store, img = sampleStore(t)
					src = Image(store, "demo:1")
					if kind == "layer" {
						// A prefix of the chain ID names the layer.
						src = Layer(store, img.Top().Encoded()[:16])
					}
					want["etc/hostname"] = "layerfs-demo-v2\n"
					want["var/cache/fresh"] = "fresh\n"
				case "dirs":
					top, bottom := t.TempDir(), t.TempDir()
					for p, c := range map[string]string{filepath.Join(bottom, "a"): "bottom\n", filepath.Join(bottom, "b"): "b\n", filepath.Join(top, "a"): "top\n"} {
						if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
							t.Fatal(err)
						}
					}
					src = Dirs(top, bottom)
					want["a"], want["b"] = "top\n", "b\n"
				}
				var path, upper, id string
				t.Run("use", func(t *testing.T) {
					v := New(t, src, Driver(driver))
					path, upper, id = v.Path, v.Upper(), v.ID()
					if v.Driver != driver {
						t.Errorf("Driver = %q, want %q", v.Driver, driver)
					}
					if (id == "") != (kind == "dirs") {
						t.Errorf("ID() = %q for a %s source", id, kind)
					}
					if !isMounted(t, v.Path) {
						t.Fatalf("%s is not a mount point", v.Path)
					}
					for name, content := range want {
						if b, err := os.ReadFile(filepath.Join(v.Path, name)); err != nil || string(b) != content {
							t.Errorf("%s: %q %v, want %q", name, b, err, content)
						}
					}
					if err := os.WriteFile(filepath.Join(v.Path, "added"), []byte("new\n"), 0o644); err != nil {
						t.Fatal(err)
					}
					if b, err := os.ReadFile(filepath.Join(v.Upper(), "added")); err != nil || string(b) != "new\n" {
						t.Errorf("the write did not land in the upper: %q %v", b, err)
					}
					list, err := v.Diff(context.Background())
					if err != nil {
						t.Fatal(err)
					}
					var lines []string
					for _, c := range list {
						lines = append(lines, c.String())
					}
					if !slices.Contains(lines, "A /added") {
						t.Errorf("Diff = %q, want A /added", lines)
					}
				})
				gone(t, store, path, upper, id)
			})
		}
	}
}

// Auto takes the kernel where its trial mount passes (real root) and the
// union otherwise (the rootless pass), and says why.
func TestAutoDriver(t *testing.T) {
	needDriver(t, Fuse)
	t.Setenv(DriverEnv, "")
	lower := t.TempDir()
	v := New(t, Dirs(lower))
	want := Fuse
	if overlay.Supported(overlay.ProbeOptions{Dir: t.TempDir(), Options: overlay.ViewOptions(nil, "u", "w", overlay.InUserNamespace() || !graph.Privileged())}).OK {
		want = Kernel
	}
	if v.Driver != want || v.Why == "" {
		t.Errorf("auto chose %q (%s), want %q", v.Driver, v.Why, want)
	}
	if graph.Privileged() && want != Kernel {
		t.Errorf("real root, yet the kernel probe failed")
	}
	// The environment forces a driver where the test does not.
	t.Setenv(DriverEnv, Fuse)
	if v := New(t, Dirs(lower)); v.Driver != Fuse || v.Why != "forced" {
		t.Errorf("%s=%s gave %q (%s)", DriverEnv, Fuse, v.Driver, v.Why)
	}
}

// A view still in use when the test ends (an open file) is detached lazily
// and removed all the same.
func TestCleanupOfABusyView(t *testing.T) {
	for _, driver := range []string{Kernel, Fuse} {
		t.Run(driver, func(t *testing.T) {
			needDriver(t, driver)
			var f *os.File
			var path, upper string
			t.Run("use", func(t *testing.T) {
				v := New(t, Dirs(t.TempDir()), Driver(driver))
				path, upper = v.Path, v.Upper()
				var err error
				if f, err = os.Create(filepath.Join(v.Path, "held-open")); err != nil {
					t.Fatal(err)
				}
			})
			defer f.Close()
			gone(t, nil, path, upper, "")
		})
	}
}

// fakeTB records what New reports instead of failing the test running it,
// and runs the cleanups when told, as the testing package does at the end
// of a test that failed.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	failures []string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	runtime.Goexit()
}

// run runs a test body in its own goroutine, as the testing package does,
// and then the cleanups, last registered first.
func (f *fakeTB) run(body func(tb testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		body(f)
	}()
	<-done
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// Whatever way a test fails, nothing of its view is left behind.
func TestCleanupWhenTheTestFails(t *testing.T) {
	needDriver(t, Fuse)
	tests := []struct {
		name     string
		body     func(tb testing.TB, s *graph.Store, v **View)
		failures int
	}{
		{"fails after the view is mounted", func(tb testing.TB, s *graph.Store, v **View) {
			*v = New(tb, Image(s, "demo:1"), Driver(Fuse))
			if err := os.WriteFile(filepath.Join((*v).Path, "x"), nil, 0o644); err != nil {
				tb.Fatalf("%v", err)
			}
			tb.Errorf("the test's own failure")
		}, 1},
		{"stops with Fatal while the view is mounted", func(tb testing.TB, s *graph.Store, v **View) {
			*v = New(tb, Image(s, "demo:1"), Driver(Fuse))
			tb.Fatalf("the test's own fatal failure")
		}, 1},
		{"New fails: no such image", func(tb testing.TB, s *graph.Store, v **View) {
			*v = &View{}
			New(tb, Image(s, "nope:1"), Driver(Fuse))
		}, 1},
		{"New fails: bad driver", func(tb testing.TB, s *graph.Store, v **View) {
			*v = &View{}
			New(tb, Image(s, "demo:1"), Driver("ramfs"))
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := sampleStore(t)
			before, _ := filepath.Glob(filepath.Join(os.TempDir(), "viewtest-*"))
			var v *View
			f := &fakeTB{TB: t}
			f.run(func(tb testing.TB) { tt.body(tb, s, &v) })
			if len(f.failures) != tt.failures {
				t.Errorf("failures %q, want %d", f.failures, tt.failures)
			}
			if v.Path != "" {
				gone(t, s, v.Path, v.Upper(), v.ID())
			}
			if views, _ := s.Views(); len(views) != 0 {
				t.Errorf("store views left: %d", len(views))
			}
			after, _ := filepath.Glob(filepath.Join(os.TempDir(), "viewtest-*"))
			for _, p := range after {
				if !slices.Contains(before, p) {
					t.Errorf("temporary dir %s left behind", p)
				}
			}
		})
	}
}

// Commit keeps the view mounted at its path, now on the committed layer
// with an empty upper, and keeps a lower hardlink group written through one
// name whole under either driver.
func TestCommit(t *testing.T) {
	for _, driver := range []string{Kernel, Fuse} {
		t.Run(driver, func(t *testing.T) {
			needDriver(t, driver)
			s, img := linksStore(t)
			v := New(t, Image(s, "demo:1"), Driver(driver))
			f, err := os.OpenFile(filepath.Join(v.Path, "data/a"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString("patched\n"); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := os.WriteFile(filepath.Join(v.Path, "added"), []byte("new\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			path := v.Path
			layer, err := v.Commit(context.Background(), graph.CommitOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if layer.Parent != img.Top() {
				t.Errorf("committed layer's parent %s, want the image's top %s", layer.Parent, img.Top())
			}
			if v.Path != path || !isMounted(t, v.Path) {
				t.Fatalf("after Commit the view is not mounted at %s", path)
			}
			if ents, err := os.ReadDir(v.Upper()); err != nil || len(ents) != 0 {
				t.Errorf("upper after commit holds %d entries (%v), want none", len(ents), err)
			}
			if b, err := os.ReadFile(filepath.Join(v.Path, "added")); err != nil || string(b) != "new\n" {
				t.Errorf("committed file: %q %v", b, err)
			}
			var a, b unix.Stat_t
			if err := unix.Lstat(filepath.Join(v.Path, "data/a"), &a); err != nil {
				t.Fatal(err)
			}
			if err := unix.Lstat(filepath.Join(v.Path, "data/b"), &b); err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(filepath.Join(v.Path, "data/b"))
			if a.Ino != b.Ino || a.Nlink != 2 || string(data) != "data\npatched\n" {
				t.Errorf("hardlink group after commit: ino %d/%d nlink %d, data/b holds %q", a.Ino, b.Ino, a.Nlink, data)
			}
		})
	}
	t.Run("dirs cannot be committed", func(t *testing.T) {
		needDriver(t, Fuse)
		v := New(t, Dirs(t.TempDir()), Driver(Fuse))
		if _, err := v.Commit(context.Background(), graph.CommitOptions{}); err == nil {
			t.Error("Commit of a Dirs view succeeded")
		}
	})
}
