package fusefs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

func TestParseOvlNlink(t *testing.T) {
	tests := []struct {
		in    string
		base  byte
		delta int
		ok    bool
	}{
		{"U+0", 'U', 0, true},
		{"U+1", 'U', 1, true},
		{"U-2", 'U', -2, true},
		{"L+3", 'L', 3, true},
		{"U+1\x00", 'U', 1, true},
		{"X+1", 0, 0, false},
		{"U", 0, 0, false},
		{"U+x", 0, 0, false},
		{"", 0, 0, false},
	}
	for _, tt := range tests {
		base, delta, ok := parseOvlNlink(tt.in)
		if base != tt.base || delta != tt.delta || ok != tt.ok {
			t.Errorf("parseOvlNlink(%q) = %c, %d, %v; want %c, %d, %v", tt.in, base, delta, ok, tt.base, tt.delta, tt.ok)
		}
	}
}

func TestDecodeOvlHandle(t *testing.T) {
	// What Linux 6.18 wrote for an ext4 file: version 0, magic 0xfb, 29
	// bytes, flags 0, type 1 (FILEID_INO32_GEN), null uuid, ino+gen.
	good := "00fb1d00010000000000000000000000000000000013c00b00b0537bbf"
	tests := []struct {
		name, in string
		typ      int32
		fid      string
		ok       bool
	}{
		{"kernel-written", good, 1, "13c00b00b0537bbf", true},
		{"not hex", "#1f", 0, "", false},
		{"bad magic", "00fa" + good[4:], 0, "", false},
		{"length mismatch", "00fb1e" + good[6:], 0, "", false},
		{"no fid", "00fb15000100000000000000000000000000000000", 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ, fid, err := decodeOvlHandle(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if tt.ok && (typ != tt.typ || hexOf(fid) != tt.fid) {
				t.Errorf("got type %d fid %s, want %d %s", typ, hexOf(fid), tt.typ, tt.fid)
			}
		})
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	var s strings.Builder
	for _, c := range b {
		s.WriteByte(digits[c>>4])
		s.WriteByte(digits[c&15])
	}
	return s.String()
}

// kernelIndexUpper lets kernel overlayfs (index=on, redirect_dir=on) write
// an upper over a lower that holds two hardlink groups: it appends to one
// name of the group {a, b, dir/c}, renames the directory ren (holding the
// group {ren/in, ren/in2}) to ren2 and appends through ren2/in.
func kernelIndexUpper(t *testing.T) (lowers []string, upper, work string) {
	t.Helper()
	testutil.NeedRootOnly(t, "kernel overlayfs with index=on")
	lowers, upper, work = layerDirs(t, 2)
	l := lowers[0]
	mustWrite(t, filepath.Join(l, "a"), "data\n")
	mustWrite(t, filepath.Join(l, "ren", "in"), "r\n")
	mustMkdir(t, filepath.Join(l, "dir"))
	for _, ln := range [][2]string{{"a", "b"}, {"a", "dir/c"}, {"ren/in", "ren/in2"}} {
		if err := os.Link(filepath.Join(l, ln[0]), filepath.Join(l, ln[1])); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, filepath.Join(lowers[1], "base"), "base\n")
	mnt, unmount := kernelIndexMountT(t, lowers, upper, work)
	appendTo(t, filepath.Join(mnt, "a"), "new\n")
	if err := os.Rename(filepath.Join(mnt, "ren"), filepath.Join(mnt, "ren2")); err != nil {
		t.Fatal(err)
	}
	appendTo(t, filepath.Join(mnt, "ren2", "in"), "more\n")
	unmount()
	// The premise: the kernel left the other names to its index.
	if _, err := os.Lstat(filepath.Join(upper, "b")); err == nil {
		t.Fatal("the kernel linked b into the upper: nothing left to adopt")
	}
	if ents, _ := os.ReadDir(filepath.Join(work, "index")); len(ents) != 2 {
		t.Fatalf("kernel index holds %d entries, want 2", len(ents))
	}
	return lowers, upper, work
}

func appendTo(t *testing.T, p, data string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// group checks that names show content and one inode with nlink names.
func checkGroup(t *testing.T, root, content string, names ...string) {
	t.Helper()
	var first unix.Stat_t
	for i, n := range names {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, n), &st); err != nil {
			t.Errorf("%s: %v", n, err)
			continue
		}
		if b, _ := os.ReadFile(filepath.Join(root, n)); string(b) != content {
			t.Errorf("%s holds %q, want %q", n, b, content)
		}
		if int(st.Nlink) != len(names) {
			t.Errorf("%s: st_nlink %d, want %d", n, st.Nlink, len(names))
		}
		if i == 0 {
			first = st
		} else if st.Ino != first.Ino {
			t.Errorf("%s: st_ino %d, %s has %d", n, st.Ino, names[0], first.Ino)
		}
	}
}

