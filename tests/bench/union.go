package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// unionConfig are the union section's flags; zero means "the default for
// the mode" (full or -quick).
type unionConfig struct {
	files       int // small files under tree/
	readFiles   int // of which tar reads this many (whole directories)
	layers      int // layers of the shallow stack
	deepLayers  int // layers of the deep stack
	dirEntries  int // names in the one huge directory
	dirLayers   int // layers it is spread over
	seqMiB      int // size of the sequential-read file
	randomReads int // 4 KiB reads at random offsets of it
	createFiles int // small files created in the view
	copyupFiles int // lower files copied up
	copyupMiB   int // size of each
	rmFiles     int // files of the lower tree removed with rm -rf
	renameFiles int // lower files renamed
	untarFiles  int // small files in the tar extracted into the view
}

func (c unionConfig) resolve(quick bool) unionConfig {
	def := unionConfig{files: 100000, readFiles: 10000, layers: 5, deepLayers: 64, dirEntries: 100000, dirLayers: 4, seqMiB: 2048,
		randomReads: 5000, createFiles: 20000, copyupFiles: 2, copyupMiB: 256, rmFiles: 5000, renameFiles: 2000, untarFiles: 5000}
	if quick {
		def = unionConfig{files: 5000, readFiles: 2000, layers: 5, deepLayers: 64, dirEntries: 5000, dirLayers: 4, seqMiB: 64,
			randomReads: 500, createFiles: 1000, copyupFiles: 1, copyupMiB: 16, rmFiles: 500, renameFiles: 200, untarFiles: 1000}
	}
	orDefault(&c.files, def.files)
	orDefault(&c.readFiles, def.readFiles)
	orDefault(&c.layers, def.layers)
	orDefault(&c.deepLayers, def.deepLayers)
	orDefault(&c.dirEntries, def.dirEntries)
	orDefault(&c.dirLayers, def.dirLayers)
	orDefault(&c.seqMiB, def.seqMiB)
	orDefault(&c.randomReads, def.randomReads)
	orDefault(&c.createFiles, def.createFiles)
	orDefault(&c.copyupFiles, def.copyupFiles)
	orDefault(&c.copyupMiB, def.copyupMiB)
	orDefault(&c.rmFiles, def.rmFiles)
	orDefault(&c.renameFiles, def.renameFiles)
	orDefault(&c.untarFiles, def.untarFiles)
	return c
}

func (c unionConfig) validate() error {
	for _, v := range []struct {
		name string
		v    int
	}{{"files", c.files}, {"read-files", c.readFiles}, {"layers", c.layers}, {"deep-layers", c.deepLayers}, {"dir-entries", c.dirEntries},
		{"dir-layers", c.dirLayers}, {"seq-mib", c.seqMiB}, {"random-reads", c.randomReads}, {"create-files", c.createFiles},
		{"copyup-files", c.copyupFiles}, {"copyup-mib", c.copyupMiB}, {"rm-files", c.rmFiles},
		{"rename-files", c.renameFiles}, {"untar-files", c.untarFiles}} {
		if v.v < 1 {
			return fmt.Errorf("-union-%s must be at least 1", v.name)
		}
	}
	if c.deepLayers <= c.layers {
		return fmt.Errorf("-union-deep-layers (%d) must exceed -union-layers (%d)", c.deepLayers, c.layers)
	}
	if c.deepLayers > 500 {
		return errors.New("-union-deep-layers: overlayfs stacks at most 500 layers")
	}
	return nil
}

// Targets of the union section (the issue's): faster than fuse-overlayfs
// everywhere; against kernel overlayfs within 2x on cold metadata walks,
// 1.2x warm, and 1.1x on sequential reads where passthrough is on; a deep
// stack at most 1.5x as slow as a shallow one; no more memory than
// fuse-overlayfs.
// warmRepsFactor: warm rows run this many times the section's runs.
const warmRepsFactor = 3

const (
	unionVsFuseOv      = 1.0 // union/fuse-overlayfs must be below this
	unionColdWalk      = 2.0
	unionWarmWalk      = 1.2
	unionSeqPassthru   = 1.1
	unionDeepOverShall = 1.5
)

