package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/internal/imagegen"
	"github.com/layerfs/layerfs/kernel/overlay"
)

// viewsCreateTarget is the bound on creating and discarding a view
// of a 100k-file image, with either driver.
const viewsCreateTarget = time.Second

// viewsCommitReps bounds the runs of the commit measurement.
const viewsCommitReps = 3

// viewsConfig are the views section's flags; zero means "the default for
// the mode" (full or -quick).
type viewsConfig struct {
	layers      int // layers of the deep image (mount, umount)
	imageFiles  int // files of the big image (create + discard)
	commitFiles int // small files in the committed upper
}

func (c viewsConfig) resolve(quick bool) viewsConfig {
	def := viewsConfig{layers: 128, imageFiles: 100000, commitFiles: 100000}
	if quick {
		def = viewsConfig{layers: 16, imageFiles: 5000, commitFiles: 5000}
	}
	orDefault(&c.layers, def.layers)
	orDefault(&c.imageFiles, def.imageFiles)
	orDefault(&c.commitFiles, def.commitFiles)
	return c
}

// viewsSection times the view lifecycle: mount and umount of a deep image
// with each driver, creating and discarding a throwaway view of a big
// image, and committing an upper of many small files.
func viewsSection() section {
	return section{
		name:  "views",
		title: "Views: mount, umount, create and discard, commit",
		register: func(flags *flag.FlagSet) runFunc {
			var c viewsConfig
			flags.IntVar(&c.layers, "views-layers", 0, "views: layers of the image mounted and unmounted (default 128, 16 with -quick)")
			flags.IntVar(&c.imageFiles, "views-image-files", 0, "views: files of the image a throwaway view is made of (default 100000, 5000 with -quick)")
			flags.IntVar(&c.commitFiles, "views-commit-files", 0, "views: small files in the committed upper (default 100000, 5000 with -quick)")
			return func(ctx context.Context, h *harness) (*result, error) {
				return runViews(ctx, h, c.resolve(h.quick))
			}
		},
	}
}

// viewsRow is one measurement of one candidate.
type viewsRow struct {
	measurement string
	candidate   string
	s           *samples
	ref         *samples      // the measurement's reference (nil: this is it)
	target      time.Duration // absolute bound on the median (0: none)
}

// viewsBench holds what the measurements share.
type viewsBench struct {
	h      *harness
	store  string
	kernel bool   // the kernel driver can mount here
	noKern string // why not
	// split holds the parts of the create + discard runs, per driver.
	split map[string]*[2]samples
	// loadStart is the load average when the section started.
	loadStart string
}

// loadAverage is the 1-minute load average, or "?".
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(data)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

func (b *viewsBench) layerfs(ctx context.Context, args ...string) (time.Duration, string, error) {
	return command(ctx, b.h.layerfs, append([]string{"--store", b.store}, args...)...)
}

func (b *viewsBench) drivers() []string {
	if b.kernel {
		return []string{"kernel", "fuse"}
	}
	return []string{"fuse"}
}

func runViews(ctx context.Context, h *harness, c viewsConfig) (*result, error) {
	if err := needGNUTar(ctx); err != nil {
		return nil, err
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("the fuse driver needs /dev/fuse: %w", err)
	}
	base, err := h.dir("views")
	if err != nil {
		return nil, err
	}
	b := &viewsBench{h: h, store: filepath.Join(base, "store"), split: map[string]*[2]samples{}, loadStart: loadAverage()}
	defer func() {
		// The layers (several of 100k files) go first, several at a time.
		removeLogged(h, filepath.Join(b.store, "layers"))
		removeLogged(h, base)
	}()
	// The same choice `layerfs mount --driver auto` makes, on the
	// filesystem the store is on.
	probe := overlay.Supported(overlay.ProbeOptions{Dir: base, Options: overlay.ViewOptions(nil, "u", "w", overlay.InUserNamespace())})
	b.kernel, b.noKern = probe.OK, probe.Reason
	if !b.kernel {
		h.log.Warn("views: the kernel driver is not available; measuring the union only", "reason", probe.Reason)
	}

	var rows []viewsRow
	deep, err := b.deepImage(ctx, base, c.layers)
	if err != nil {
		return nil, err
	}
	r, err := b.measureMounts(ctx, base, deep, c.layers)
	if err != nil {
		return nil, err
	}
	rows = append(rows, r...)

	big, err := b.bigImage(ctx, base, c.imageFiles)
	if err != nil {
		return nil, err
	}
	r, err = b.measureCreateDiscard(ctx, big, c.imageFiles)
	if err != nil {
		return nil, err
	}
	rows = append(rows, r...)

	// The big image is not used again: when it holds as many files as the
	// commit needs, they are moved (renamed) out of its layer dir into the
	// upper instead of being written, and later removed, once more.
	reuse := ""
	if c.commitFiles == c.imageFiles {
		if reuse, err = b.layerPath(ctx, big); err != nil {
			return nil, err
		}
	}
	r, err = b.measureCommit(ctx, base, c.commitFiles, reuse)
	if err != nil {
		return nil, err
	}
	rows = append(rows, r...)
	return b.result(rows, c), nil
}

