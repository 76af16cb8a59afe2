package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Targets of the store section: layerfs may take this many times as long
// as GNU tar for the same job.
const (
	importTarget = 1.3
	exportTarget = 1.3
)

// storeConfig are the store section's flags; zero means "the default for
// the mode" (full or -quick).
type storeConfig struct {
	smallFiles    int
	largeFiles    int
	largeMiB      int
	mixedPackages int
}

func (c storeConfig) resolve(quick bool) storeConfig {
	def := storeConfig{smallFiles: 50000, largeFiles: 4, largeMiB: 256, mixedPackages: 200}
	if quick {
		def = storeConfig{smallFiles: 2000, largeFiles: 2, largeMiB: 32, mixedPackages: 10}
	}
	orDefault(&c.smallFiles, def.smallFiles)
	orDefault(&c.largeFiles, def.largeFiles)
	orDefault(&c.largeMiB, def.largeMiB)
	orDefault(&c.mixedPackages, def.mixedPackages)
	return c
}

// storeSection compares `layerfs import` with `tar -x` and `layerfs
// export` with `tar -c` on generated uncompressed layer tars.
func storeSection() section {
	return section{
		name:  "store",
		title: "Store: import and export",
		register: func(flags *flag.FlagSet) runFunc {
			var c storeConfig
			flags.IntVar(&c.smallFiles, "store-small-files", 0, "store: files in the small-files tar (default 50000, 2000 with -quick)")
			flags.IntVar(&c.largeFiles, "store-large-files", 0, "store: files in the large-files tar (default 4, 2 with -quick)")
			flags.IntVar(&c.largeMiB, "store-large-mib", 0, "store: MiB of the large-files tar (default 256, 32 with -quick)")
			flags.IntVar(&c.mixedPackages, "store-mixed-packages", 0, "store: packages in the mixed tree, ~36 entries and ~0.5 MiB each (default 200, 10 with -quick)")
			return func(ctx context.Context, h *harness) (*result, error) {
				return runStore(ctx, h, c.resolve(h.quick))
			}
		},
	}
}

// storeMeasurement is one row of the store table.
type storeMeasurement struct {
	workload  *workload
	operation string // import, export, or export with a warm cache
	target    float64
	refName   string
	layerfs   *samples
	reference *samples // tar -x + sync -f, or tar -c
	nosync    *samples // tar -x without sync (import only)
}

func runStore(ctx context.Context, h *harness, c storeConfig) (*result, error) {
	if err := needGNUTar(ctx); err != nil {
		return nil, err
	}
	h.cache.keepWarm(h.layerfs, "--help")
	h.cache.keepWarm("tar", "--version")
	h.cache.keepWarm("sync", "--version")

	inputs, err := h.dir("inputs")
	if err != nil {
		return nil, err
	}
	gens := []func() (*workload, error){
		func() (*workload, error) { return smallFilesWorkload(filepath.Join(inputs, "small.tar"), c.smallFiles) },
		func() (*workload, error) {
			return largeFilesWorkload(filepath.Join(inputs, "large.tar"), c.largeFiles, c.largeMiB)
		},
		func() (*workload, error) {
			return mixedTreeWorkload(filepath.Join(inputs, "mixed.tar"), c.mixedPackages)
		},
	}
	var rows []*storeMeasurement
	for i, gen := range gens {
		w, err := gen()
		if err != nil {
			return nil, err
		}
		h.log.Info("store: workload", "name", w.name)
		imp, err := measureImport(ctx, h, w, i)
		if err != nil {
			return nil, err
		}
		exp, err := measureExport(ctx, h, w, i)
		if err != nil {
			return nil, err
		}
		rows = append(rows, imp)
		rows = append(rows, exp...)
		if !h.keep {
			if err := os.Remove(w.tar); err != nil {
				return nil, err
			}
		}
	}
	return storeResult(rows, h.cache.dropDescription()), nil
}

func needGNUTar(ctx context.Context) error {
	_, out, err := command(ctx, "tar", "--version")
	if err != nil {
		return fmt.Errorf("GNU tar is needed: %w", err)
	}
	if !strings.Contains(out, "GNU tar") {
		return fmt.Errorf("GNU tar is needed, tar is %q", strings.SplitN(out, "\n", 2)[0])
	}
	if _, err := exec.LookPath("sync"); err != nil {
		return fmt.Errorf("coreutils sync is needed: %w", err)
	}
	return nil
}