func unionSection() section {
	return section{
		name:  "union",
		title: "Union: layerfs-overlay against kernel overlayfs and fuse-overlayfs",
		register: func(flags *flag.FlagSet) runFunc {
			var c unionConfig
			flags.IntVar(&c.files, "union-files", 0, "union: small files in the walked tree (default 100000, 5000 with -quick)")
			flags.IntVar(&c.readFiles, "union-read-files", 0, "union: files of the tree read by tar, whole directories of 1000 (default 10000, 2000 with -quick)")
			flags.IntVar(&c.layers, "union-layers", 0, "union: layers of the shallow stack (default 5)")
			flags.IntVar(&c.deepLayers, "union-deep-layers", 0, "union: layers of the deep stack (default 64)")
			flags.IntVar(&c.dirEntries, "union-dir-entries", 0, "union: names in the huge directory (default 100000, 5000 with -quick)")
			flags.IntVar(&c.dirLayers, "union-dir-layers", 0, "union: layers the huge directory is spread over (default 4)")
			flags.IntVar(&c.seqMiB, "union-seq-mib", 0, "union: MiB of the sequentially read file (default 2048, 64 with -quick)")
			flags.IntVar(&c.randomReads, "union-random-reads", 0, "union: 4 KiB random reads of that file (default 5000, 500 with -quick)")
			flags.IntVar(&c.createFiles, "union-create-files", 0, "union: small files created (default 20000, 1000 with -quick)")
			flags.IntVar(&c.copyupFiles, "union-copyup-files", 0, "union: lower files copied up (default 2, 1 with -quick)")
			flags.IntVar(&c.copyupMiB, "union-copyup-mib", 0, "union: MiB of each copied-up file (default 256, 16 with -quick)")
			flags.IntVar(&c.rmFiles, "union-rm-files", 0, "union: files of the lower tree removed by rm -rf (default 5000, 500 with -quick)")
			flags.IntVar(&c.renameFiles, "union-rename-files", 0, "union: lower files renamed (default 2000, 200 with -quick)")
			flags.IntVar(&c.untarFiles, "union-untar-files", 0, "union: small files untarred into the view (default 5000, 1000 with -quick)")
			return func(ctx context.Context, h *harness) (*result, error) {
				c := c.resolve(h.quick)
				if err := c.validate(); err != nil {
					return nil, err
				}
				return runUnion(ctx, h, c)
			}
		},
	}
}

// unionBench is one run of the section.
type unionBench struct {
	h      *harness
	cfg    unionConfig
	data   *unionData
	m      *mounter
	uppers string // every upper and work dir, one per view
	rows   []*unionRow
	rss    []*rssRow
	probe  *passthroughProbe
}

// unionRow is one workload's measurement.
type unionRow struct {
	w       *unionWorkload
	samples map[unionKind]*samples
	// externalDrops counts cache drops by other processes while the
	// row was measured (page cache and dentry/inode drops apart).
	externalDrops int64
}

// rssRow is the peak RSS of the two daemons after a workload.
type rssRow struct {
	after          string
	union, fuseOv  int64
	unionErr, fErr error
}

