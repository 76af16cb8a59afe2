package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testutil"
)

// needUnionBench skips (fails in CI) unless the union section can run:
// root, /dev/fuse, kernel overlayfs, fuse-overlayfs and GNU tar.
func needUnionBench(t *testing.T) {
	t.Helper()
	testutil.NeedRootOnly(t, "the union section mounts kernel overlayfs")
	_, err := os.Stat("/dev/fuse")
	testutil.Need(t, err == nil, "no /dev/fuse")
	fsTypes, _ := os.ReadFile("/proc/filesystems")
	testutil.Need(t, bytes.Contains(fsTypes, []byte("\toverlay\n")), "the kernel has no overlayfs")
	testutil.NeedTool(t, "fuse-overlayfs")
	testutil.Need(t, haveGNUTar(), "GNU tar is not installed")
}

// tinyUnionArgs run the union section on a few hundred files.
func tinyUnionArgs(out, work, bin string) []string {
	return []string{"-sections", "union", "-out", out, "-workdir", work, "-layerfs", bin, "-cold=false", "-reps", "1",
		"-union-files", "300", "-union-deep-layers", "8", "-union-dir-entries", "300", "-union-seq-mib", "4",
		"-union-random-reads", "100", "-union-create-files", "100", "-union-copyup-files", "1", "-union-copyup-mib", "1",
		"-union-rm-files", "100", "-union-rename-files", "100", "-union-untar-files", "100"}
}

// TestUnionSection runs the union section end to end at a tiny size and
// checks the table it writes, that it leaves no mount and no data behind,
// and that an interrupted run leaves no mount behind either.
func TestUnionSection(t *testing.T) {
	needUnionBench(t)
	tmp := t.TempDir()
	bin := buildLayerfs(t, tmp)
	work := filepath.Join(tmp, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountEverythingUnder(t, work) })

	t.Run("tiny", func(t *testing.T) {
		out := filepath.Join(tmp, "BENCHMARKS.md")
		other := "<!-- section:store -->\n## Store\n\nkept as is\n<!-- /section:store -->\n"
		if err := os.WriteFile(out, []byte(documentPreamble+"\n"+other), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var stderr bytes.Buffer
		if err := run(ctx, tinyUnionArgs(out, work, bin), &stderr); err != nil {
			t.Fatalf("run: %v\n%s", err, stderr.String())
		}
		assertNothingLeft(t, work)
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		doc := string(data)
		if !strings.Contains(doc, other) {
			t.Errorf("the store section was not kept:\n%s", doc)
		}
		if n := strings.Count(doc, beginMarker("union")); n != 1 {
			t.Fatalf("%d union sections, want 1", n)
		}
		if !strings.Contains(doc, "Passthrough (FUSE_PASSTHROUGH") {
			t.Errorf("the intro does not say what the passthrough probe found:\n%s", doc)
		}
		rows := sectionTable(t, doc, "union")
		// 18 workloads (copy-up and rename twice: with and without
		// syncs), then the peak RSS after the three warm walks.
		if len(rows) != 21 {
			t.Fatalf("union table has %d rows, want 21:\n%s", len(rows), doc)
		}
		for i, r := range rows {
			if len(r) != 9 {
				t.Fatalf("row %d has %d cells, want 9: %q", i, len(r), r)
			}
			if r[8] != "yes" && r[8] != "no" {
				t.Errorf("row %d: met is %q", i, r[8])
			}
			// Every target includes beating fuse-overlayfs.
			if rf := number(t, r[6]); rf >= 1 && r[8] == "yes" {
				t.Errorf("row %d (%s): ratio to fuse-overlayfs %v but the target is met", i, r[0], rf)
			}
			if strings.HasPrefix(r[0], "peak RSS") {
				for _, c := range []int{1, 3} {
					number(t, strings.TrimSuffix(r[c], " MiB"))
				}
				continue
			}
			number(t, r[5])
			if r[7] == "" {
				t.Errorf("row %d (%s) has no target", i, r[0])
			}
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		// Cancel while views are mounted: the section must unmount them
		// on its way out.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			deadline := time.Now().Add(time.Minute)
			for time.Now().Before(deadline) {
				if m, _ := mountsUnder(work); len(m) > 0 {
					time.Sleep(200 * time.Millisecond)
					cancel()
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		var stderr bytes.Buffer
		err := run(ctx, tinyUnionArgs(filepath.Join(tmp, "interrupted.md"), work, bin), &stderr)
		if err == nil {
			t.Fatalf("an interrupted run succeeded\n%s", stderr.String())
		}
		assertNothingLeft(t, work)
	})
}

func assertNothingLeft(t *testing.T, work string) {
	t.Helper()
	if m, err := mountsUnder(work); err != nil || len(m) > 0 {
		t.Errorf("mounts left behind: %v (%v)", m, err)
	}
	if entries, _ := os.ReadDir(work); len(entries) != 0 {
		t.Errorf("scratch data left behind in %s: %v", work, entries)
	}
}

// unmountEverythingUnder is the test's own safety net, should the
// section's fail.
func unmountEverythingUnder(t *testing.T, dir string) {
	m, _ := mountsUnder(dir)
	for i := len(m) - 1; i >= 0; i-- {
		t.Logf("lazily unmounting %s", m[i])
		exec.Command("umount", "-l", m[i]).Run()
	}
}

func TestLogValue(t *testing.T) {
	line := `time=2026-01-01T00:00:00Z level=DEBUG msg=open path=big upper=false io="lower, cached"`
	tests := []struct{ key, want string }{
		{"path", "big"},
		{"upper", "false"},
		{"io", "lower, cached"},
		{"missing", ""},
	}
	for _, tt := range tests {
		if got := logValue(line, tt.key); got != tt.want {
			t.Errorf("logValue(%s) = %q, want %q", tt.key, got, tt.want)
		}
	}
}

func TestProcAccounting(t *testing.T) {
	// Burn some CPU so the counters move.
	deadline := time.Now().Add(30 * time.Millisecond)
	for n := 0; time.Now().Before(deadline); n++ {
		_ = n * n
	}
	if cpu := procCPU(os.Getpid()); cpu <= 0 {
		t.Errorf("procCPU(self) = %v, want > 0", cpu)
	}
	if cpu := procCPU(0); cpu != 0 {
		t.Errorf("procCPU(0) = %v, want 0", cpu)
	}
	rss, err := peakRSS(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Errorf("peakRSS(self) = %d, %v; want at least 1 MiB", rss, err)
	}
	if s := procState(os.Getpid()); s != 'R' && s != 'S' {
		t.Errorf("procState(self) = %q, want R or S", s)
	}
}
