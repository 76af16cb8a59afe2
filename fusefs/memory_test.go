package fusefs

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// genTree writes empty files prefix<i> (i < files) into directories d<j>
// (j < dirs) of root: one openat and one close per file.
func genTree(root, prefix string, dirs, files int) error {
	for j := 0; j < dirs; j++ {
		d := filepath.Join(root, fmt.Sprintf("d%d", j))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		dfd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		for i := 0; i < files; i++ {
			fd, err := unix.Openat(dfd, prefix+strconv.Itoa(i), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
			if err != nil {
				unix.Close(dfd)
				return err
			}
			unix.Close(fd)
		}
		unix.Close(dfd)
	}
	return nil
}

// mountServerT is mountT that also returns the server.
func mountServerT(t testing.TB, opts Options) (*Server, string) {
	t.Helper()
	needFuse(t)
	mnt := t.TempDir()
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
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
	return srv, mnt
}

// liveHeap is the heap in use after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// dropKernelCaches makes the kernel evict the dentries and inodes no one
// uses, as memory pressure would: FUSE sends FORGET for each.
func dropKernelCaches(t testing.TB) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
		testutil.Need(t, false, "cannot drop the kernel's caches: "+err.Error())
	}
}

// statDirs lstats every name of the given directories of mnt, in
// parallel, and returns how many it saw.
func statDirs(t testing.TB, mnt string, dirs []string) int {
	t.Helper()
	var mu sync.Mutex
	total := 0
	var firstErr error
	var wg sync.WaitGroup
	work := make(chan string)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range work {
				ents, err := os.ReadDir(filepath.Join(mnt, d))
				n := 0
				for _, e := range ents {
					var st unix.Stat_t
					if err == nil {
						err = unix.Lstat(filepath.Join(mnt, d, e.Name()), &st)
					}
					n++
				}
				mu.Lock()
				total += n
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	for _, d := range dirs {
		work <- d
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	return total
}

// TestMemoryBoundedWalk stat-walks 100k files (two layers of 50k in 100
// directories) in batches of 10k, letting the kernel forget nodes between
// batches as memory pressure would, and checks that the union's live heap
// stays far below what keeping every node would take (~140 bytes each,
// 14 MB): nodes the kernel forgot are freed (nothing of the union pins
// them), the directories' name indexes stay within a budget far smaller
// than the tree, and once the kernel has forgotten everything the heap is
// back near where it started.
// FUSEFS_HEAPPROFILE=FILE writes a heap profile at the peak.
func TestMemoryBoundedWalk(t *testing.T) {
	testutil.NeedRootOnly(t, "drops the kernel's caches")
	needFuse(t)
	// On a tmpfs of its own: made fast, and gone at once.
	base0 := t.TempDir()
	if err := unix.Mount("tmpfs", base0, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(base0, unix.MNT_DETACH) })
	lowers := []string{filepath.Join(base0, "l0"), filepath.Join(base0, "l1")}
	upper, work := filepath.Join(base0, "u"), filepath.Join(base0, "w")
	for _, d := range append([]string{upper, work}, lowers...) {
		mustMkdir(t, d)
	}
	const dirs, files, batch = 100, 500, 10
	start := time.Now()
	errs := make(chan error, 2)
	for i, prefix := range []string{"a", "b"} {
		go func() { errs <- genTree(lowers[i], prefix, dirs, files) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("generated %d files in %v", 2*dirs*files, time.Since(start))
	srv, mnt := mountServerT(t, Options{Lowers: lowers, Upper: upper, Work: work})
	// A budget of a few directories' indexes, so the walk goes through
	// it many times over.
	const indexBudget = 64 << 10
	srv.u.indexes.mu.Lock()
	srv.u.indexes.max = indexBudget
	srv.u.indexes.mu.Unlock()
	dropKernelCaches(t)
	base := liveHeap()

	start = time.Now()
	var peak uint64
	var walkTime, dropTime time.Duration
	seen := 0
	for j := 0; j < dirs; j += batch {
		var names []string
		for k := j; k < j+batch; k++ {
			names = append(names, fmt.Sprintf("d%d", k))
		}
		t0 := time.Now()
		seen += statDirs(t, mnt, names)
		walkTime += time.Since(t0)
		if h := liveHeap(); h > peak {
			peak = h
			if p := os.Getenv("FUSEFS_HEAPPROFILE"); p != "" {
				if f, err := os.Create(p); err == nil {
					pprof.WriteHeapProfile(f)
					f.Close()
				}
			}
		}
		if b := srv.u.indexes.size(); b > indexBudget || b == 0 {
			t.Errorf("name indexes take %d bytes, want some and at most %d", b, indexBudget)
		}
		t0 = time.Now()
		dropKernelCaches(t)
		dropTime += time.Since(t0)
	}
	t.Logf("walk %v, drop %v", walkTime, dropTime)
	// FORGETs are handled asynchronously; give them a moment.
	var after uint64
	for i := 0; i < 20; i++ {
		if after = liveHeap(); after < base+2<<20 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("stat of %d names in %v; live heap %d KiB at mount, peak %d KiB, %d KiB once the kernel forgot",
		seen, time.Since(start), base>>10, peak>>10, after>>10)
	if seen != 2*dirs*files {
		t.Fatalf("walked %d names, want %d", seen, 2*dirs*files)
	}
	// A batch is 10k names: ~1.4 MB of nodes. Keeping all 100k would
	// take ~14 MB.
	if peak > base+6<<20 {
		t.Errorf("live heap peaked at %d KiB (%d at mount): nodes the kernel forgot are kept", peak>>10, base>>10)
	}
	if after > base+2<<20 {
		t.Errorf("live heap %d KiB after the kernel forgot every node (%d at mount)", after>>10, base>>10)
	}
}
