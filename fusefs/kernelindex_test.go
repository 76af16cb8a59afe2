package fusefs

import (
	"os"
	"path/filepath"
	"strings"
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
	mnt := t.TempDir()
	data := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work + ",redirect_dir=on,index=on,nfs_export=off"
	if err := unix.Mount("overlay", mnt, "overlay", 0, data); err != nil {
		testutil.Need(t, false, "kernel overlayfs with index=on: "+err.Error())
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	appendTo(t, filepath.Join(mnt, "a"), "new\n")
	if err := os.Rename(filepath.Join(mnt, "ren"), filepath.Join(mnt, "ren2")); err != nil {
		t.Fatal(err)
	}
	appendTo(t, filepath.Join(mnt, "ren2", "in"), "more\n")
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
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
