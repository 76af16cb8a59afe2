package changes

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/fusefs"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/kernel/overlay"
)

// TestKernelWrittenUpper lets kernel overlayfs (redirect_dir=on,
// index=on) write an upper: lower directories renamed across and within a
// parent, a renamed directory's old name made again, files added,
// removed, chmod'ed and hardlinked. The view seen through that mount must
// come back from lowers + the produced layer.
func TestKernelWrittenUpper(t *testing.T) { testWrittenUpper(t, kernelView) }

// TestUnionWrittenUpper is the same with the layerfs union writing the
// upper (its redirects are absolute, its whiteouts 0/0 devices).
func TestUnionWrittenUpper(t *testing.T) { testWrittenUpper(t, unionView) }

func testWrittenUpper(t *testing.T, v view) {
	testutil.NeedRoot(t)
	lowers, upper := makeStack(t, [][]op{
		{file("a/dir/f1", "1"), file("a/dir/f2", "2"), file("a/dir/sub/s", "s"), file("a/x/y", "y"), file("keep", "k")},
		{file("a/dir/low", "from the bottom layer")},
	}, nil)
	work := filepath.Join(filepath.Dir(upper), "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	mnt, unmount := mountWritable(t, v, lowers, upper, work)
	in := func(p string) string { return filepath.Join(mnt, p) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(in("b"), 0o755))
	must(os.Rename(in("a/dir"), in("b/moved")))
	must(os.Rename(in("a/x"), in("a/x2")))
	must(os.WriteFile(in("b/moved/new"), []byte("new"), 0o644))
	must(os.Remove(in("b/moved/f1")))
	must(os.Chmod(in("keep"), 0o600))
	must(os.Mkdir(in("a/dir"), 0o700))
	must(os.WriteFile(in("a/dir/again"), []byte("again"), 0o644))
	must(os.WriteFile(in("h1"), []byte("linked"), 0o644))
	must(os.Link(in("h1"), in("h2")))
	want := snapshot(t, mnt)
	unmount()

	if v, ok := overlayXattr(filepath.Join(upper, "b/moved"), "redirect"); !ok || v != "/a/dir" {
		t.Fatalf("the driver wrote redirect %q (%v) on b/moved, want /a/dir", v, ok)
	}
	if v, ok := overlayXattr(filepath.Join(upper, "a/x2"), "redirect"); !ok || (v != "x" && v != "/a/x") {
		t.Fatalf("the driver wrote redirect %q (%v) on a/x2, want x or /a/x", v, ok)
	}

	got, err := Diff(context.Background(), upper, lowers)
	if err != nil {
		t.Fatalf("Diff: %v", err)
	}
	var lines []string
	for _, c := range got {
		lines = append(lines, c.String())
	}
	wantDiff := []string{
		"C /a", "C /a/dir", "A /a/dir/again", "D /a/dir/f1", "D /a/dir/f2", "D /a/dir/low", "D /a/dir/sub",
		"D /a/x", "A /a/x2", "A /a/x2/y",
		"A /b", "A /b/moved", "A /b/moved/f2", "A /b/moved/low", "A /b/moved/new", "A /b/moved/sub", "A /b/moved/sub/s",
		"A /h1", "A /h2", "C /keep",
	}
	if !slices.Equal(lines, wantDiff) {
		t.Errorf("Diff:\n got  %q\n want %q", lines, wantDiff)
	}

	data := writeLayer(t, upper, lowers, WriteOptions{})
	applied := applyLayer(t, data)
	compareSnapshots(t, want, snapshot(t, mountStack(t, kernelView, "", append([]string{applied}, lowers...))))
}

// mountWritable mounts lowers+upper writable with the kernel
// (redirect_dir=on, index=on) or the union; the returned func unmounts
// (also run by t.Cleanup).
func mountWritable(t *testing.T, v view, lowers []string, upper, work string) (string, func()) {
	mnt := t.TempDir()
	var unmountFn func() error
	if v == kernelView {
		res, err := overlay.Mount(mnt, overlay.Options{Lowers: lowers, Upper: upper, Work: work, RedirectDir: true, Index: true})
		if err != nil {
			t.Fatalf("kernel overlay: %v", err)
		}
		for _, d := range res.Dropped {
			if d.Feature == "redirect_dir=on" {
				overlay.Unmount(mnt, true)
				testutil.Need(t, false, "the kernel has no redirect_dir: "+d.Reason)
			}
		}
		unmountFn = func() error { return overlay.Unmount(mnt, false) }
	} else {
		_, err := os.Stat("/dev/fuse")
		testutil.Need(t, err == nil, "needs /dev/fuse")
		srv, err := fusefs.Mount(mnt, fusefs.Options{Lowers: lowers, Upper: upper, Work: work, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatalf("union mount: %v", err)
		}
		unmountFn = srv.Unmount
	}
	mounted := true
	unmount := func() {
		if mounted {
			mounted = false
			if err := unmountFn(); err != nil {
				t.Errorf("unmount: %v", err)
				unix.Unmount(mnt, unix.MNT_DETACH)
			}
		}
	}
	t.Cleanup(unmount)
	return mnt, unmount
}

// TestKernelMetacopy: with metacopy=on a chmod copies only metadata up;
// the layer must still carry the file's data, read from the lower.
func TestKernelMetacopy(t *testing.T) {
	testutil.NeedRoot(t)
	lowers, upper := makeStack(t, [][]op{{file("d/data", "lower content"), file("d/other", "o")}}, nil)
	work := filepath.Join(filepath.Dir(upper), "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	res, err := overlay.Mount(mnt, overlay.Options{Lowers: lowers, Upper: upper, Work: work, RedirectDir: true, Index: true, Metacopy: true})
	if err != nil {
		t.Fatalf("kernel overlay: %v", err)
	}
	mounted := true
	unmount := func() {
		if mounted {
			mounted = false
			if err := overlay.Unmount(mnt, false); err != nil {
				t.Errorf("unmount: %v", err)
				overlay.Unmount(mnt, true)
			}
		}
	}
	t.Cleanup(unmount)
	for _, d := range res.Dropped {
		testutil.Need(t, d.Feature != "metacopy=on", "the kernel has no metacopy: "+d.Reason)
	}
	if err := os.Chmod(filepath.Join(mnt, "d/data"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := snapshot(t, mnt)
	unmount()
	if !hasOverlayXattr(filepath.Join(upper, "d/data"), "metacopy") {
		t.Fatal("the kernel did not write a metacopy upper file")
	}
	got, err := Diff(context.Background(), upper, lowers)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].String() != "C /d" || got[1].String() != "C /d/data" {
		t.Errorf("Diff: %v", got)
	}
	applied := applyLayer(t, writeLayer(t, upper, lowers, WriteOptions{}))
	if b, err := os.ReadFile(filepath.Join(applied, "d/data")); err != nil || string(b) != "lower content" {
		t.Errorf("the layer holds %q (%v), want the lower's data", b, err)
	}
	compareSnapshots(t, want, snapshot(t, mountStack(t, kernelView, "", append([]string{applied}, lowers...))))
}

// TestNoSymlinkFollowing: a redirect naming a path through a lower
// symlink, and upper symlinks over lower directories, never lead the walk
// outside the layers.
func TestNoSymlinkFollowing(t *testing.T) {
	testutil.NeedRoot(t)
	outside := t.TempDir()
	build(t, outside, []op{file("sub/secret", "s")})
	lowers, upper := makeStack(t, [][]op{{symlink("lnk", outside), dir("d/inner")}},
		[]op{redirect("moved", "/lnk/sub", trusted), symlink("d", outside), redirect("m2", "lnk", trusted)})
	got, err := Diff(context.Background(), upper, lowers)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, c := range got {
		lines = append(lines, c.String())
	}
	if want := []string{"C /d", "A /m2", "A /moved"}; !slices.Equal(lines, want) {
		t.Errorf("Diff: got %q, want %q", lines, want)
	}
	for _, e := range readTar(t, writeLayer(t, upper, lowers, WriteOptions{})) {
		if filepath.Base(e.hdr.Name) == "secret" || filepath.Base(filepath.Clean(e.hdr.Name)) == "sub" {
			t.Errorf("the layer holds %s from outside the layers", e.hdr.Name)
		}
	}
}

func TestCanceled(t *testing.T) {
	lowers, upper := makeStack(t, [][]op{{file("a", "a")}}, []op{file("b", "b")})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Diff(ctx, upper, lowers); err == nil {
		t.Error("Diff with a canceled context succeeded")
	}
	if err := WriteLayer(ctx, io.Discard, upper, lowers, WriteOptions{}); err == nil {
		t.Error("WriteLayer with a canceled context succeeded")
	}
}