// importLayout imports an OCI layout of uncompressed layers as name.
func (b *viewsBench) importLayout(ctx context.Context, base, name string, layers [][]byte) error {
	layout := filepath.Join(base, "layout-"+strings.ReplaceAll(name, ":", "-"))
	if _, err := imagegen.WriteOCILayout(layout, layers, compression.None, name); err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	if _, _, err := b.layerfs(ctx, "import-image", layout); err != nil {
		return err
	}
	return os.RemoveAll(layout)
}

// deepImage imports an image of n small layers: each adds a directory of
// its own and a file to a directory every layer shares.
func (b *viewsBench) deepImage(ctx context.Context, base string, n int) (string, error) {
	var layers [][]byte
	for i := range n {
		entries := []imagegen.Entry{
			{Name: "etc/", Type: tar.TypeDir},
			{Name: fmt.Sprintf("etc/layer%03d.conf", i), Type: tar.TypeReg, Content: []byte(fmt.Sprintf("layer %d\n", i))},
			{Name: fmt.Sprintf("opt/l%03d/", i), Type: tar.TypeDir},
		}
		if i == 0 {
			entries = append([]imagegen.Entry{{Name: "opt/", Type: tar.TypeDir}}, entries...)
		}
		for f := range 8 {
			entries = append(entries, imagegen.Entry{Name: fmt.Sprintf("opt/l%03d/f%d", i, f), Type: tar.TypeReg, Content: []byte(strings.Repeat("x", 100*f))})
		}
		t, err := imagegen.Tar(entries)
		if err != nil {
			return "", err
		}
		layers = append(layers, t)
	}
	name := fmt.Sprintf("deep%d:1", n)
	h := b.h
	start := time.Now()
	if err := b.importLayout(ctx, base, name, layers); err != nil {
		return "", err
	}
	h.log.Info("views: deep image imported", "layers", n, "took", time.Since(start).Round(time.Millisecond))
	return name, nil
}

// bigImage imports imagegen.ManyFiles(n) as a one-layer image.
func (b *viewsBench) bigImage(ctx context.Context, base string, n int) (string, error) {
	data, err := imagegen.ManyFiles(n, 1000, 7)
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("files%d:1", n)
	start := time.Now()
	if err := b.importLayout(ctx, base, name, [][]byte{data}); err != nil {
		return "", err
	}
	b.h.log.Info("views: big image imported", "files", n, "took", time.Since(start).Round(time.Millisecond))
	return name, nil
}

// layerPath is the directory of the top layer of image.
func (b *viewsBench) layerPath(ctx context.Context, image string) (string, error) {
	_, out, err := b.layerfs(ctx, "inspect", image)
	if err != nil {
		return "", err
	}
	var img struct {
		Layers []string `json:"layers"`
	}
	if err := json.Unmarshal([]byte(out), &img); err != nil || len(img.Layers) == 0 {
		return "", fmt.Errorf("inspect %s: no layers in %q (%v)", image, out, err)
	}
	_, out, err = b.layerfs(ctx, "inspect", "-f", "{{.path}}", img.Layers[len(img.Layers)-1])
	return strings.TrimSpace(out), err
}