// measureImport times `layerfs import` into a fresh store against `tar -x`
// into a fresh directory, both under one scratch dir on one filesystem.
// layerfs syncs the filesystem (syncfs) before it publishes a layer, so the
// fair reference is tar -x followed by `sync -f` (syncfs); tar -x alone is
// timed too, as a second reference.
func measureImport(ctx context.Context, h *harness, w *workload, index int) (*storeMeasurement, error) {
	runDir, err := h.dir(fmt.Sprintf("import%d", index))
	if err != nil {
		return nil, err
	}
	defer removeLogged(h, runDir)
	target := func(kind string, rep int) string { return filepath.Join(runDir, fmt.Sprintf("%s%d", kind, rep+1)) }
	tarInto := func(name, kind string, sync bool) candidate {
		return candidate{
			name:    name,
			prepare: func(ctx context.Context, rep int) error { return os.Mkdir(target(kind, rep), 0o755) },
			run: func(ctx context.Context, rep int) (time.Duration, error) {
				cpu, _, err := command(ctx, "tar", "-xf", w.tar, "-C", target(kind, rep))
				if err != nil || !sync {
					return cpu, err
				}
				scpu, _, err := command(ctx, "sync", "-f", target(kind, rep))
				return cpu + scpu, err
			},
		}
	}
	withSync, noSync := tarInto("tar -x + sync -f", "tar-sync", true), tarInto("tar -x", "tar", false)
	lfs := candidate{
		name: "layerfs import",
		run: func(ctx context.Context, rep int) (time.Duration, error) {
			cpu, _, err := command(ctx, h.layerfs, "--store", target("store", rep), "import", w.tar)
			return cpu, err
		},
	}
	// The input is read cold; the trees written stay cached, since removing
	// hundreds of thousands of files after the measurement is a matter of
	// seconds when cached and of minutes when not.
	res, err := h.measure(ctx, "import "+w.name, cacheState{evict: []string{w.tar}}, []candidate{lfs, withSync, noSync})
	if err != nil {
		return nil, err
	}
	return &storeMeasurement{workload: w, operation: "import", target: importTarget, refName: withSync.name,
		layerfs: res[lfs.name], reference: res[withSync.name], nosync: res[noSync.name]}, nil
}

// measureExport times `layerfs export` of the imported layer against
// `tar -c` of the same directory: the layer's own files in the store, so
// both read the very same inodes. Cold first, then, where the cold runs
// really were cold, warm too: on a fast disk both are bound by I/O when
// cold, and the warm runs show what the CPU does.
func measureExport(ctx context.Context, h *harness, w *workload, index int) ([]*storeMeasurement, error) {
	runDir, err := h.dir(fmt.Sprintf("export%d", index))
	if err != nil {
		return nil, err
	}
	defer removeLogged(h, runDir)
	store := filepath.Join(runDir, "store")
	_, out, err := command(ctx, h.layerfs, "--store", store, "import", w.tar)
	if err != nil {
		return nil, err
	}
	id := strings.TrimSpace(out)
	_, out, err = command(ctx, h.layerfs, "--store", store, "inspect", "-f", "{{.path}}", id)
	if err != nil {
		return nil, err
	}
	tree := strings.TrimSpace(out)
	if st, err := os.Stat(tree); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("layer %s: its directory %q is not a directory (%v)", id, tree, err)
	}

	var rows []*storeMeasurement
	modes := []string{"export"}
	if h.cache.canDrop {
		modes = append(modes, "export, warm cache")
	}
	for m, mode := range modes {
		// One output file per candidate, replaced on every run: removing a
		// single file costs nothing worth avoiding, and keeping every
		// output would fill the page cache with gigabytes of tars.
		output := func(kind string) string { return filepath.Join(runDir, fmt.Sprintf("%s-%d.tar", kind, m)) }
		removeOutput := func(kind string) func(context.Context, int) error {
			return func(context.Context, int) error {
				if err := os.Remove(output(kind)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
				return nil
			}
		}
		lfs := candidate{
			name:    "layerfs export",
			prepare: removeOutput("layerfs"),
			run: func(ctx context.Context, rep int) (time.Duration, error) {
				cpu, _, err := command(ctx, h.layerfs, "--store", store, "export", id, "-o", output("layerfs"))
				return cpu, err
			},
			check: func(rep int) error {
				// layerfs checked the sha256; the size shows it wrote it all.
				st, err := os.Stat(output("layerfs"))
				if err != nil {
					return err
				}
				if st.Size() != w.size {
					return fmt.Errorf("exported %d bytes, imported %d", st.Size(), w.size)
				}
				return nil
			},
		}
		ref := candidate{
			name:    "tar -c",
			prepare: removeOutput("tar"),
			run: func(ctx context.Context, rep int) (time.Duration, error) {
				cpu, _, err := command(ctx, "tar", "-cf", output("tar"), "-C", tree, ".")
				return cpu, err
			},
		}
		res, err := h.measure(ctx, mode+" "+w.name, cacheState{dropAll: m == 0}, []candidate{lfs, ref})
		if err != nil {
			return nil, err
		}
		rows = append(rows, &storeMeasurement{workload: w, operation: mode, target: exportTarget, refName: ref.name,
			layerfs: res[lfs.name], reference: res[ref.name]})
	}
	return rows, nil
}