func runUnion(ctx context.Context, h *harness, c unionConfig) (*result, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the union section mounts kernel overlayfs and needs root")
	}
	if err := needGNUTar(ctx); err != nil {
		return nil, err
	}
	base, err := h.dir("union")
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(base, ":,") {
		return nil, fmt.Errorf("scratch dir %s: a path with ':' or ',' cannot go into lowerdir=", base)
	}
	if !h.keep {
		defer removeParallel(h, base)
	}
	m, err := newMounter(h, filepath.Join(base, "mnt"))
	if err != nil {
		return nil, err
	}
	// Whatever happens from here on (an error, ^C), no mount stays.
	defer m.unmountAll()
	b := &unionBench{h: h, cfg: c, m: m, uppers: filepath.Join(base, "up")}
	for _, argv := range [][]string{{"find", "--version"}, {"ls", "--version"}, {"tar", "--version"},
		{"sh", "-c", "true"}, {"wc", "--version"}, {"rm", "--version"}} {
		h.cache.keepWarm(argv...)
	}

	if !h.quick {
		// The section reads gigabytes into the page cache.
		prefaultMemory(8<<30, h.log)
	}
	start := time.Now()
	if b.data, err = generateUnionData(ctx, h, filepath.Join(base, "data"), c); err != nil {
		return nil, err
	}
	h.log.Info("union: data generated", "took", time.Since(start).Round(time.Second))
	if b.probe, err = probePassthrough(ctx, h, m, filepath.Join(base, "probe")); err != nil {
		return nil, err
	}

	for _, w := range b.workloads() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		start := time.Now()
		row, err := b.measureRow(ctx, w)
		if err != nil {
			return nil, err
		}
		b.rows = append(b.rows, row)
		h.log.Info("union: measured", "workload", w.label(), "took", time.Since(start).Round(time.Second))
		if w.rssAfter {
			b.rss = append(b.rss, b.peakRSS(w.label()))
		}
		if w.write {
			// The uppers of a write workload are unmounted now, but kept
			// until the end (see removeParallel): deleting files on
			// this disk slows the creation of new ones for a minute.
			// Copy-ups are few files and gigabytes: they go at once.
			m.unmountAll()
			if strings.HasPrefix(w.id, "copyup") {
				removeParallel(h, filepath.Join(b.uppers, w.id))
			}
		}
	}
	m.unmountAll()
	return b.result(), nil
}

// peakRSS reads the two daemons' VmHWM.
func (b *unionBench) peakRSS(after string) *rssRow {
	r := &rssRow{after: after}
	read := func(k unionKind) (int64, error) {
		pid := b.m.daemon(k)
		if pid == 0 {
			return 0, fmt.Errorf("%s is not mounted", k)
		}
		return peakRSS(pid)
	}
	r.union, r.unionErr = read(kindUnion)
	r.fuseOv, r.fErr = read(kindFuseOv)
	return r
}

// unionRun is one timed run of one candidate: where its view is.
type unionRun struct {
	kind  unionKind
	rep   int
	root  string // the view's root: the mount point, or the plain dir
	upper string // the view's upper dir ("" for the plain dir and read-only views)
	out   string // the run's output, for its (untimed) check
}

// unionWorkload is one row of the table.
type unionWorkload struct {
	id       string   // for upper dir names
	name     string   // what is done, for the table
	cache    string   // the cache state, for the table
	stack    string   // "shallow", "deep", "wide"
	lowers   []string // the stack's layers
	readOnly bool     // mount without an upper: a read-only view
	write    bool     // a fresh upper per run
	noSync   bool     // mount without durability (viewSpec.noSync)
	cold     bool     // remount and drop the page cache before every run
	// plainLast: time the plain dir after the overlays rather than
	// interleaved with them (its runs delete files, and creating files
	// on this disk is slow for a minute after a deletion).
	plainLast bool
	rssAfter  bool // read the daemons' peak RSS after this row
	// warm are the paths a write workload reads, cached before its runs:
	// relative ones in every layer and as name prefixes in the plain dir,
	// absolute ones as they are.
	warm []string
	// targets against kernel overlay (0: none) and against the union on
	// the shallow stack (the row with that id).
	maxKernel float64
	deepOf    string
	note      string // why a target does not apply
	prepare   func(ctx context.Context, r *unionRun) error
	run       func(ctx context.Context, r *unionRun) (time.Duration, error)
	check     func(r *unionRun) error
}

func (w *unionWorkload) label() string { return w.name + ", " + w.cache }

