package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// harness is what every section gets: where to put data, what to run and
// how to time it.
type harness struct {
	layerfs string // absolute path of the layerfs binary
	overlay string // absolute path of layerfs-overlay (or of layerfs, run by that name)
	scratch string // scratch dir on the filesystem being measured
	reps    int    // repetitions of every measurement
	quick   bool   // -quick: sections pick small workloads
	keep    bool   // -keep: leave generated inputs in the scratch dir
	cache   *cacheControl
	log     *slog.Logger
}

// dir makes a fresh directory under the scratch dir.
func (h *harness) dir(name string) (string, error) {
	d := filepath.Join(h.scratch, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("scratch %s: %w", d, err)
	}
	return d, nil
}

// candidate is one side of a comparison. A run that creates many files
// must create them under paths of its own (rep is -1 for a warm-up run)
// and leave them there until the measurement is over: on ext4, creating
// files right after many were deleted is slow (the inode allocator skips,
// one by one, inodes freed less than a minute ago while their inode table
// block is cached), and that would bill one candidate for the cleanup of
// another. The caller removes everything after the measurement.
type candidate struct {
	name    string
	prepare func(ctx context.Context, rep int) error // untimed, before the run
	run     func(ctx context.Context, rep int) (cpu time.Duration, err error)
	check   func(rep int) error // untimed, after the run: did it do its job?
}

// samples are the timings of one candidate, in run order.
type samples struct {
	wall []time.Duration
	cpu  []time.Duration // user+sys of the processes the run started
}

// cacheState is what the page cache should hold when each timed run of
// a measurement starts.
type cacheState struct {
	// dropAll: drop the whole page cache, data and metadata (needs root;
	// the measurement is warm where that is impossible).
	dropAll bool
	// evict: files to evict from the page cache (posix_fadvise
	// DONTNEED; works unprivileged), everything else staying cached.
	evict []string
}

// measure times every candidate h.reps times, interleaved: repetition i
// runs the candidates rotated by i (A B C, B C A, C A B, ...), so neither a
// slow phase of a shared machine nor going first favours one of them.
// Before every timed run the filesystem is synced, so no run pays for the
// writeback of the one before, and the page cache is put in state. A warm
// measurement (nothing dropped or evicted) starts with one untimed run of
// every candidate, so that every candidate finds what the others left
// cached.
func (h *harness) measure(ctx context.Context, what string, state cacheState, cands []candidate) (map[string]*samples, error) {
	return h.measureReps(ctx, what, state, cands, h.reps)
}

// measureReps is measure with reps runs of every candidate.
func (h *harness) measureReps(ctx context.Context, what string, state cacheState, cands []candidate, reps int) (map[string]*samples, error) {
	state.dropAll = state.dropAll && h.cache.canDrop
	out := map[string]*samples{}
	for _, c := range cands {
		out[c.name] = &samples{}
	}
	if !state.dropAll && len(state.evict) == 0 {
		for _, c := range cands {
			if _, _, err := h.timed(ctx, c, -1, state); err != nil {
				return nil, fmt.Errorf("%s: warm-up %s: %w", what, c.name, err)
			}
		}
	}
	for rep := 0; rep < reps; rep++ {
		order := slices.Concat(cands[rep%len(cands):], cands[:rep%len(cands)])
		for _, c := range order {
			wall, cpu, err := h.timed(ctx, c, rep, state)
			if err != nil {
				return nil, fmt.Errorf("%s: %s (run %d): %w", what, c.name, rep+1, err)
			}
			out[c.name].wall = append(out[c.name].wall, wall)
			out[c.name].cpu = append(out[c.name].cpu, cpu)
			h.log.Debug("timed", "what", what, "candidate", c.name, "run", rep+1, "wall", wall.Round(time.Millisecond), "cpu", cpu.Round(time.Millisecond))
		}
	}
	return out, nil
}

// timed runs one candidate once: prepare, settle, run (timed), check.
func (h *harness) timed(ctx context.Context, c candidate, rep int, state cacheState) (wall, cpu time.Duration, err error) {
	if c.prepare != nil {
		if err := c.prepare(ctx, rep); err != nil {
			return 0, 0, fmt.Errorf("prepare: %w", err)
		}
	}
	if err := h.cache.settle(ctx, state); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	cpu, err = c.run(ctx, rep)
	wall = time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	if c.check != nil {
		if err := c.check(rep); err != nil {
			return 0, 0, fmt.Errorf("check: %w", err)
		}
	}
	return wall, cpu, nil
}

