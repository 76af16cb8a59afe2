package fusefs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// getdents reads directory fd with a small buffer, so a directory of a
// few thousand names takes many calls, and returns the names it got and
// the file offset after the last call.
func getdents(t *testing.T, fd int, calls int) ([]string, int64) {
	t.Helper()
	var names []string
	buf := make([]byte, 2048)
	for c := 0; calls < 0 || c < calls; c++ {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatalf("getdents: %v", err)
		}
		if n == 0 {
			break
		}
		_, _, got := unix.ParseDirent(buf[:n], -1, nil)
		names = append(names, got...)
	}
	off, err := unix.Seek(fd, 0, unix.SEEK_CUR)
	if err != nil {
		t.Fatalf("telldir: %v", err)
	}
	return names, off
}

// TestReaddirUnderChange: a directory read in small pieces while names
// are added and removed through the view returns every name that stayed
// exactly once, and a position telldir gave still leads to the same
// names after more changes (the cookies of dir.go).
func TestReaddirUnderChange(t *testing.T) {
	lowers, upper, work := layerDirs(t, 2)
	var all []string
	for i := 0; i < 1200; i++ {
		name := fmt.Sprintf("f%04d", i)
		mustWrite(t, filepath.Join(lowers[i%2], "big", name), "x")
		all = append(all, name)
	}
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	dir := filepath.Join(mnt, "big")
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	first, pos := getdents(t, fd, 5)
	if len(first) == 0 || len(first) >= len(all) {
		t.Fatalf("the first calls read %d names of %d: the test needs a partial read", len(first), len(all))
	}
	// Remove names already read and names not read yet, add new ones.
	removed := map[string]bool{}
	for i := 0; i < len(all); i += 7 {
		if err := os.Remove(filepath.Join(dir, all[i])); err != nil {
			t.Fatal(err)
		}
		removed[all[i]] = true
	}
	for i := 0; i < 100; i++ {
		mustWrite(t, filepath.Join(dir, fmt.Sprintf("new%03d", i)), "n")
	}
	rest, _ := getdents(t, fd, -1)
	seen := map[string]int{}
	for _, n := range append(first, rest...) {
		seen[n]++
		if seen[n] > 1 {
			t.Errorf("%s returned twice", n)
		}
	}
	for _, n := range all {
		if !removed[n] && seen[n] != 1 {
			t.Errorf("%s, there throughout, returned %d times", n, seen[n])
		}
	}
	for _, n := range rest {
		if removed[n] {
			t.Errorf("%s returned after it was removed", n)
		}
	}

	// seekdir back to the position after the first calls: the same
	// names follow, but for those removed since.
	if _, err := unix.Seek(fd, pos, unix.SEEK_SET); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "new007")); err != nil {
		t.Fatal(err)
	}
	again, _ := getdents(t, fd, -1)
	want := slices.DeleteFunc(slices.Clone(rest), func(n string) bool { return n == "new007" })
	if !slices.Equal(again, want) {
		t.Errorf("after seekdir: %d names, want the %d read from there before (less new007)", len(again), len(want))
	}
}

// TestReaddirPlusPolicy: listing a directory of up to union.plusMax names
// gives the kernel every entry's node (no LOOKUP follows for a stat); a
// bigger one gives names only.
func TestReaddirPlusPolicy(t *testing.T) {
	lowers, upper, work := layerDirs(t, 1)
	for _, d := range []struct {
		name string
		n    int
	}{{"small", 200}, {"huge", 201}} {
		if err := genTree(filepath.Join(lowers[0], d.name), "f", 1, d.n); err != nil {
			t.Fatal(err)
		}
	}
	// A limit of 200: small dirs are quick to make.
	srv, mnt := mountServerT(t, Options{Lowers: lowers, Upper: upper, Work: work, plusMax: 200})
	for _, c := range []struct {
		dir      string
		names    int
		withAttr bool
	}{{"small/d0", 200, true}, {"huge/d0", 201, false}} {
		if _, err := os.Stat(filepath.Join(mnt, c.dir)); err != nil {
			t.Fatal(err)
		}
		before := srv.u.tree.count()
		ents, err := os.ReadDir(filepath.Join(mnt, c.dir))
		if err != nil || len(ents) != c.names {
			t.Fatalf("%s: %d names (%v), want %d", c.dir, len(ents), err, c.names)
		}
		made := srv.u.tree.count() - before
		if c.withAttr && made < c.names {
			t.Errorf("%s: the listing made %d nodes, want one per name (%d)", c.dir, made, c.names)
		}
		if !c.withAttr && made > 0 {
			t.Errorf("%s: the listing made %d nodes, want none", c.dir, made)
		}
	}
}