// measureRow times the workload on every candidate.
func (b *unionBench) measureRow(ctx context.Context, w *unionWorkload) (*unionRow, error) {
	current := map[unionKind]*unionRun{}
	kindID := map[unionKind]string{kindUnion: "union", kindKernel: "kernel", kindFuseOv: "fuseov"}
	cand := func(k unionKind) candidate {
		return candidate{
			name: k.String(),
			prepare: func(ctx context.Context, rep int) error {
				r := &unionRun{kind: k, rep: rep, root: b.data.plain}
				if k != kindPlain {
					spec := viewSpec{lowers: w.lowers, noSync: w.noSync}
					if !w.readOnly {
						dir := filepath.Join(b.uppers, "read-"+w.stack+"-"+kindID[k])
						if w.write {
							dir = filepath.Join(b.uppers, w.id, kindID[k]+"-"+repTag(rep))
						}
						spec.upper, spec.work = filepath.Join(dir, "upper"), filepath.Join(dir, "work")
						for _, d := range []string{spec.upper, spec.work} {
							if err := os.MkdirAll(d, 0o755); err != nil {
								return err
							}
						}
						r.upper = spec.upper
					}
					var err error
					if w.write || w.cold {
						r.root, err = b.m.remount(ctx, k, spec)
					} else {
						r.root, err = b.m.ensure(ctx, k, spec)
					}
					if err != nil {
						return err
					}
				}
				current[k] = r
				if w.prepare != nil {
					return w.prepare(ctx, r)
				}
				return nil
			},
			run: func(ctx context.Context, rep int) (time.Duration, error) {
				pid := b.m.daemon(k)
				before := procCPU(pid)
				cpu, err := w.run(ctx, current[k])
				return cpu + procCPU(pid) - before, err
			},
			check: func(rep int) error {
				if w.check == nil {
					return nil
				}
				return w.check(current[k])
			},
		}
	}
	state := cacheState{dropAll: w.cold}
	if w.write {
		if err := b.warmLowers(ctx, w); err != nil {
			return nil, err
		}
	}
	groups := [][]unionKind{unionKinds}
	if !w.cold && !w.write {
		order, err := b.kernelFirst()
		if err != nil {
			return nil, err
		}
		groups = [][]unionKind{order}
	}
	if w.plainLast {
		groups = [][]unionKind{{kindUnion, kindKernel, kindFuseOv}, {kindPlain}}
	}
	// Another process dropping the page cache (another benchmark) turns
	// a warm run into a cold one: such a warm row is measured once more.
	var row *unionRow
	for attempt := 1; ; attempt++ {
		row = &unionRow{w: w, samples: map[unionKind]*samples{}}
		beforePC, beforeSlab := dropsSoFar()
		for _, g := range groups {
			var cands []candidate
			for _, k := range g {
				cands = append(cands, cand(k))
			}
			measure := b.h.measure
			switch {
			case w.write:
				measure = b.measureWithoutWarmUp
			case !w.cold:
				// Warm runs take a fraction of a second and the
				// kernel's caches serve them for every FUSE
				// candidate alike: more runs keep the medians
				// steady.
				measure = func(ctx context.Context, what string, state cacheState, cands []candidate) (map[string]*samples, error) {
					return b.h.measureReps(ctx, what, state, cands, warmRepsFactor*b.h.reps)
				}
			}
			res, err := measure(ctx, w.label(), state, cands)
			if err != nil {
				return nil, err
			}
			for _, k := range g {
				row.samples[k] = res[k.String()]
			}
		}
		own := int64(0)
		if w.cold && b.h.cache.canDrop {
			own = int64(b.h.reps * len(unionKinds))
		}
		afterPC, afterSlab := dropsSoFar()
		row.externalDrops = max(0, afterPC-beforePC-own) + max(0, afterSlab-beforeSlab-own)
		if row.externalDrops == 0 || w.cold || w.write || attempt == 2 {
			return row, nil
		}
		b.h.log.Warn("union: another process dropped the page cache during a warm row; measuring it again", "workload", w.label(), "drops", row.externalDrops)
	}
}

// kernelFirst readies the dentry cache for a warm row so that it favours
// no candidate, and returns the order the row's candidates go in (and so
// warm up in). A walk of the kernel overlay leaves a negative dentry for
// every name in every layer that lacks it (6.3 million for the 64-layer
// stack), and the kernel's dentry hash chains are newest first: a dentry
// made before those sits behind them in its chain, and walks through it
// cost about 20% more. Warmed up in table order, the union and the plain
// dir (walked in an earlier row) paid that in every 64-layer warm row and
// fuse-overlayfs, warmed up after the kernel overlay, did not. So the
// dentries and inodes go first (drop_caches 2; the data stays cached) and
// the kernel overlay warms up before the others.
func (b *unionBench) kernelFirst() ([]unionKind, error) {
	if b.h.cache.canDrop {
		if err := dropDentries(); err != nil {
			return nil, err
		}
	}
	order := []unionKind{kindKernel}
	for _, k := range unionKinds {
		if k != kindKernel {
			order = append(order, k)
		}
	}
	return order, nil
}