// measureMounts times `layerfs mount --driver D VIEW DIR` and `layerfs
// umount DIR` of a view of image, one view per driver (the kernel's index
// ties an upper to the first driver's bookkeeping otherwise).
func (b *viewsBench) measureMounts(ctx context.Context, base, image string, layers int) ([]viewsRow, error) {
	views, targets := map[string]string{}, map[string]string{}
	for _, d := range b.drivers() {
		_, out, err := b.layerfs(ctx, "create", image)
		if err != nil {
			return nil, err
		}
		views[d] = strings.TrimSpace(out)
		targets[d] = filepath.Join(base, "mnt-"+d)
		if err := os.Mkdir(targets[d], 0o755); err != nil {
			return nil, err
		}
	}
	defer func() {
		for _, d := range b.drivers() {
			if viewsMounted(targets[d]) {
				b.layerfs(context.Background(), "umount", "--lazy", targets[d])
			}
		}
	}()
	mount := func(ctx context.Context, d string) (time.Duration, error) {
		cpu, _, err := b.layerfs(ctx, "mount", "--driver", d, views[d], targets[d])
		return cpu, err
	}
	umount := func(ctx context.Context, d string) (time.Duration, error) {
		cpu, _, err := b.layerfs(ctx, "umount", targets[d])
		return cpu, err
	}
	isMounted := func(d string, want bool) error {
		if viewsMounted(targets[d]) != want {
			return fmt.Errorf("%s: mounted is %v, want %v", targets[d], !want, want)
		}
		return nil
	}
	var mountCands, umountCands []candidate
	for _, d := range b.drivers() {
		mountCands = append(mountCands, candidate{
			name: d,
			run:  func(ctx context.Context, rep int) (time.Duration, error) { return mount(ctx, d) },
			check: func(rep int) error {
				if err := isMounted(d, true); err != nil {
					return err
				}
				if _, err := umount(ctx, d); err != nil {
					return err
				}
				return isMounted(d, false)
			},
		})
		umountCands = append(umountCands, candidate{
			name: d,
			prepare: func(ctx context.Context, rep int) error {
				_, err := mount(ctx, d)
				return err
			},
			run:   func(ctx context.Context, rep int) (time.Duration, error) { return umount(ctx, d) },
			check: func(rep int) error { return isMounted(d, false) },
		})
	}
	what := fmt.Sprintf("%d-layer image", layers)
	var rows []viewsRow
	for _, m := range []struct {
		op    string
		cands []candidate
	}{{"mount", mountCands}, {"umount", umountCands}} {
		res, err := b.h.measure(ctx, m.op+" "+what, cacheState{}, m.cands)
		if err != nil {
			return nil, err
		}
		rows = append(rows, b.driverRows(m.op+", "+what, res, 0)...)
	}
	return rows, nil
}

// driverRows turns a per-driver measurement into rows, the kernel's first
// as the reference.
func (b *viewsBench) driverRows(measurement string, res map[string]*samples, target time.Duration) []viewsRow {
	var rows []viewsRow
	var ref *samples
	for _, d := range b.drivers() {
		row := viewsRow{measurement: measurement, candidate: d, s: res[d], ref: ref, target: target}
		if ref == nil {
			ref = res[d]
		}
		rows = append(rows, row)
	}
	return rows
}

// measureCreateDiscard times what a shell script does for a throwaway
// view: `layerfs mount --tmp --driver D IMAGE` (a new view, mounted in a
// new temp dir) then `layerfs umount DIR` (unmounted, view and dir
// removed), as one run.
func (b *viewsBench) measureCreateDiscard(ctx context.Context, image string, files int) ([]viewsRow, error) {
	var cands []candidate
	for _, d := range b.drivers() {
		var dir string
		parts := &[2]samples{}
		b.split[d] = parts
		cands = append(cands, candidate{
			name: d,
			run: func(ctx context.Context, rep int) (time.Duration, error) {
				start := time.Now()
				cpu, out, err := b.layerfs(ctx, "mount", "--tmp", "--driver", d, image)
				if err != nil {
					return cpu, err
				}
				mounted := time.Now()
				dir = strings.TrimSpace(out)
				ucpu, _, err := b.layerfs(ctx, "umount", dir)
				if rep >= 0 {
					parts[0].wall = append(parts[0].wall, mounted.Sub(start))
					parts[0].cpu = append(parts[0].cpu, cpu)
					parts[1].wall = append(parts[1].wall, time.Since(mounted))
					parts[1].cpu = append(parts[1].cpu, ucpu)
				}
				return cpu + ucpu, err
			},
			check: func(rep int) error {
				if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("umount left %s (%v)", dir, err)
				}
				return nil
			},
		})
	}
	res, err := b.h.measure(ctx, "create and discard", cacheState{}, cands)
	if err != nil {
		return nil, err
	}
	return b.driverRows(fmt.Sprintf("create + discard a view, %d-file image", files), res, viewsCreateTarget), nil
}

