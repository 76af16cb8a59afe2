package fusefs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/changes"
)

// TestHardlinkGroupUpperAlone: a change through one name of a lower
// hardlink group links every visible name of it in the upper, so kernel
// overlayfs (which does not read the union's index) and a commit (which
// reads only the upper) see the new data under every name.
func TestHardlinkGroupUpperAlone(t *testing.T) {
	needFuse(t)
	lowers, upper, work := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "a"), "old")
	mustMkdir(t, filepath.Join(lowers[0], "d"))
	if err := os.Link(filepath.Join(lowers[0], "a"), filepath.Join(lowers[0], "d/b")); err != nil {
		t.Fatal(err)
	}
	mnt, unmount := unionForUnmountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	if err := os.WriteFile(filepath.Join(mnt, "a"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "d/b"} {
		if b, _ := os.ReadFile(filepath.Join(mnt, p)); string(b) != "new" {
			t.Errorf("union %s reads %q", p, b)
		}
	}
	if a, b := lstat(t, filepath.Join(mnt, "a")), lstat(t, filepath.Join(mnt, "d/b")); a.Ino != b.Ino || a.Nlink != 2 || b.Nlink != 2 {
		t.Errorf("union: ino %d vs %d, nlink %d/%d, want one inode, nlink 2", a.Ino, b.Ino, a.Nlink, b.Nlink)
	}
	unmount()

	// The upper alone holds the group: no link of it elsewhere.
	ua, ub := lstat(t, filepath.Join(upper, "a")), lstat(t, filepath.Join(upper, "d/b"))
	if ua.Ino != ub.Ino || ua.Nlink != 2 {
		t.Errorf("upper: ino %d vs %d, nlink %d, want one inode with 2 links", ua.Ino, ub.Ino, ua.Nlink)
	}

	kmnt, kwork := t.TempDir(), t.TempDir()
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,index=off", lowers[0], upper, kwork)
	if err := unix.Mount("overlay", kmnt, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Fatalf("kernel overlayfs over the union's upper: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(kmnt, unix.MNT_DETACH) })
	if b, _ := os.ReadFile(filepath.Join(kmnt, "d/b")); string(b) != "new" {
		t.Errorf("kernel overlayfs d/b reads %q, want the new data", b)
	}
	if a, b := lstat(t, filepath.Join(kmnt, "a")), lstat(t, filepath.Join(kmnt, "d/b")); a.Ino != b.Ino || b.Nlink != 2 {
		t.Errorf("kernel overlayfs: ino %d vs %d, nlink %d, want one inode, nlink 2", a.Ino, b.Ino, b.Nlink)
	}

	// A commit reads the upper: one regular entry and a hardlink to it.
	var buf bytes.Buffer
	if err := changes.WriteLayer(context.Background(), &buf, upper, lowers, changes.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	entries := map[string]*tar.Header{}
	data := map[string]string{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		entries[h.Name], data[h.Name] = h, string(b)
	}
	a, b := entries["a"], entries["d/b"]
	switch {
	case a == nil || b == nil:
		t.Errorf("layer lacks a or d/b: %v", entries)
	case a.Typeflag == tar.TypeReg && b.Typeflag == tar.TypeLink && b.Linkname == "a" && data["a"] == "new":
	case b.Typeflag == tar.TypeReg && a.Typeflag == tar.TypeLink && a.Linkname == "d/b" && data["d/b"] == "new":
	default:
		t.Errorf("layer: a %c %q %q, d/b %c %q %q; want new data and a hardlink", a.Typeflag, a.Linkname, data["a"], b.Typeflag, b.Linkname, data["d/b"])
	}
}

// TestHardlinkNlink: st_nlink of a lower hardlink group counts the names
// the view shows, from the first stat, after unlink, copy-up, link and a
// remount, never the union's index link.
func TestHardlinkNlink(t *testing.T) {
	type step struct {
		do   func(mnt string) error
		path string
		want uint64
	}
	chmod := func(p string) func(string) error {
		return func(mnt string) error { return os.Chmod(filepath.Join(mnt, p), 0o700) }
	}
	rm := func(p string) func(string) error {
		return func(mnt string) error { return os.Remove(filepath.Join(mnt, p)) }
	}
	link := func(from, to string) func(string) error {
		return func(mnt string) error { return os.Link(filepath.Join(mnt, from), filepath.Join(mnt, to)) }
	}
	for _, tc := range []struct {
		name string
		// the bottom layer holds tool, bin/alias, bin/alias2 as one
		// inode; top whiteouts hide names of it.
		topWhiteouts []string
		steps        []step
	}{
		{name: "first stat", steps: []step{{nil, "tool", 3}}},
		{name: "whited out in a higher layer", topWhiteouts: []string{"bin/alias"}, steps: []step{{nil, "tool", 2}}},
		{name: "unlink then copy-up", steps: []step{
			{nil, "tool", 3}, {rm("bin/alias"), "tool", 2}, {chmod("tool"), "tool", 2}, {rm("bin/alias2"), "tool", 1},
		}},
		{name: "copy-up then unlink", steps: []step{{chmod("bin/alias"), "tool", 3}, {rm("tool"), "bin/alias", 2}}},
		{name: "link", topWhiteouts: []string{"bin/alias2"}, steps: []step{{link("tool", "new"), "bin/alias", 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lowers, upper, work := layerDirs(t, 2)
			mustWrite(t, filepath.Join(lowers[1], "tool"), "x")
			mustMkdir(t, filepath.Join(lowers[1], "bin"))
			for _, n := range []string{"bin/alias", "bin/alias2"} {
				if err := os.Link(filepath.Join(lowers[1], "tool"), filepath.Join(lowers[1], n)); err != nil {
					t.Fatal(err)
				}
			}
			for _, w := range tc.topWhiteouts {
				mustWhiteout(t, filepath.Join(lowers[0], w))
			}
			opts := Options{Lowers: lowers, Upper: upper, Work: work}
			mnt := mountT(t, opts)
			var last step
			for i, s := range tc.steps {
				if s.do != nil {
					if err := s.do(mnt); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
				}
				if got := lstat(t, filepath.Join(mnt, s.path)).Nlink; got != s.want {
					t.Errorf("step %d: nlink of %s = %d, want %d", i, s.path, got, s.want)
				}
				last = s
			}
			// A fresh mount of the same upper counts the same.
			mnt2 := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work, ReadOnly: true})
			if got := lstat(t, filepath.Join(mnt2, last.path)).Nlink; got != last.want {
				t.Errorf("remount: nlink of %s = %d, want %d", last.path, got, last.want)
			}
		})
	}
}
