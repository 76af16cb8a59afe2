package apply

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// makeTree builds a tree with every object type, owners, special modes,
// nanosecond times, xattrs, a hardlink group and long names.
func makeTree(t *testing.T, root string, longNames bool) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mk := func(rel string, mode os.FileMode, body string) string {
		p := filepath.Join(root, rel)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, []byte(body), 0o600))
		must(os.Chmod(p, mode))
		return p
	}
	must(os.MkdirAll(filepath.Join(root, "etc/skel"), 0o755))
	mk("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n")
	suid := mk("usr/bin/su", 0o755, strings.Repeat("ELF", 3000))
	must(os.Chown(suid, 0, 0))
	must(unix.Chmod(suid, 0o4755))
	must(os.Link(suid, filepath.Join(root, "usr/bin/su-hard")))
	home := filepath.Join(root, "home/user")
	must(os.MkdirAll(home, 0o700))
	must(os.Chown(home, 1000, 1000))
	mk("home/user/.profile", 0o640, "export X=1\n")
	must(os.Lchown(filepath.Join(root, "home/user/.profile"), 1000, 100))
	must(os.Symlink("../usr/bin/su", filepath.Join(root, "etc/su-link")))
	must(os.Lchown(filepath.Join(root, "etc/su-link"), 12, 34))
	must(unix.Mkfifo(filepath.Join(root, "etc/fifo"), 0o620))
	must(unix.Mknod(filepath.Join(root, "etc/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mknod(filepath.Join(root, "etc/loop"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 9))))
	tmp := filepath.Join(root, "tmp")
	must(os.Mkdir(tmp, 0o755))
	must(unix.Chmod(tmp, 0o1777))
	x := mk("usr/bin/ping", 0o755, "ping")
	must(unix.Setxattr(x, "security.capability", []byte(capNetBindService()), 0))
	must(unix.Setxattr(x, "user.origin", []byte("test"), 0))
	must(unix.Setxattr(filepath.Join(root, "etc"), "user.dirattr", []byte("d"), 0))
	// Over 100 bytes: ustar splits it into prefix and name.
	mk("usr/share/"+strings.Repeat("n", 60)+"/"+strings.Repeat("m", 60)+"/file", 0o644, "longish")
	if longNames {
		mk("usr/share/"+strings.Repeat("n", 120)+"/file", 0o644, "long component")
		mk(strings.Repeat("deep-directory-name/", 14)+strings.Repeat("f", 200), 0o644, "very long")
	}
	// Times last, children before parents, with nanoseconds.
	var paths []string
	must(filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		ts := []unix.Timespec{{Sec: 1_500_000_000 + int64(i), Nsec: int64(i*7919 + 1)}, {Sec: 1_600_000_000 + int64(i), Nsec: int64(i*104729 + 3)}}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// describeTree renders everything an apply must reproduce; hardlinks show
// as the first path of their inode.
func describeTree(t *testing.T, root string, ns bool) map[string]string {
	t.Helper()
	m := map[string]string{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := lstat(t, p)
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d rdev=%d mtime=%d", st.Mode, st.Uid, st.Gid, st.Rdev, st.Mtim.Sec)
		if ns {
			desc += fmt.Sprintf(".%09d", st.Mtim.Nsec)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " sha=" + sha(b)
			if first, ok := inodes[st.Ino]; ok {
				desc += " link=" + first
			} else {
				inodes[st.Ino] = rel
			}
		case unix.S_IFLNK:
			l, _ := os.Readlink(p)
			desc += " -> " + l
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			buf := make([]byte, 4096)
			n, _ := unix.Llistxattr(p, buf)
			names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
			sort.Strings(names)
			for _, x := range names {
				if x != "" {
					v, _ := getxattr(t, p, x)
					desc += fmt.Sprintf(" %s=%x", x, v)
				}
			}
		}
		m[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestAgainstGNUTar applies tars GNU tar wrote in each format and compares
// the result with what GNU tar -x itself extracts from the same tar.
func TestAgainstGNUTar(t *testing.T) {
	testutil.NeedRoot(t)
	gnutar := testutil.NeedTool(t, "tar")
	for _, tt := range []struct {
		format    string
		xattrs    bool
		ns        bool
		longNames bool
	}{
		{format: "posix", xattrs: true, ns: true, longNames: true},
		{format: "gnu", longNames: true},
		{format: "ustar"},
	} {
		t.Run(tt.format, func(t *testing.T) {
			work := t.TempDir()
			src, oracle := filepath.Join(work, "src"), filepath.Join(work, "oracle")
			s := newSandbox(t)
			must := func(err error) {
				if err != nil {
					t.Fatal(err)
				}
			}
			must(os.Mkdir(src, 0o755))
			must(os.Mkdir(oracle, 0o755))
			makeTree(t, src, tt.longNames)
			tarPath := filepath.Join(work, "layer.tar")
			args := []string{"--format=" + tt.format, "-C", src, "-cf", tarPath}
			xargs := []string{}
			if tt.xattrs {
				xargs = []string{"--xattrs", "--xattrs-include=*"}
			}
			run(t, gnutar, append(append(xargs, args...), ".")...)
			run(t, gnutar, append(xargs, "--numeric-owner", "-C", oracle, "-xf", tarPath)...)
			data, err := os.ReadFile(tarPath)
			must(err)
			res, err := applyBytes(t, data, s.layer, Options{})
			must(err)
			s.checkOutside(t)
			if res.Entries < 20 {
				t.Errorf("Entries = %d, the tree has more", res.Entries)
			}
			got, want := describeTree(t, s.layer, tt.ns), describeTree(t, oracle, tt.ns)
			for k, w := range want {
				if got[k] != w {
					t.Errorf("%s:\n got  %s\n want %s", k, got[k], w)
				}
			}
			for k := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("%s: applied but GNU tar did not extract it", k)
				}
			}
			if tt.xattrs && !strings.Contains(want["usr/bin/ping"], "security.capability=") {
				t.Errorf("oracle lacks security.capability; the comparison proves nothing: %s", want["usr/bin/ping"])
			}
		})
	}
}

// TestSparse checks that GNU tar's sparse formats land as sparse files
// with the right content, and that non-sparse entries stay dense.
func TestSparse(t *testing.T) {
	testutil.NeedRoot(t)
	gnutar := testutil.NeedTool(t, "tar")
	work := t.TempDir()
	src := filepath.Join(work, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	const size = 16 << 20
	run(t, "truncate", "-s", fmt.Sprint(size), filepath.Join(src, "sparse"))
	f, err := os.OpenFile(filepath.Join(src, "sparse"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		off  int64
		data string
	}{{0, "head"}, {5 << 20, strings.Repeat("m", 10000)}, {size - 3, "end"}} {
		if _, err := f.WriteAt([]byte(w.data), w.off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	// And one that ends in a hole.
	run(t, "truncate", "-s", fmt.Sprint(size), filepath.Join(src, "tailhole"))
	if err := os.WriteFile(filepath.Join(src, "small"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, _ = os.OpenFile(filepath.Join(src, "tailhole"), os.O_WRONLY, 0)
	f.WriteAt([]byte("start"), 100)
	f.Close()
	want := map[string]string{}
	for _, n := range []string{"sparse", "tailhole"} {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		want[n] = sha(b)
	}

	for _, tt := range []struct {
		name   string
		args   []string
		sparse bool
	}{
		{"gnu", []string{"--sparse", "--format=gnu"}, true},
		{"oldgnu", []string{"--sparse", "--format=oldgnu"}, true},
		{"posix-0.0", []string{"--sparse", "--format=posix", "--sparse-version=0.0"}, true},
		{"posix-0.1", []string{"--sparse", "--format=posix", "--sparse-version=0.1"}, true},
		{"posix-1.0", []string{"--sparse", "--format=posix", "--sparse-version=1.0"}, true},
		{"dense-gnu", []string{"--format=gnu"}, false},
		{"dense-posix", []string{"--format=posix"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tarPath := filepath.Join(work, tt.name+".tar")
			run(t, gnutar, append(tt.args, "-C", src, "-cf", tarPath, "sparse", "tailhole", "small")...)
			data, err := os.ReadFile(tarPath)
			if err != nil {
				t.Fatal(err)
			}
			s := newSandbox(t)
			res, err := applyBytes(t, data, s.layer, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Size != 2*size+1 {
				t.Errorf("Size = %d, want apparent sizes %d", res.Size, 2*size+1)
			}
			for n, w := range want {
				p := filepath.Join(s.layer, n)
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if len(b) != size || sha(b) != w {
					t.Errorf("%s: %d bytes sha %s, want %d bytes sha %s", n, len(b), sha(b), size, w)
				}
				st := lstat(t, p)
				fd, err := unix.Open(p, unix.O_RDONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				hole, err := unix.Seek(fd, 0, unix.SEEK_HOLE)
				unix.Close(fd)
				if err != nil {
					t.Fatal(err)
				}
				allocated := st.Blocks * 512
				if tt.sparse {
					if hole >= size || allocated > 1<<20 {
						t.Errorf("%s: first hole at %d, %d bytes allocated: not sparse", n, hole, allocated)
					}
				} else if hole < size || allocated < size {
					t.Errorf("%s: hole at %d, %d bytes allocated: a dense entry must be written densely", n, hole, allocated)
				}
			}
			s.checkOutside(t)
		})
	}
}

// TestSparseHeaderFlags checks the detection on headers archive/tar makes
// for hand-built PAX sparse records.
func TestSparseHeaderFlags(t *testing.T) {
	for _, tt := range []struct {
		hdr  tar.Header
		want bool
	}{
		{tar.Header{Typeflag: tar.TypeGNUSparse}, true},
		{tar.Header{Typeflag: tar.TypeReg, PAXRecords: map[string]string{"GNU.sparse.major": "1"}}, true},
		{tar.Header{Typeflag: tar.TypeReg, PAXRecords: map[string]string{"GNU.sparse.map": "0,1"}}, true},
		{tar.Header{Typeflag: tar.TypeReg, PAXRecords: map[string]string{"GNU.sparse.numblocks": "1"}}, true},
		{tar.Header{Typeflag: tar.TypeReg, PAXRecords: map[string]string{"GNU.sparse.size": "9"}}, true},
		{tar.Header{Typeflag: tar.TypeReg, PAXRecords: map[string]string{"SCHILY.xattr.user.a": "b"}}, false},
		{tar.Header{Typeflag: tar.TypeReg}, false},
	} {
		if got := isSparse(&tt.hdr); got != tt.want {
			t.Errorf("isSparse(%c %v) = %v, want %v", tt.hdr.Typeflag, tt.hdr.PAXRecords, got, tt.want)
		}
	}
}

// BenchmarkApply and BenchmarkGNUTar extract the same layer-like tar (many
// small files, a few dirs and symlinks, one big file) into tmpfs when there
// is one; compare their ns/op for the ratio to GNU tar -x.
func BenchmarkApply(b *testing.B) {
	data := benchTar(b, 2000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		b.StopTimer()
		dir := filepath.Join(memTempDir(b), "layer")
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := Apply(context.Background(), tar.NewReader(bytes.NewReader(data)), dir, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGNUTar(b *testing.B) {
	gnutar := testutil.NeedTool(b, "tar")
	data := benchTar(b, 2000)
	tarPath := filepath.Join(memTempDir(b), "bench.tar")
	if err := os.WriteFile(tarPath, data, 0o644); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		b.StopTimer()
		dir := filepath.Join(memTempDir(b), "layer")
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if out, err := exec.Command(gnutar, "-C", dir, "-xf", tarPath).CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
}

func benchTar(t testing.TB, files int) []byte {
	t.Helper()
	var ents []ent
	for d := 0; d < files/50; d++ {
		ents = append(ents, dirE(fmt.Sprintf("usr/lib/d%03d/", d)))
		for f := 0; f < 50; f++ {
			body := strings.Repeat("x", 100+(f*997)%20000)
			ents = append(ents, ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("usr/lib/d%03d/f%03d.so", d, f),
				Mode: 0o644, ModTime: time.Unix(1_600_000_000, 0)}, body: body})
		}
		ents = append(ents, symlinkE(fmt.Sprintf("usr/lib/d%03d/link", d), "f000.so"))
	}
	ents = append(ents, ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644}, body: strings.Repeat("B", 32<<20)})
	return buildTar(t, ents...)
}
