package fusefs

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

func TestMain(m *testing.M) {
	if job := os.Getenv(helperEnv); job != "" {
		os.Exit(runHelper(job, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// needFuse skips (or fails in CI) without root and /dev/fuse.
func needFuse(t testing.TB) {
	t.Helper()
	testutil.NeedRoot(t)
	_, err := os.Stat("/dev/fuse")
	testutil.Need(t, err == nil, "needs /dev/fuse")
}

// mountT mounts a union and unmounts it in t.Cleanup, lazily if busy.
func mountT(t testing.TB, opts Options) string {
	t.Helper()
	needFuse(t)
	mnt := t.TempDir()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if os.Getenv("FUSEFS_TEST_DEBUG") != "" {
			opts.Debug = true
			opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
	}
	srv, err := Mount(mnt, opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return mnt
}

// layerDirs makes n empty layer dirs plus upper and work.
func layerDirs(t testing.TB, n int) (lowers []string, upper, work string) {
	t.Helper()
	base := t.TempDir()
	for i := 0; i < n; i++ {
		p := filepath.Join(base, "l"+string(rune('0'+i)))
		mustMkdir(t, p)
		lowers = append(lowers, p)
	}
	upper, work = filepath.Join(base, "upper"), filepath.Join(base, "work")
	mustMkdir(t, upper)
	mustMkdir(t, work)
	return
}

func mustMkdir(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t testing.TB, p, data string) {
	t.Helper()
	mustMkdir(t, filepath.Dir(p))
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustWhiteout(t testing.TB, p string) {
	t.Helper()
	mustMkdir(t, filepath.Dir(p))
	if err := unix.Mknod(p, unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// commandIn is exec.Command run with dir as its working directory,
// where dir may be inside a union this test process serves. It must not
// be set as cmd.Dir: the child would chdir into the mount between fork
// and exec, and a FUSE request made then can deadlock the test binary.
// Go's parent waits for the exec in a raw syscall that a stop-the-world
// (a GC) cannot interrupt, while the daemon goroutines that would answer
// the child's request are stopped. The shell changes directory after the
// exec, when the parent has moved on.
func commandIn(dir, name string, args ...string) *exec.Cmd {
	return exec.Command("sh", append([]string{"-c", `cd -- "$0" && exec "$@"`, dir, name}, args...)...)
}

// unionForUnmountT mounts a union for a test that unmounts it partway
// (unmount fails t on error); t.Cleanup unmounts it if the test did not.
func unionForUnmountT(t testing.TB, opts Options) (mnt string, unmount func()) {
	t.Helper()
	needFuse(t)
	mnt = t.TempDir()
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := Mount(mnt, opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted && srv.Unmount() != nil {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return mnt, func() {
		t.Helper()
		if err := srv.Unmount(); err != nil {
			t.Fatal(err)
		}
		mounted = false
	}
}

// kernelIndexMountT mounts kernel overlayfs with index=on (and
// redirect_dir=on, nfs_export=off, as views do) over lowers, upper and work
// at a temp dir, skipping the test where the kernel refuses, for a test
// that unmounts it partway; t.Cleanup detaches it if the test did not.
func kernelIndexMountT(t testing.TB, lowers []string, upper, work string) (mnt string, unmount func()) {
	t.Helper()
	mnt = t.TempDir()
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
	return mnt, func() {
		t.Helper()
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Fatal(err)
		}
		mounted = false
	}
}