func TestUnionReadsKernelIndex(t *testing.T) {
	lowers, upper, work := kernelIndexUpper(t)
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	checkGroup(t, mnt, "data\nnew\n", "a", "b", "dir/c")
	checkGroup(t, mnt, "r\nmore\n", "ren2/in", "ren2/in2")
	var lst, st unix.Stat_t
	if err := unix.Lstat(filepath.Join(lowers[0], "a"), &lst); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(mnt, "b"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Ino != lst.Ino {
		t.Errorf("st_ino %d, want the lower's %d as the kernel shows it", st.Ino, lst.Ino)
	}
	// A change through the union reaches every name.
	appendTo(t, filepath.Join(mnt, "dir/c"), "union\n")
	checkGroup(t, mnt, "data\nnew\nunion\n", "a", "b", "dir/c")
}

func TestAdoptKernelIndexLinksUpEveryName(t *testing.T) {
	lowers, upper, work := kernelIndexUpper(t)
	if err := AdoptKernelIndex(Options{Lowers: lowers, Upper: upper, Work: work}); err != nil {
		t.Fatal(err)
	}
	// The upper alone now holds every name, as a commit reads it.
	for _, n := range []string{"a", "b", "dir/c"} {
		if b, err := os.ReadFile(filepath.Join(upper, n)); err != nil || string(b) != "data\nnew\n" {
			t.Errorf("upper %s: %q %v", n, b, err)
		}
	}
	for _, n := range []string{"ren2/in", "ren2/in2"} {
		if b, err := os.ReadFile(filepath.Join(upper, n)); err != nil || string(b) != "r\nmore\n" {
			t.Errorf("upper %s: %q %v", n, b, err)
		}
	}
	// Twice is once.
	if err := AdoptKernelIndex(Options{Lowers: lowers, Upper: upper, Work: work}); err != nil {
		t.Fatal(err)
	}
	// The kernel still reads the upper right: same data, same inode, and
	// its link count corrected for the links the union added.
	mnt := t.TempDir()
	data := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work + ",redirect_dir=on,index=on,nfs_export=off"
	if err := unix.Mount("overlay", mnt, "overlay", 0, data); err != nil {
		t.Fatalf("kernel remount: %v", err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	checkGroup(t, mnt, "data\nnew\n", "a", "b", "dir/c")
	checkGroup(t, mnt, "r\nmore\n", "ren2/in", "ren2/in2")
}

func TestKernelIndexNamesWritesNothing(t *testing.T) {
	lowers, upper, work := kernelIndexUpper(t)
	before := treeState(t, upper, work)
	names, err := KernelIndexNames(Options{Lowers: lowers, Upper: upper, Work: work})
	if err != nil {
		t.Fatal(err)
	}
	// b and dir/c show the kernel's copy of a, ren2/in2 (under the
	// directory the kernel renamed) that of ren2/in; a and ren2/in are
	// in the upper already.
	want := map[string]string{"/b": "a", "/dir/c": "a", "/ren2/in2": "ren2/in"}
	if len(names) != len(want) {
		t.Errorf("names %v, want those of %v", names, want)
	}
	for p, upperName := range want {
		var est, ust unix.Stat_t
		entry, ok := names[p]
		if !ok {
			t.Errorf("%s is not listed", p)
			continue
		}
		if err := unix.Lstat(entry, &est); err != nil || filepath.Dir(entry) != filepath.Join(work, "index") {
			t.Errorf("%s: entry %s: %v", p, entry, err)
			continue
		}
		if err := unix.Lstat(filepath.Join(upper, upperName), &ust); err != nil || ust.Ino != est.Ino {
			t.Errorf("%s: entry %s is not the upper's %s", p, entry, upperName)
		}
	}
	after := treeState(t, upper, work)
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed: %s, then %s", p, v, after[p])
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s appeared", p)
		}
	}
}

// treeState describes every object under the roots: type, inode, link
// count, size, ctime (which any change of data, links or xattrs moves).
func treeState(t *testing.T, roots ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, root := range roots {
		err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			out[p] = fmt.Sprintf("%o %d %d %d %d.%d", st.Mode, st.Ino, st.Nlink, st.Size, st.Ctim.Sec, st.Ctim.Nsec)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestKernelReadsUnionIndex: a lower hardlink group with names in two
// layers (a layer that hardlinks its parent's files) is one the union
// copies up through its own index: it links the names of the copy's layer
// and serves the others (only/w) from the index. It also writes the entry
// in the kernel's format (Work/index/<file handle>, overlay.origin,
// overlay.nlink), so kernel overlayfs with index=on mounting the upper
// next shows the new data under every name, as one inode with the st_ino
// and st_nlink the union showed; the change comes through a directory the
// union renamed.
func TestKernelReadsUnionIndex(t *testing.T) {
	testutil.NeedRootOnly(t, "kernel overlayfs with index=on")
	needFuse(t)
	lowers, upper, work := layerDirs(t, 2)
	mustWrite(t, filepath.Join(lowers[1], "dir/x"), "old\n")
	mustMkdir(t, filepath.Join(lowers[1], "only"))
	mustMkdir(t, filepath.Join(lowers[0], "dir"))
	for _, p := range []string{filepath.Join(lowers[1], "only/w"), filepath.Join(lowers[0], "dir/x")} {
		if err := os.Link(filepath.Join(lowers[1], "dir/x"), p); err != nil {
			t.Fatal(err)
		}
	}
	mnt, unmount := unionForUnmountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	if err := os.Rename(filepath.Join(mnt, "dir"), filepath.Join(mnt, "dir2")); err != nil {
		t.Fatal(err)
	}
	appendTo(t, filepath.Join(mnt, "dir2/x"), "new\n")
	names := []string{"dir2/x", "only/w"}
	union := sameObject(t, "union", mnt, "old\nnew\n", names...)
	unmount()
	if _, err := os.Lstat(filepath.Join(upper, "only/w")); err == nil {
		t.Fatal("the union linked only/w into the upper: the kernel's index has nothing to serve")
	}

	kmnt, unmountKernel := kernelIndexMountT(t, lowers, upper, work)
	kernel := sameObject(t, "kernel", kmnt, "old\nnew\n", names...)
	if kernel != union {
		t.Errorf("kernel shows st_ino %d, st_nlink %d; the union showed %d, %d", kernel.Ino, kernel.Nlink, union.Ino, union.Nlink)
	}
	// A change through the kernel reaches every name too, and the union
	// reads it afterwards.
	appendTo(t, filepath.Join(kmnt, "only/w"), "kernel\n")
	sameObject(t, "kernel", kmnt, "old\nnew\nkernel\n", names...)
	unmountKernel()
	again := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	if got := sameObject(t, "union again", again, "old\nnew\nkernel\n", names...); got != union {
		t.Errorf("union again shows st_ino %d, st_nlink %d; it showed %d, %d", got.Ino, got.Nlink, union.Ino, union.Nlink)
	}
}

type inoNlink struct{ Ino, Nlink uint64 }

// sameObject checks that names under root show content and one inode,
// and returns its st_ino and st_nlink.
func sameObject(t *testing.T, what, root, content string, names ...string) inoNlink {
	t.Helper()
	var first inoNlink
	for i, n := range names {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, n), &st); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if b, _ := os.ReadFile(filepath.Join(root, n)); string(b) != content {
			t.Errorf("%s: %s holds %q, want %q", what, n, b, content)
		}
		got := inoNlink{st.Ino, uint64(st.Nlink)}
		if i == 0 {
			first = got
		} else if got != first {
			t.Errorf("%s: %s has st_ino %d st_nlink %d, %s %d %d", what, n, got.Ino, got.Nlink, names[0], first.Ino, first.Nlink)
		}
	}
	return first
}

// TestUnionShowsKernelOriginIno: a file kernel overlayfs copied up keeps
// the lower's st_ino under the kernel (its overlay.origin names the lower
// object); the union shows the same number, in stat and in readdir.
func TestUnionShowsKernelOriginIno(t *testing.T) {
	testutil.NeedRootOnly(t, "kernel overlayfs")
	needFuse(t)
	lowers, upper, work := layerDirs(t, 1)
	mustWrite(t, filepath.Join(lowers[0], "d/f"), "old\n")
	mustWrite(t, filepath.Join(lowers[0], "d/g"), "g\n")
	var lst unix.Stat_t
	if err := unix.Lstat(filepath.Join(lowers[0], "d/f"), &lst); err != nil {
		t.Fatal(err)
	}
	kmnt, unmount := kernelIndexMountT(t, lowers, upper, work)
	appendTo(t, filepath.Join(kmnt, "d/f"), "new\n")
	var kst unix.Stat_t
	if err := unix.Lstat(filepath.Join(kmnt, "d/f"), &kst); err != nil {
		t.Fatal(err)
	}
	unmount()
	var ust unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "d/f"), &ust); err != nil || ust.Ino == lst.Ino {
		t.Fatalf("premise: the kernel's copy is a new inode: %v", err)
	}
	if kst.Ino != lst.Ino {
		t.Fatalf("premise: the kernel shows st_ino %d, not the lower's %d", kst.Ino, lst.Ino)
	}

	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "d/f"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Ino != kst.Ino {
		t.Errorf("union st_ino %d, the kernel showed %d", st.Ino, kst.Ino)
	}
	ents, err := os.ReadDir(filepath.Join(mnt, "d"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "f" {
			continue
		}
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if ino := info.Sys().(*syscall.Stat_t).Ino; ino != kst.Ino {
			t.Errorf("union readdir+stat of f: st_ino %d, want %d", ino, kst.Ino)
		}
	}
	if dino := direntIno(t, filepath.Join(mnt, "d"), "f"); dino != kst.Ino {
		t.Errorf("union readdir d_ino of f %d, want %d", dino, kst.Ino)
	}
}

// direntIno reads dir with getdents and returns name's d_ino.
func direntIno(t *testing.T, dir, name string) uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("%s not listed in %s", name, dir)
		}
		for b := buf[:n]; len(b) > 0; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			ino := binary.NativeEndian.Uint64(b[0:8])
			nm := b[19:reclen]
			if i := bytes.IndexByte(nm, 0); i >= 0 {
				nm = nm[:i]
			}
			if string(nm) == name {
				return ino
			}
			b = b[reclen:]
		}
	}
}
