// Command bench measures layerfs against the tools it replaces and writes
// the results into docs/BENCHMARKS.md (`make bench`).
//
// Every number it publishes is a ratio between candidates measured in the
// same run on the same data, never an absolute time: the machines this runs
// on are shared and noisy. To keep noise from favouring one side, the
// candidates are interleaved (A B C, B C A, ...), every measurement is
// repeated (-reps) and the median is reported, and the file system is
// synced and the page cache put in a known state before every timed run:
// the input evicted (posix_fadvise), or, for cold runs, the whole cache
// dropped (as root; otherwise the section says "warm").
//
// The output file is made of sections, each between the markers
// <!-- section:NAME --> and <!-- /section:NAME -->. A run regenerates the
// sections named by -sections and keeps the others as they are, so one
// section can be refreshed without re-running the rest.
//
// Adding a section: write a function returning a section (see store.go),
// list it in allSections, and give it its own flags in its register
// function. Its run function gets the harness (scratch dir, binaries,
// repetitions, cache control, measure) and returns a result whose main
// table the harness renders under the section heading together with the
// machine it ran on.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// section is one part of the benchmark document.
type section struct {
	// name is the -sections key and the marker name in the document.
	name string
	// title is the section's Markdown heading, without the "## ".
	title string
	// register adds the section's own flags to flags and returns the
	// function that runs the section with their parsed values.
	register func(flags *flag.FlagSet) runFunc
}

// runFunc measures one section.
type runFunc func(ctx context.Context, h *harness) (*result, error)

// result is what a section found.
type result struct {
	// Intro says what was measured and how (Markdown), above the table.
	Intro string
	// Table is the section's main table.
	Table *table
	// Details is an optional second table (spread, CPU time) below it.
	Details *table
	// Notes are Markdown paragraphs after the tables.
	Notes []string
}

// allSections lists every section in document order.
func allSections() []section {
	return []section{storeSection(), unionSection(), viewsSection()}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	sections := allSections()
	var names []string
	for _, s := range sections {
		names = append(names, s.name)
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "docs/BENCHMARKS.md", "Markdown file to write; sections not run are kept")
	only := fs.String("sections", strings.Join(names, ","), "comma-separated sections to run: "+strings.Join(names, ", "))
	quick := fs.Bool("quick", false, "small workloads and fewer repetitions (under a minute)")
	reps := fs.Int("reps", 0, "repetitions of every measurement (default 5, 3 with -quick)")
	cold := fs.Bool("cold", true, "let cold measurements drop the whole page cache before every run (needs root; they are warm otherwise)")
	workdir := fs.String("workdir", "", "directory for scratch data; its filesystem is what is measured (default /var/tmp, else $TMPDIR)")
	keep := fs.Bool("keep", false, "keep the scratch directory and the generated inputs (to profile by hand)")
	layerfsBin := fs.String("layerfs", "", "layerfs binary to measure, with layerfs-overlay beside it (default: ./cmd/layerfs and ./cmd/layerfs-overlay built into bin/ first, so the figures are the tree's)")
	verbose := fs.Bool("v", false, "log every timed run")
	runners := map[string]runFunc{}
	for _, s := range sections {
		runners[s.name] = s.register(fs)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var chosen []section
	for _, n := range strings.Split(*only, ",") {
		n = strings.TrimSpace(n)
		i := slices.IndexFunc(sections, func(s section) bool { return s.name == n })
		if i < 0 {
			return fmt.Errorf("unknown section %q (have %s)", n, strings.Join(names, ", "))
		}
		chosen = append(chosen, sections[i])
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *layerfsBin == "" {
		// A binary left by an earlier `make build` would measure old
		// code under today's date. Static, as make build makes them.
		*layerfsBin = filepath.Join("bin", "layerfs")
		for _, name := range []string{"layerfs", "layerfs-overlay"} {
			build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join("bin", name), "./cmd/"+name)
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := build.CombinedOutput(); err != nil {
				return fmt.Errorf("build bin/%s: %w: %s", name, err, out)
			}
		}
	}
	bin, err := filepath.Abs(*layerfsBin)
	if err != nil {
		return err
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() {
		return fmt.Errorf("layerfs binary %s not found: run `make build` or pass -layerfs", bin)
	}
	// layerfs-overlay beside it, else layerfs itself (which answers to
	// the name).
	overlayBin := filepath.Join(filepath.Dir(bin), "layerfs-overlay")
	if st, err := os.Stat(overlayBin); err != nil || st.IsDir() {
		overlayBin = bin
	}
	base := *workdir
	if base == "" {
		base = defaultWorkBase()
	}
	scratch, err := os.MkdirTemp(base, "layerfs-bench-")
	if err != nil {
		return fmt.Errorf("scratch dir: %w", err)
	}
	if *keep {
		log.Info("keeping scratch dir", "dir", scratch)
	} else {
		defer os.RemoveAll(scratch)
	}
	if *reps <= 0 {
		*reps = 5
		if *quick {
			*reps = 3
		}
	}
	h := &harness{
		layerfs: bin,
		overlay: overlayBin,
		scratch: scratch,
		reps:    *reps,
		quick:   *quick,
		keep:    *keep,
		log:     log,
	}
	h.cache = newCacheControl(*cold, log)
	machine, err := describeMachine(scratch)
	if err != nil {
		return err
	}
	command := commandLine(args)

	for _, s := range chosen {
		start := time.Now()
		log.Info("section start", "section", s.name)
		res, err := runners[s.name](ctx, h)
		if err != nil {
			return fmt.Errorf("section %s: %w", s.name, err)
		}
		body := renderSection(s, res, machine, h, command)
		if err := updateDocument(*out, s.name, body, sections); err != nil {
			return err
		}
		log.Info("section done", "section", s.name, "took", time.Since(start).Round(time.Second), "out", *out)
	}
	return nil
}

// commandLine is how the document credits a run: `make bench` when make
// ran it with its usual arguments, the go run line otherwise.
func commandLine(args []string) string {
	goRun := "go run ./tests/bench"
	if len(args) > 0 {
		goRun += " " + strings.Join(args, " ")
	}
	// The arguments the Makefile's bench target passes.
	makeBench := []string{"-out", "docs/BENCHMARKS.md"}
	if os.Getenv("MAKELEVEL") != "" && slices.Equal(args, makeBench) {
		return "`make bench` (`" + goRun + "`)"
	}
	return "`" + goRun + "`"
}

// defaultWorkBase prefers /var/tmp, which is disk-backed on most systems,
// over a /tmp that may be tmpfs and would measure memory, not a disk.
func defaultWorkBase() string {
	if st, err := os.Stat("/var/tmp"); err == nil && st.IsDir() {
		if f, err := os.CreateTemp("/var/tmp", ".layerfs-bench-probe-"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return "/var/tmp"
		}
	}
	return os.TempDir()
}

// orDefault sets a section flag left at zero ("the default for the mode")
// to that default.
func orDefault(v *int, def int) {
	if *v == 0 {
		*v = def
	}
}
