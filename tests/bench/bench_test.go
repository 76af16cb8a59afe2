package main

import (
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/kernel/overlay"
)

func haveGNUTar() bool {
	out, err := exec.Command("tar", "--version").Output()
	return err == nil && bytes.Contains(out, []byte("GNU tar"))
}

// TestQuickRun runs the harness end to end on a tiny workload and checks
// the document it writes: the store table has a row per workload and
// operation with numeric ratios, and a section it did not run survives.
func TestQuickRun(t *testing.T) {
	testutil.Need(t, haveGNUTar(), "GNU tar is not installed")
	tmp := t.TempDir()
	bin := buildLayerfs(t, tmp)

	out := filepath.Join(tmp, "BENCHMARKS.md")
	other := "<!-- section:other -->\n## Another section\n\nkept as is\n<!-- /section:other -->\n"
	stale := "<!-- section:store -->\n## Store: import and export\n\nSTALE\n<!-- /section:store -->\n"
	if err := os.WriteFile(out, []byte(documentPreamble+"\n"+stale+"\n"+other), 0o644); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(tmp, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	args := []string{"-quick", "-sections", "store", "-out", out, "-workdir", work, "-layerfs", bin, "-cold=false", "-reps", "2",
		"-store-small-files", "300", "-store-large-files", "1", "-store-large-mib", "2", "-store-mixed-packages", "2"}
	if err := run(ctx, args, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}

	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	if strings.Contains(doc, "STALE") {
		t.Errorf("old store section not replaced:\n%s", doc)
	}
	if !strings.Contains(doc, other) {
		t.Errorf("section other not kept:\n%s", doc)
	}
	if n := strings.Count(doc, beginMarker("store")); n != 1 {
		t.Errorf("%d store sections, want 1", n)
	}
	if entries, _ := os.ReadDir(work); len(entries) != 0 {
		t.Errorf("scratch data left behind in %s: %v", work, entries)
	}

	rows := sectionTable(t, doc, "store")
	wantOps := []string{"import", "export", "import", "export", "import", "export"}
	if len(rows) != len(wantOps) {
		t.Fatalf("store table has %d rows, want %d:\n%s", len(rows), len(wantOps), doc)
	}
	for i, r := range rows {
		if len(r) != 10 {
			t.Fatalf("row %d has %d cells, want 10: %q", i, len(r), r)
		}
		if r[1] != wantOps[i] {
			t.Errorf("row %d operation %q, want %q", i, r[1], wantOps[i])
		}
		ratio := number(t, r[5])
		target := number(t, strings.TrimPrefix(r[6], "≤ "))
		if want := map[bool]string{true: "yes", false: "no"}[ratio <= target]; r[7] != want {
			t.Errorf("row %d: ratio %v target %v says met %q, want %q", i, ratio, target, r[7], want)
		}
		if r[1] == "import" {
			number(t, r[9])
		} else if r[9] != "–" {
			t.Errorf("export row %d has a no-sync ratio %q", i, r[9])
		}
	}
	for _, name := range []string{"300 small files", "1 large files", "mixed tree"} {
		if !strings.Contains(doc, "| "+name) {
			t.Errorf("no row for workload %q", name)
		}
	}
}

func number(t *testing.T, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) {
		t.Errorf("%q is not a positive number", s)
	}
	return f
}