// measureCommit times `layerfs commit --keep` of a view whose upper holds
// n small files against `tar -c` of the same files. Every run commits onto
// a parent of its own, so every run registers a new layer: a commit of the
// same upper onto the same parent would find its layer stored and skip
// the work. The one upper moves (rename) from view to view between runs.
// Each run leaves a layer of n files behind, and removing them is the
// slowest part of the section, so this measurement makes at most
// viewsCommitReps runs (and the warm-up).
func (b *viewsBench) measureCommit(ctx context.Context, base string, n int, reuse string) ([]viewsRow, error) {
	hc := *b.h
	hc.reps = min(hc.reps, viewsCommitReps)
	h := &hc
	runDir := filepath.Join(base, "commit")
	if err := os.Mkdir(runDir, 0o755); err != nil {
		return nil, err
	}
	defer removeLogged(h, runDir)
	// A parent layer and a view per run, warm-up (rep -1) included.
	uppers := map[int]string{}
	for rep := -1; rep < h.reps; rep++ {
		t, err := imagegen.Tar([]imagegen.Entry{{Name: fmt.Sprintf("parent%d", rep+1), Type: tar.TypeReg, Content: []byte("parent\n")}})
		if err != nil {
			return nil, err
		}
		p := filepath.Join(runDir, fmt.Sprintf("parent%d.tar", rep+1))
		if err := os.WriteFile(p, t, 0o644); err != nil {
			return nil, err
		}
		_, out, err := b.layerfs(ctx, "import", p)
		if err != nil {
			return nil, err
		}
		_, out, err = b.layerfs(ctx, "create", "--name", fmt.Sprintf("commit%d", rep+1), strings.TrimSpace(out))
		if err != nil {
			return nil, err
		}
		uppers[rep] = filepath.Join(b.store, "views", strings.TrimSpace(out), "upper")
	}
	// The files: moved from reuse, or extracted into the first upper.
	cur := uppers[-1]
	if reuse != "" {
		ents, err := os.ReadDir(reuse)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if err := os.Rename(filepath.Join(reuse, e.Name()), filepath.Join(cur, e.Name())); err != nil {
				return nil, err
			}
		}
	} else {
		data, err := imagegen.ManyFiles(n, 1000, 11)
		if err != nil {
			return nil, err
		}
		filesTar := filepath.Join(runDir, "files.tar")
		if err := os.WriteFile(filesTar, data, 0o644); err != nil {
			return nil, err
		}
		if _, _, err := command(ctx, "tar", "-xf", filesTar, "-C", cur); err != nil {
			return nil, err
		}
		if err := os.Remove(filesTar); err != nil {
			return nil, err
		}
	}

	out := filepath.Join(runDir, "out.tar")
	removeOut := func(context.Context, int) error {
		if err := os.Remove(out); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	commit := candidate{
		name: "layerfs commit --keep",
		prepare: func(ctx context.Context, rep int) error {
			if cur == uppers[rep] {
				return nil
			}
			if err := os.Remove(uppers[rep]); err != nil {
				return err
			}
			if err := os.Rename(cur, uppers[rep]); err != nil {
				return err
			}
			cur = uppers[rep]
			return nil
		},
		run: func(ctx context.Context, rep int) (time.Duration, error) {
			if rep < 0 {
				// The warm-up: tar -c's reads the upper into the
				// page cache for both, and a commit would leave one
				// more layer of n files to remove.
				return 0, nil
			}
			cpu, _, err := b.layerfs(ctx, "commit", "--keep", fmt.Sprintf("commit%d", rep+1))
			return cpu, err
		},
	}
	tarC := candidate{
		name:    "tar -c",
		prepare: removeOut,
		run: func(ctx context.Context, rep int) (time.Duration, error) {
			cpu, _, err := command(ctx, "tar", "-cf", out, "-C", cur, ".")
			return cpu, err
		},
	}
	start := time.Now()
	res, err := h.measure(ctx, "commit", cacheState{}, []candidate{tarC, commit})
	if err != nil {
		return nil, err
	}
	h.log.Info("views: commit measured", "files", n, "took", time.Since(start).Round(time.Second))
	what := fmt.Sprintf("commit, upper of %d small files", n)
	return []viewsRow{
		{measurement: what, candidate: tarC.name, s: res[tarC.name]},
		{measurement: what, candidate: commit.name, s: res[commit.name], ref: res[tarC.name]},
	}, nil
}