// dropsSoFar is how many times the page cache (pagecache) and the
// dentries and inodes (slab) were dropped on this machine so far:
// drop_caches writes, counted in /proc/vmstat. Both are 0 when unknown.
func dropsSoFar() (pagecache, slab int64) {
	data, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		k, v, _ := strings.Cut(l, " ")
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "drop_pagecache":
			pagecache = n
		case "drop_slab":
			slab = n
		}
	}
	return pagecache, slab
}

// measureWithoutWarmUp is harness.measure without its warm-up runs, for
// the write workloads: every run mounts a fresh upper anyway, and what
// the runs read of the lowers was warmed beforehand (warmLowers), so a
// whole untimed run of every candidate would only add minutes of writes.
func (b *unionBench) measureWithoutWarmUp(ctx context.Context, what string, state cacheState, cands []candidate) (map[string]*samples, error) {
	out := map[string]*samples{}
	for _, c := range cands {
		out[c.name] = &samples{}
	}
	for rep := 0; rep < b.h.reps; rep++ {
		order := slices.Concat(cands[rep%len(cands):], cands[:rep%len(cands)])
		for _, c := range order {
			wall, cpu, err := b.h.timed(ctx, c, rep, state)
			if err != nil {
				return nil, fmt.Errorf("%s: %s (run %d): %w", what, c.name, rep+1, err)
			}
			out[c.name].wall = append(out[c.name].wall, wall)
			out[c.name].cpu = append(out[c.name].cpu, cpu)
			b.h.log.Debug("timed", "what", what, "candidate", c.name, "run", rep+1, "wall", wall.Round(time.Millisecond), "cpu", cpu.Round(time.Millisecond))
		}
	}
	return out, nil
}

// warmLowers reads what a write workload will read of the lowers (and its
// copies in the plain dir) into the page cache, so every candidate finds
// them cached: an lstat of every entry and a read of every file.
func (b *unionBench) warmLowers(ctx context.Context, w *unionWorkload) error {
	var roots []string
	for _, rel := range w.warm {
		if filepath.IsAbs(rel) {
			roots = append(roots, rel)
			continue
		}
		for _, l := range w.lowers {
			roots = append(roots, filepath.Join(l, rel))
		}
		matches, err := filepath.Glob(filepath.Join(b.data.plain, rel+"*"))
		if err != nil {
			return err
		}
		roots = append(roots, matches...)
	}
	buf := make([]byte, 1<<20)
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil || !e.Type().IsRegular() {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			for {
				if _, err := f.Read(buf); err == io.EOF {
					return nil
				} else if err != nil {
					return err
				}
			}
		})
		if err != nil {
			return fmt.Errorf("warm %s: %w", root, err)
		}
	}
	return nil
}

