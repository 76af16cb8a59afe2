package fusefs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// readAt reads n bytes of fd at 0.
func readAt(t *testing.T, fd, n int) string {
	t.Helper()
	buf := make([]byte, n)
	got, err := unix.Pread(fd, buf, 0)
	if err != nil {
		t.Fatalf("pread: %v", err)
	}
	return string(buf[:got])
}

// TestCopyUpUnderOpenReader: a lower file held open read-only while it is
// copied up and written. Every open made after the copy-up, and the path,
// show the new data and one inode number; a shared writable mapping of the
// copy works. The descriptor opened before reads the new data too where
// reads go through the daemon (its descriptor follows the copy-up, as
// overlayfs's do); with FUSE passthrough it goes on reading the lower
// file, which the kernel reads directly (the documented limit).
func TestCopyUpUnderOpenReader(t *testing.T) {
	for _, tc := range []struct {
		name          string
		noPassthrough bool
	}{{"passthrough", false}, {"through the daemon", true}} {
		t.Run(tc.name, func(t *testing.T) {
			lowers, upper, work := layerDirs(t, 1)
			mustWrite(t, filepath.Join(lowers[0], "f"), "old data")
			srv, mnt := mountServerT(t, Options{Lowers: lowers, Upper: upper, Work: work, NoPassthrough: tc.noPassthrough})
			p := filepath.Join(mnt, "f")
			var before unix.Stat_t
			if err := unix.Stat(p, &before); err != nil {
				t.Fatal(err)
			}
			old, err := unix.Open(p, unix.O_RDONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(old)
			if got := readAt(t, old, 8); got != "old data" {
				t.Fatalf("reads %q before the copy-up", got)
			}
			passthrough := !tc.noPassthrough && !srv.u.noBacking.Load()
			if !tc.noPassthrough && !passthrough {
				testutil.Need(t, false, "the kernel refused FUSE passthrough (Linux >= 6.9 and CAP_SYS_ADMIN needed)")
			}

			w, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatalf("open for writing while a reader holds the lower file: %v", err)
			}
			if _, err := w.WriteAt([]byte("new"), 0); err != nil {
				t.Fatal(err)
			}
			// A shared writable mapping of the copy.
			m, err := unix.Mmap(int(w.Fd()), 0, 8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				t.Fatalf("mmap of the copy: %v", err)
			}
			copy(m[3:], "-")
			unix.Munmap(m)
			w.Close()
			if got, err := os.ReadFile(p); err != nil || string(got) != "new-data" {
				t.Errorf("a new open reads %q (%v), want new-data", got, err)
			}
			var after, oldSt unix.Stat_t
			if err := unix.Stat(p, &after); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fstat(old, &oldSt); err != nil {
				t.Fatal(err)
			}
			if after.Ino != before.Ino || oldSt.Ino != before.Ino {
				t.Errorf("inode numbers: %d before, %d by path after, %d through the old descriptor; want one", before.Ino, after.Ino, oldSt.Ino)
			}
			want := "new-data"
			if passthrough {
				want = "old data"
			}
			// What the page cache holds says nothing of the file the
			// descriptor reads: drop it.
			unix.Fadvise(old, 0, 0, unix.FADV_DONTNEED)
			if got := readAt(t, old, 8); got != want {
				t.Errorf("the descriptor opened before the copy-up reads %q, want %q", got, want)
			}
			if data, err := os.ReadFile(filepath.Join(lowers[0], "f")); err != nil || string(data) != "old data" {
				t.Errorf("the lower file now holds %q (%v)", data, err)
			}
		})
	}
}

// TestExecWhileCopiedUp: a lower program keeps running (its file mapped
// through passthrough) while its file is copied up (chmod); running it
// again works, from the copy.
func TestExecWhileCopiedUp(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1)")
	}
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	lowers, upper, work := layerDirs(t, 1)
	prog := filepath.Join(lowers[0], "bin", "sleep")
	mustMkdir(t, filepath.Dir(prog))
	if err := os.WriteFile(prog, data, 0o755); err != nil {
		t.Fatal(err)
	}
	mnt := mountT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	view := filepath.Join(mnt, "bin", "sleep")
	running := exec.Command(view, "30")
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { running.Process.Kill(); running.Wait() }()
	time.Sleep(100 * time.Millisecond) // let it map its file
	if err := os.Chmod(view, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(view, "0").CombinedOutput(); err != nil {
		t.Fatalf("run it again after the copy-up: %v %s", err, out)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(upper, "bin", "sleep"), &st); err != nil || st.Mode&0o777 != 0o700 {
		t.Errorf("upper copy: mode %o (%v), want 0700", st.Mode&0o777, err)
	}
	if !bytes.Equal(readFile(t, view), data) {
		t.Error("the copy's data differs from the program's")
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