// removeLogged removes a measurement's scratch data, several trees at a
// time, and logs how long that took. Removing hundreds of thousands of
// files is the slowest part of a run on some machines (a file system
// mounted with online discard waits for the device on every journal
// commit), and doing it in parallel keeps the device busier.
func removeLogged(h *harness, dir string) {
	start := time.Now()
	entries, err := os.ReadDir(dir)
	if err != nil {
		h.log.Warn("remove scratch data", "dir", dir, "err", err)
	}
	work := make(chan string)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for p := range work {
				if err := os.RemoveAll(p); err != nil {
					h.log.Warn("remove scratch data", "path", p, "err", err)
				}
			}
		})
	}
	for _, e := range entries {
		work <- filepath.Join(dir, e.Name())
	}
	close(work)
	wg.Wait()
	if err := os.RemoveAll(dir); err != nil {
		h.log.Warn("remove scratch data", "dir", dir, "err", err)
	}
	h.log.Info("removed scratch data", "dir", filepath.Base(dir), "took", time.Since(start).Round(time.Millisecond))
}

func storeResult(rows []*storeMeasurement, exportCache string) *result {
	tbl := &table{header: []string{"workload", "operation", "layerfs", "reference", "reference median", "ratio", "target", "met", "tar -x without sync", "ratio to it"}}
	details := &table{header: []string{"workload", "operation", "candidate", "median", "min", "max", "CPU (user+sys, median)"}}
	for _, m := range rows {
		target, refName := m.target, m.refName
		lm, rm := median(m.layerfs.wall), median(m.reference.wall)
		r := ratio(lm, rm)
		met := "no"
		// Judged on the ratio as printed, so the table never contradicts itself.
		if math.Round(r*100)/100 <= target {
			met = "yes"
		}
		nosync, nosyncRatio := "–", "–"
		if m.nosync != nil {
			nm := median(m.nosync.wall)
			nosync, nosyncRatio = seconds(nm), fmt.Sprintf("%.2f", ratio(lm, nm))
		}
		tbl.add(m.workload.name, m.operation, seconds(lm), refName, seconds(rm), fmt.Sprintf("%.2f", r),
			fmt.Sprintf("≤ %.2f", target), met, nosync, nosyncRatio)
		add := func(name string, s *samples) {
			if s == nil {
				return
			}
			details.add(m.workload.name, m.operation, name, seconds(median(s.wall)), seconds(slices.Min(s.wall)), seconds(slices.Max(s.wall)), seconds(median(s.cpu)))
		}
		add("layerfs", m.layerfs)
		add(refName, m.reference)
		add("tar -x", m.nosync)
	}
	return &result{
		Intro: `Import: ` + "`layerfs --store S import X.tar`" + ` into a fresh store against
` + "`tar -xf X.tar -C DIR`" + ` into a fresh directory on the same file system,
with X.tar evicted from the page cache before every run (posix_fadvise
DONTNEED). layerfs syncs the file system (syncfs) before it publishes a
layer, so the reference is tar -x followed by ` + "`sync -f DIR`" + ` (also syncfs);
tar -x without any sync is in the last two columns. Nothing is deleted
between the runs of one measurement.

Export: ` + "`layerfs export ID -o OUT`" + ` (which reassembles the original tar bit
for bit from the tar-split record and the files, checking the stream's
sha256 against the diffID) against ` + "`tar -cf OUT -C DIR .`" + ` of the
layer's own directory in the store. "export" runs are ` + exportCache + `;
"export, warm cache" runs (only when the cold ones could be made) keep
everything cached and show the CPU cost.

Ratio = layerfs median / reference median; lower is better for layerfs.
Every timed command is a whole process started from Go, so both sides pay
for one exec.`,
		Table:   tbl,
		Details: details,
		Notes: []string{`Workloads are generated uncompressed tars: ` + "`imagegen.ManyFiles`" + ` (64 B to 1 KiB files in
directories of 1000), a few large files of random bytes, and a tree shaped
like a distribution root (libraries with symlinks, executables, some
hardlinks, Python sources, docs, man pages, locale files; log-uniform sizes).`},
	}
}