// command runs name with args and returns the user+sys CPU time it used;
// its stdout is returned too, for the few commands whose output matters.
func command(ctx context.Context, name string, args ...string) (cpu time.Duration, stdout string, err error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return cpu, o.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(e.String()))
	}
	return cpu, o.String(), nil
}

// cacheControl puts the page cache in the state a measurement asks for.
type cacheControl struct {
	canDrop bool       // the whole page cache can be dropped (root, -cold)
	reason  string     // why it cannot, when it cannot
	warmUp  [][]string // commands that load the programs back after a drop
}

// newCacheControl tries one drop: cold runs are possible only if it works.
func newCacheControl(wantCold bool, log *slog.Logger) *cacheControl {
	c := &cacheControl{}
	if !wantCold {
		c.reason = "-cold=false"
		return c
	}
	if err := dropCaches(); err != nil {
		c.reason = err.Error()
		log.Warn("cannot drop the page cache; cold runs will be warm", "err", err)
		return c
	}
	c.canDrop = true
	return c
}

// keepWarm names programs whose code should be in memory when a cold run
// starts: the runs measure data, not loading a binary from disk (a Go
// binary is ~50 times the size of tar's and would otherwise pay for it).
func (c *cacheControl) keepWarm(argv ...string) {
	c.warmUp = append(c.warmUp, argv)
}

// dropDescription says what a dropAll measurement really did.
func (c *cacheControl) dropDescription() string {
	if c.canDrop {
		return "cold: the whole page cache dropped before every run (`echo 3 > /proc/sys/vm/drop_caches`; the programs loaded again, the data not)"
	}
	return "**warm**: the page cache could not be dropped (" + c.reason + "), so one untimed run of each candidate comes first"
}

// settle syncs, then puts the page cache in state.
func (c *cacheControl) settle(ctx context.Context, state cacheState) error {
	unix.Sync()
	for _, name := range state.evict {
		if err := evict(name); err != nil {
			return err
		}
	}
	if !state.dropAll || !c.canDrop {
		return nil
	}
	if err := dropCaches(); err != nil {
		return err
	}
	for _, argv := range c.warmUp {
		if _, _, err := command(ctx, argv[0], argv[1:]...); err != nil {
			return fmt.Errorf("reload %s: %w", argv[0], err)
		}
	}
	return nil
}

// evict drops a synced file's pages from the page cache.
func evict(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("evict %s: %w", name, err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("evict %s: %w", name, err)
	}
	return nil
}

// dropCaches drops the whole page cache: data, dentries and inodes.
func dropCaches() error { return writeDropCaches("3", "page cache") }

// dropDentries drops the dentry and inode caches, not the data.
func dropDentries() error { return writeDropCaches("2", "dentries and inodes") }

func writeDropCaches(value, what string) error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte(value+"\n"), 0); err != nil {
		return fmt.Errorf("drop %s: %w", what, err)
	}
	return nil
}

// median of ds; the mean of the middle two for an even count.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ratio of two medians, as a/b.
func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// seconds formats d for a table: three significant digits.
func seconds(d time.Duration) string {
	s := d.Seconds()
	switch {
	case s >= 100:
		return fmt.Sprintf("%.0f s", s)
	case s >= 10:
		return fmt.Sprintf("%.1f s", s)
	case s >= 1:
		return fmt.Sprintf("%.2f s", s)
	case s >= 0.01:
		return fmt.Sprintf("%.0f ms", s*1000)
	default:
		return fmt.Sprintf("%.2f ms", s*1000)
	}
}

// prefaultMemory touches up to limit bytes of the machine's available
// memory once (leaving 2 GiB), and gives it back. On a virtual machine the
// host backs a guest's memory when the guest first touches it, which
// costs whoever touches it first (seen here: 4 s of system time per GiB):
// a run reading gigabytes into pages never touched before took several
// times as long as the same run later. Touched once, they stay backed.
func prefaultMemory(limit int64, log *slog.Logger) {
	avail := memAvailable()
	n := min(limit, avail-2<<30)
	if n <= 0 {
		return
	}
	start := time.Now()
	const chunk = 256 << 20
	var maps [][]byte
	for done := int64(0); done < n; done += chunk {
		b, err := unix.Mmap(-1, 0, chunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
		if err != nil {
			break
		}
		maps = append(maps, b)
	}
	for _, b := range maps {
		unix.Munmap(b)
	}
	log.Info("memory touched once", "MiB", int64(len(maps))*chunk>>20, "took", time.Since(start).Round(time.Millisecond))
}

// memAvailable is MemAvailable from /proc/meminfo, 0 if unknown.
func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}
