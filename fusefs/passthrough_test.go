package fusefs

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
			w.Close()
			// A shared writable mapping of the copy, in another
			// process (see mmapWriteHelper).
			if out, err := helperCommand("mmap-write", p, "3", "-").CombinedOutput(); err != nil {
				t.Fatalf("mmap of the copy: %v: %s", err, out)
			}
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
	// Through sh: this process must not exec a file of a mount it
	// serves (see commandIn).
	run := func(args ...string) *exec.Cmd {
		return exec.Command("sh", append([]string{"-c", `exec "$0" "$@"`, view}, args...)...)
	}
	running := run("30")
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { running.Process.Kill(); running.Wait() }()
	time.Sleep(100 * time.Millisecond) // let it map its file
	if err := os.Chmod(view, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := run("0").CombinedOutput(); err != nil {
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

// helperEnv names the job a test binary run by helperCommand does
// (TestMain).
const helperEnv = "FUSEFS_TEST_HELPER"

// helperCommand runs this test binary as a helper process doing job with
// args (runHelper). Whatever touches a mount's pages directly (a mapped
// file's page faults) must not run in the test process that serves the
// mount: a fault waits for a FUSE request that the daemon goroutines
// cannot answer while a garbage collection stops them, and the collection
// waits for the faulting thread.
func helperCommand(job string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), helperEnv+"="+job)
	return cmd
}

// runHelper does a helper process's job and returns its exit status.
func runHelper(job string, args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, job+": "+format+"\n", a...)
		return 1
	}
	switch job {
	case "mmap-write":
		// args: path, offset, data: write data at offset through a
		// shared writable mapping of the file.
		if len(args) != 3 {
			return fail("want path, offset, data")
		}
		off, err := strconv.Atoi(args[1])
		if err != nil {
			return fail("%v", err)
		}
		f, err := os.OpenFile(args[0], os.O_RDWR, 0)
		if err != nil {
			return fail("%v", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fail("%v", err)
		}
		m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fail("mmap: %v", err)
		}
		copy(m[off:], args[2])
		if err := unix.Msync(m, unix.MS_SYNC); err != nil {
			return fail("msync: %v", err)
		}
		unix.Munmap(m)
		return 0
	case "tmpfile-link":
		// args: dir, name: make a file with O_TMPFILE in dir, then
		// link it in as dir/name.
		if len(args) != 2 {
			return fail("want dir, name")
		}
		fd, err := unix.Open(args[0], unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return fail("O_TMPFILE: %v", err)
		}
		defer unix.Close(fd)
		if _, err := unix.Write(fd, []byte("x")); err != nil {
			return fail("write: %v", err)
		}
		proc := fmt.Sprintf("/proc/self/fd/%d", fd)
		if err := unix.Linkat(unix.AT_FDCWD, proc, unix.AT_FDCWD, filepath.Join(args[0], args[1]), unix.AT_SYMLINK_FOLLOW); err != nil {
			return fail("linkat: %v", err)
		}
		return 0
	}
	return fail("unknown job")
}