// viewsMounted reports whether dir is a mount point.
func viewsMounted(dir string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func (b *viewsBench) result(rows []viewsRow, c viewsConfig) *result {
	tbl := &table{header: []string{"measurement", "candidate", "median", "min", "max", "CPU (median)", "ratio", "target", "met"}}
	for _, r := range rows {
		m := median(r.s.wall)
		ratioCell := "–"
		if r.ref != nil {
			ratioCell = fmt.Sprintf("%.2f", ratio(m, median(r.ref.wall)))
		}
		target, met := "–", "–"
		if r.target > 0 {
			target = "< " + seconds(r.target)
			met = "no"
			if m < r.target {
				met = "yes"
			}
		}
		tbl.add(r.measurement, r.candidate, seconds(m), seconds(slices.Min(r.s.wall)), seconds(slices.Max(r.s.wall)),
			seconds(median(r.s.cpu)), ratioCell, target, met)
	}
	details := &table{header: []string{"create + discard", "driver", "mount --tmp (median)", "umount (median)", "CPU of each (median)"}}
	for _, d := range b.drivers() {
		p := b.split[d]
		if p == nil || len(p[0].wall) == 0 {
			continue
		}
		details.add(fmt.Sprintf("%d-file image", c.imageFiles), d, seconds(median(p[0].wall)), seconds(median(p[1].wall)),
			seconds(median(p[0].cpu))+" / "+seconds(median(p[1].cpu)))
	}
	notes := []string{`Ratio: the median over the median of the measurement's first row (the
kernel driver; for the commit, tar -c); lower is better. CPU is user+sys
of the command's own process: the daemon of a union mount (started by
layerfs mount, serving until layerfs umount) is not in it.`}
	if !b.kernel {
		notes = append(notes, "The kernel driver was not measured: "+b.noKern+".")
	}
	notes = append(notes, fmt.Sprintf("Load average (1 min) when the section started: %s; when it ended: %s. "+
		"Other work on the machine inflates the absolute times; the ratios compare runs made side by side.", b.loadStart, loadAverage()))
	return &result{
		Intro: fmt.Sprintf(`Mount and umount: `+"`layerfs mount --driver D VIEW DIR`"+` and `+"`layerfs umount DIR`"+` of a
view of a %d-layer image (each layer a directory of its own and a file
in one directory every layer shares), one view per driver. The kernel
driver mounts with redirect_dir=on and index=on; umount of a kernel view
also reads the kernel's index into the upper (fusefs.AdoptKernelIndex).
The union's mount includes starting its daemon and waiting until the
mount answers; its umount waits for the daemon to exit.

Create + discard: `+"`layerfs mount --tmp --driver D IMAGE`"+` (a new view of a
one-layer image of %d small files, mounted in a new temp dir) then
`+"`layerfs umount DIR`"+` (unmounted, view and dir removed), timed as one run;
the issue asks for well under a second with either driver.

Commit: `+"`layerfs commit --keep VIEW`"+` of an unmounted view whose upper
holds %d small files (64 B to 1 KiB, directories of 1000), against
`+"`tar -cf OUT -C UPPER .`"+` of the same files. A commit does more than tar -c:
it writes the layer tar from the upper, and registers it as an import
does (unpacked into the store with its tar-split record, hashed, synced;
see the store section for import against tar -x). Every commit goes onto
a parent layer of its own so that each one registers a new layer; --keep
leaves the upper in place (without it the view moves onto the new layer
and its old upper is deleted). Median of %d runs (each leaves a layer of
that many files to remove). All runs warm: one untimed run of tar -c
first, which reads the upper into the page cache for both, nothing
dropped from it.`, c.layers, c.imageFiles, c.commitFiles, min(b.h.reps, viewsCommitReps)),
		Table:   tbl,
		Details: details,
		Notes:   notes,
	}
}