func TestCookies(t *testing.T) {
	seen := map[uint64]string{}
	for i := 0; i < 100000; i++ {
		name := fmt.Sprint("name", i)
		c := cookie(name)
		if c < 3 || c >= 1<<63 {
			t.Fatalf("cookie(%q) = %#x, out of range", name, c)
		}
		if o, ok := seen[c]; ok {
			t.Fatalf("%q and %q share cookie %#x", name, o, c)
		}
		seen[c] = name
	}
	if cookie(".") != 1 || cookie("..") != 2 {
		t.Error(". and .. must come first")
	}
	cs := []uint64{5, 9, 9, 9, 10, 20}
	spreadCookies(cs)
	if !slices.Equal(cs, []uint64{5, 9, 10, 11, 12, 20}) {
		t.Errorf("spread cookies %v", cs)
	}
	var l listing
	for _, n := range []string{"c", "a", "b"} {
		l.add(n, unix.S_IFREG, 1)
	}
	l.sortByCookie()
	if !slices.IsSorted(l.cookies) || l.len() != 3 {
		t.Errorf("cookies %v, want three in order", l.cookies)
	}
	for i := 0; i < l.len(); i++ {
		if e := l.entry(i); e.Off != cookie(e.Name) || l.after(e.Off-1) != i {
			t.Errorf("entry %d (%s): offset %d, cookie %d; after(offset-1) = %d", i, e.Name, e.Off, cookie(e.Name), l.after(e.Off-1))
		}
	}
}

// TestReaddirAfterReclaim: when the kernel's copy of a listing is gone
// (it lives in page cache, which reclaim takes back; here it is dropped
// with POSIX_FADV_DONTNEED), reading the directory again is answered from
// the union's own listing, not by reading every layer again. A name slipped
// into a lower behind the union's back shows which: lowers never change
// under a mount, so the union may serve what it read. A change made
// through the view still shows at once.
func TestReaddirAfterReclaim(t *testing.T) {
	lowers, upper, work := layerDirs(t, 2)
	for i, l := range lowers {
		if err := genTree(filepath.Join(l, "big"), fmt.Sprintf("l%d-", i), 1, 300); err != nil {
			t.Fatal(err)
		}
	}
	_, mnt := mountServerT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	dir := filepath.Join(mnt, "big", "d0")
	names := func() []string {
		t.Helper()
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out
	}
	dropKernelCopy := func() {
		t.Helper()
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatalf("fadvise %s: %v", dir, err)
		}
	}

	first := names()
	if len(first) != 600 {
		t.Fatalf("%d names, want 600", len(first))
	}
	if err := os.WriteFile(filepath.Join(lowers[1], "big", "d0", "behind-the-back"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dropKernelCopy()
	if again := names(); !slices.Equal(again, first) {
		t.Errorf("read again after the kernel dropped its copy: %d names, want the %d read before (the layers were read again)", len(again), len(first))
	}

	if err := os.WriteFile(filepath.Join(dir, "through-the-view"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dropKernelCopy()
	if after := names(); !slices.Contains(after, "through-the-view") || len(after) < len(first)+1 {
		t.Errorf("after a create through the view: %d names, through-the-view shown: %v", len(after), slices.Contains(after, "through-the-view"))
	}
}