func TestSpliceSection(t *testing.T) {
	order := []section{{name: "a"}, {name: "b"}, {name: "c"}}
	block := func(name, body string) string {
		return beginMarker(name) + "\n" + body + "\n" + endMarker(name) + "\n"
	}
	tests := []struct {
		name, doc, section, want string
	}{
		{"into empty", "# T\n", "b", "# T\n\n" + block("b", "new")},
		{"replace", "# T\n\n" + block("b", "old") + "\ntail\n", "b", "# T\n\n" + block("b", "new") + "\ntail\n"},
		{"before a later one", "# T\n\n" + block("c", "C"), "a", "# T\n\n" + block("a", "new") + "\n" + block("c", "C")},
		{"after an earlier one", "# T\n\n" + block("a", "A"), "c", "# T\n\n" + block("a", "A") + "\n" + block("c", "new")},
		{"between", "# T\n\n" + block("a", "A") + "\n" + block("c", "C"), "b",
			"# T\n\n" + block("a", "A") + "\n" + block("b", "new") + "\n" + block("c", "C")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := spliceSection(tt.doc, tt.section, block(tt.section, "new"), order)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
	if _, err := spliceSection(beginMarker("a")+"\nno end\n", "a", block("a", "new"), order); err == nil {
		t.Error("a section without its end marker was accepted")
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []time.Duration
		want time.Duration
	}{
		{[]time.Duration{3, 1, 2}, 2},
		{[]time.Duration{4, 1, 3, 2}, 2}, // (2+3)/2 in integer nanoseconds
		{[]time.Duration{10, 30}, 20},
		{[]time.Duration{5}, 5},
		{nil, 0},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestViewsSection runs the views section at a tiny size and checks its
// table: a row per measurement and driver (and commit candidate) with
// times, ratios to the first row of each measurement, the create + discard
// target judged on the median, and nothing left mounted or on disk.
func TestViewsSection(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.Need(t, haveGNUTar(), "GNU tar is not installed")
	_, err := os.Stat("/dev/fuse")
	testutil.Need(t, err == nil, "needs /dev/fuse")
	tmp := t.TempDir()
	bin := buildLayerfs(t, tmp)
	out := filepath.Join(tmp, "BENCHMARKS.md")
	work := filepath.Join(tmp, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever a failed run left mounted goes before the temp dir.
		data, _ := os.ReadFile("/proc/self/mountinfo")
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], work+"/") {
				unix.Unmount(f[4], unix.MNT_DETACH)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	args := []string{"-quick", "-sections", "views", "-out", out, "-workdir", work, "-layerfs", bin, "-cold=false", "-reps", "2",
		"-views-layers", "3", "-views-image-files", "50", "-views-commit-files", "50"}
	if err := run(ctx, args, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	if n := strings.Count(doc, beginMarker("views")); n != 1 {
		t.Fatalf("%d views sections, want 1:\n%s", n, doc)
	}
	if entries, _ := os.ReadDir(work); len(entries) != 0 {
		t.Errorf("scratch data left behind in %s: %v", work, entries)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), work+"/") {
		t.Errorf("mounts left under %s", work)
	}

	drivers := []string{"fuse"}
	if overlay.Supported(overlay.ProbeOptions{Dir: tmp, Options: overlay.ViewOptions(nil, "u", "w", false)}).OK {
		drivers = []string{"kernel", "fuse"}
	}
	var want [][2]string // measurement prefix, candidate
	for _, m := range []string{"mount, 3-layer image", "umount, 3-layer image", "create + discard a view, 50-file image"} {
		for _, d := range drivers {
			want = append(want, [2]string{m, d})
		}
	}
	for _, c := range []string{"tar -c", "layerfs commit --keep"} {
		want = append(want, [2]string{"commit, upper of 50 small files", c})
	}
	rows := sectionTable(t, doc, "views")
	if len(rows) != len(want) {
		t.Fatalf("views table has %d rows, want %d:\n%s", len(rows), len(want), doc)
	}
	for i, r := range rows {
		if len(r) != 9 {
			t.Fatalf("row %d has %d cells, want 9: %q", i, len(r), r)
		}
		if r[0] != want[i][0] || r[1] != want[i][1] {
			t.Errorf("row %d is %q / %q, want %q / %q", i, r[0], r[1], want[i][0], want[i][1])
		}
		median := duration(t, r[2])
		first := i == 0 || rows[i-1][0] != r[0]
		if first != (r[6] == "–") {
			t.Errorf("row %d: ratio %q; only the first row of a measurement has none", i, r[6])
		}
		if !first {
			number(t, r[6])
		}
		if strings.HasPrefix(r[0], "create + discard") {
			met := map[bool]string{true: "yes", false: "no"}[median < time.Second]
			if r[7] != "< 1.00 s" || r[8] != met {
				t.Errorf("row %d: target %q met %q for a median of %v, want < 1.00 s and %s", i, r[7], r[8], median, met)
			}
		} else if r[7] != "–" || r[8] != "–" {
			t.Errorf("row %d: target %q met %q, want none", i, r[7], r[8])
		}
	}
}

// buildLayerfs builds cmd/layerfs and cmd/layerfs-overlay into dir and
// returns the path of layerfs.
func buildLayerfs(t *testing.T, dir string) string {
	t.Helper()
	goTool := testutil.NeedTool(t, "go")
	for _, name := range []string{"layerfs", "layerfs-overlay"} {
		cmd := exec.Command(goTool, "build", "-o", filepath.Join(dir, name), "github.com/layerfs/layerfs/cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
	}
	return filepath.Join(dir, "layerfs")
}

// sectionTable returns the cells of section name's first table.
func sectionTable(t *testing.T, doc, name string) [][]string {
	t.Helper()
	i := strings.Index(doc, beginMarker(name))
	j := strings.Index(doc, endMarker(name))
	if i < 0 || j < i {
		t.Fatalf("no %s section in:\n%s", name, doc)
	}
	var rows [][]string
	inTable := false
	for _, line := range strings.Split(doc[i:j], "\n") {
		if !strings.HasPrefix(line, "|") {
			if inTable {
				break
			}
			continue
		}
		if !inTable {
			inTable = true
			continue
		}
		if strings.HasPrefix(line, "| ---") {
			continue
		}
		var cells []string
		for _, c := range strings.Split(strings.Trim(line, "|"), " | ") {
			cells = append(cells, strings.TrimSpace(c))
		}
		rows = append(rows, cells)
	}
	return rows
}

// duration parses a time as seconds() prints it.
func duration(t *testing.T, s string) time.Duration {
	t.Helper()
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{" ms", time.Millisecond}, {" s", time.Second}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil && f > 0 {
				return time.Duration(f * float64(u.unit))
			}
		}
	}
	t.Errorf("%q is not a duration", s)
	return 0
}