// result renders the main table, the details and the notes.
func (b *unionBench) result() *result {
	tbl := &table{header: []string{"workload", "union median", "kernel overlay", "fuse-overlayfs", "plain dir",
		"ratio union/kernel", "ratio union/fuse-overlayfs", "target", "met"}}
	details := &table{header: []string{"workload", "candidate", "median", "min", "max", "CPU (client + daemon, median)"}}
	byID := map[string]*unionRow{}
	for _, r := range b.rows {
		byID[r.w.id] = r
	}
	var misses []string
	for _, r := range b.rows {
		med := func(k unionKind) time.Duration { return median(r.samples[k].wall) }
		u, k, f, p := med(kindUnion), med(kindKernel), med(kindFuseOv), med(kindPlain)
		rk, rf := ratio(u, k), ratio(u, f)
		var targets []string
		met := true
		judge := func(ok bool, text string) {
			targets = append(targets, text)
			met = met && ok
		}
		judge(round2(rf) < unionVsFuseOv, "< fuse-overlayfs")
		if r.w.maxKernel > 0 {
			judge(round2(rk) <= r.w.maxKernel, fmt.Sprintf("≤ %.1f× kernel", r.w.maxKernel))
		}
		if s := byID[r.w.deepOf]; s != nil {
			d := ratio(u, median(s.samples[kindUnion].wall))
			judge(round2(d) <= unionDeepOverShall, fmt.Sprintf("≤ %.1f× %d layers (is %.2f×)", unionDeepOverShall, b.cfg.layers, d))
		}
		if r.w.note != "" {
			targets = append(targets, r.w.note)
		}
		metText := "yes"
		if !met {
			metText = "no"
			misses = append(misses, r.w.label())
		}
		tbl.add(r.w.label(), seconds(u), seconds(k), seconds(f), seconds(p),
			fmt.Sprintf("%.2f", rk), fmt.Sprintf("%.2f", rf), strings.Join(targets, "; "), metText)
		for _, kind := range unionKinds {
			s := r.samples[kind]
			details.add(r.w.label(), kind.String(), seconds(median(s.wall)), seconds(slices.Min(s.wall)),
				seconds(slices.Max(s.wall)), seconds(median(s.cpu)))
		}
	}
	for _, r := range b.rss {
		name := "peak RSS of the daemon (VmHWM) after " + r.after
		if r.unionErr != nil || r.fErr != nil {
			tbl.add(name, errText(r.union, r.unionErr), "–", errText(r.fuseOv, r.fErr), "–", "–", "–", "≤ fuse-overlayfs", "no")
			misses = append(misses, name)
			continue
		}
		rf := float64(r.union) / float64(r.fuseOv)
		met := "yes"
		if round2(rf) > 1 {
			met = "no"
			misses = append(misses, name)
		}
		tbl.add(name, mibText(r.union), "–", mibText(r.fuseOv), "–", "–", fmt.Sprintf("%.2f", rf), "≤ fuse-overlayfs", met)
	}
	notes := []string{b.methodNote()}
	var disturbed []string
	for _, r := range b.rows {
		if r.externalDrops > 0 {
			disturbed = append(disturbed, fmt.Sprintf("%s (%d)", r.w.label(), r.externalDrops))
		}
	}
	if len(disturbed) > 0 {
		notes = append(notes, "Other processes (other benchmarks on this shared machine) dropped the page cache or the dentry and inode caches while these rows were measured (drop events counted in /proc/vmstat's drop_pagecache and drop_slab; a warm row so disturbed was measured once more, and the figures above and here are from that second measurement): "+strings.Join(disturbed, "; ")+".")
	}
	if len(misses) > 0 {
		notes = append(notes, "Targets missed in this run: "+strings.Join(misses, "; ")+".")
	} else {
		notes = append(notes, "Every target was met in this run.")
	}
	return &result{Intro: b.intro(), Table: tbl, Details: details, Notes: notes}
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

func mibText(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func errText(n int64, err error) string {
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return mibText(n)
}

func (b *unionBench) intro() string {
	c, d := b.cfg, b.data
	var s strings.Builder
	fmt.Fprintf(&s, `The same workloads on four views of the same generated layers, in one
run: **layerfs union** (fusefs, mounted as `+"`layerfs-overlay -o lowerdir=L1:L2:...,upperdir=U,workdir=W MNT`"+`,
which forks its daemon as fuse-overlayfs does), **kernel overlay** (overlayfs
with the kernel's default options: no index, no redirect_dir, no metacopy),
**fuse-overlayfs** (%s, the Debian package, default options, same -o
line) and **plain dir** (the merged files copied into one ordinary
directory on the same file system: the limit). Lower the better; ratio =
union median / other median.

Data (generated once per run, on the scratch file system): tree/ holds
%d files of 64 B to 1 KiB (%s) in %d directories of up to 1000, each
directory spread over every layer of a %d-layer stack, 1 file in 50 shadowing
an older version one layer down and 1 name in 100 a whiteout (a 0/0
character device) over a file one layer down. The %d-layer stack is those %d
layers under %d layers that hold every directory of tree/ and nothing else:
the same merged tree, each name found only below all of them. dir/ is one
directory of %d empty files spread over %d layers. big/ holds a %d MiB file
(its plain-dir candidate reads it in its layer, where it is a plain file)
and %d file(s) of %d MiB to copy up. rm/ (%d empty files) and ren/ (%d small files)
are spread over the %d layers too.

Before the data is generated the section touches up to 8 GiB of the
machine's free memory once: on a virtual machine the host backs the
guest's memory at first touch, which cost whichever run read gigabytes
into never-touched pages first several times its time.

Views: every view but the read-only one has an upper and a work dir on the
scratch file system; write workloads get a fresh, empty upper for every run
(a new directory, mounted before the timed part; nothing is deleted until
the section ends), the plain dir a fresh copy or target directory; they
have no warm-up run, the lower files they read are read once before
their first run instead. Mounting and unmounting are never timed.
**cold** runs remount the view before every run, so that a FUSE daemon
starts with empty caches of its own, and then are %s. **warm** runs keep
the view mounted and start after one untimed run of every candidate; they
are repeated %d times as often as the others (they are short, and the
kernel's caches serve them for both FUSE programs, so their medians are
close). Before a warm row the dentry and inode caches are dropped
(drop_caches 2, the data stays) and the kernel overlay warms up first:
its walks leave a negative dentry for every name a layer lacks (millions
on the 64-layer stack), and the kernel's dentry hash chains put the
newest first, so whichever candidate warmed up before it would walk
behind them (about 20%% slower). Rows run in the table's order.

%s`, fuseOvVersion(), c.files, mib(d.treeBytes), d.treeDirs-1, c.layers, c.deepLayers, c.layers, c.deepLayers-c.layers,
		c.dirEntries, c.dirLayers, c.seqMiB, c.copyupFiles, c.copyupMiB, c.rmFiles, c.renameFiles, c.layers,
		b.h.cache.dropDescription(), warmRepsFactor, b.probe.text())
	return s.String()
}

func (b *unionBench) methodNote() string {
	return `Workloads: stat walk = ` + "`find VIEW/tree -printf '%y %s\\n'`" + ` (an lstat of every
entry; the counts and byte total are checked); readdir = ` + "`ls -f VIEW/dir`" + `
(no stat; the name count is checked); read of every file = ` + "`tar -cf - -C VIEW/tree d000 d001 ... | wc -c`" + `
over whole directories of tree/ (the byte count is checked against the GNU
tar format); sequential read =
read(2) of 1 MiB at a time to the end; random reads = pread(2) of 4 KiB at
offsets from a fixed seed, after posix_fadvise RANDOM; create = mkdir and
open(O_CREAT|O_EXCL), a 100-byte write and close per file, 1000 a
directory; copy-up = open(O_WRONLY) and a 1-byte write to each big file
(the upper copy's size is checked); rm -rf = ` + "`rm -rf VIEW/rm`" + `; renames =
rename(2) of every file of ren/ to a new name in its directory; untar =
` + "`tar -xf FILE -C VIEW/untar-N`" + `. A copy-up of a file with data is synced
(fsync) before the copy shows, by the union and by kernel overlayfs, so
that a power loss cannot leave an empty copy in the upper; fuse-overlayfs
does not sync. The copy-up and rename rows are therefore run twice: with
every program's defaults, and with none syncing (` + "`fsync=0`" + ` for the
FUSE programs, ` + "`volatile`" + ` for the kernel). The in-process workloads (sequential and random
reads, create, copy-up, renames) are timed inside the bench process;
the others are one process each. CPU = user+sys of the client plus that
of the FUSE daemon during the run (read from /proc/PID/stat). For
rm -rf, the plain dir's runs come after the overlays' rather than
interleaved with them: on an ext4 without a journal, inodes freed less
than a minute ago slow down the creation of new ones, which would bill
the overlays' whiteouts for the plain dir's deletions. Peak RSS is VmHWM
from /proc/PID/status of the daemon serving the view, read right after
the warm runs of the workload named (the view then served a cold run, a
warm-up run and every warm run).`
}

func fuseOvVersion() string {
	_, out, err := command(context.Background(), "fuse-overlayfs", "--version")
	if err != nil {
		return "version unknown"
	}
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "fuse-overlayfs: "); ok {
			return strings.TrimSpace(v)
		}
	}
	return "version unknown"
}
