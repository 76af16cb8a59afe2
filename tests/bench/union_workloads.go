package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// workloads lists the section's rows in the order they run: the warm
// ones first, while the freshly generated data is still cached (so their
// warm-up runs are cheap; the daemons' peak RSS is read right after the
// warm walks and readdirs), then the cold ones, then the writes, rm -rf
// last (the plain dir's runs delete files).
func (b *unionBench) workloads() []*unionWorkload {
	c, d := b.cfg, b.data
	walk := func(stack string, lowers []string, layers int, cold bool) *unionWorkload {
		w := &unionWorkload{id: "walk-" + stack + "-" + cacheLabel(cold), name: fmt.Sprintf("stat walk, %d files, %d layers", d.treeFiles, layers),
			cache: cacheLabel(cold), stack: stack, lowers: lowers, cold: cold, rssAfter: !cold,
			maxKernel: unionWarmWalk, run: b.walk, check: b.checkWalk}
		if cold {
			w.maxKernel = unionColdWalk
		}
		if stack == "deep" {
			w.deepOf = "walk-shallow-" + cacheLabel(cold)
		}
		return w
	}
	readdir := func(cold bool) *unionWorkload {
		w := &unionWorkload{id: "readdir-" + cacheLabel(cold), name: fmt.Sprintf("readdir, %d names, %d layers", d.dirNames, c.dirLayers),
			cache: cacheLabel(cold), stack: "wide", lowers: d.wide, cold: cold, rssAfter: !cold,
			maxKernel: unionWarmWalk, run: b.readdir, check: b.checkReaddir}
		if cold {
			w.maxKernel = unionColdWalk
		}
		return w
	}
	seqName := fmt.Sprintf("sequential read, %d MiB", c.seqMiB)
	seq := func(cold bool) *unionWorkload {
		w := &unionWorkload{id: "seq-" + cacheLabel(cold), name: seqName, cache: cacheLabel(cold), stack: "shallow",
			lowers: d.shallow, cold: cold, note: "passthrough " + b.probe.io(probeLowerRW), run: b.seqRead}
		if b.probe.passthrough(probeLowerRW) {
			w.maxKernel = unionSeqPassthru
		}
		return w
	}
	ro := &unionWorkload{id: "seq-ro", name: seqName + ", read-only view", cache: "cold", stack: "ro", lowers: d.shallow,
		readOnly: true, cold: true, run: b.seqRead}
	if b.probe.passthrough(probeLowerRO) {
		ro.maxKernel = unionSeqPassthru
		ro.note = "passthrough on"
	} else {
		ro.note = "passthrough " + b.probe.io(probeLowerRO)
	}
	write := func(w *unionWorkload) *unionWorkload {
		w.cache, w.stack, w.lowers, w.write = "fresh upper", "shallow", d.shallow, true
		return w
	}
	// Copy-ups of files with data, once more without durability: the
	// union and kernel overlayfs sync each copy before it shows,
	// fuse-overlayfs does not.
	noSync := func(w *unionWorkload) *unionWorkload {
		w = write(w)
		w.id += "-nosync"
		w.cache += ", no sync (fsync=0, volatile)"
		w.noSync = true
		return w
	}
	copyup := func() *unionWorkload {
		return &unionWorkload{id: "copyup", name: fmt.Sprintf("copy-up of %d × %d MiB files", c.copyupFiles, c.copyupMiB),
			warm: []string{"big/cu-"}, run: b.copyUp, check: b.checkCopyUp}
	}
	rename := func(plain string) *unionWorkload {
		run, check := b.renameIn(plain)
		return &unionWorkload{id: "rename", name: fmt.Sprintf("rename %d lower files", c.renameFiles),
			warm: []string{"ren"}, run: run, check: check}
	}
	return []*unionWorkload{
		walk("shallow", d.shallow, c.layers, false),
		walk("deep", d.deep, c.deepLayers, false),
		readdir(false),
		seq(false),
		walk("shallow", d.shallow, c.layers, true),
		walk("deep", d.deep, c.deepLayers, true),
		readdir(true),
		{id: "tar", name: fmt.Sprintf("read every file of %d directories (tar c | wc -c), %d files", len(d.readDirs), d.readFiles),
			cache: "cold", stack: "shallow", lowers: d.shallow, cold: true, run: b.tarRead, check: b.checkTar},
		seq(true),
		ro,
		{id: "random", name: fmt.Sprintf("%d random 4 KiB reads of the %d MiB file", c.randomReads, c.seqMiB),
			cache: "cold", stack: "shallow", lowers: d.shallow, cold: true, run: b.randomReads},
		write(&unionWorkload{id: "create", name: fmt.Sprintf("create %d small files", c.createFiles), run: b.create, check: b.checkCreate}),
		write(copyup()),
		noSync(copyup()),
		write(rename("ren")),
		noSync(rename("ren-nosync")),
		write(&unionWorkload{id: "untar", name: fmt.Sprintf("untar %d small files", d.untarFiles),
			warm: []string{d.untarTar}, prepare: b.prepareUntar, run: b.untar, check: b.checkUntar}),
		write(&unionWorkload{id: "rm", name: fmt.Sprintf("rm -rf of a lower tree, %d files in %d directories", c.rmFiles, d.rmDirs),
			warm: []string{"rm"}, plainLast: true, run: b.rmTree, check: b.checkRm}),
	}
}

func cacheLabel(cold bool) string {
	if cold {
		return "cold"
	}
	return "warm"
}

func (b *unionBench) walk(ctx context.Context, r *unionRun) (time.Duration, error) {
	cpu, out, err := command(ctx, "find", filepath.Join(r.root, "tree"), "-printf", "%y %s\n")
	r.out = out
	return cpu, err
}

func (b *unionBench) checkWalk(r *unionRun) error {
	var files, dirs int
	var bytes int64
	for _, l := range strings.Split(strings.TrimSuffix(r.out, "\n"), "\n") {
		t, size, _ := strings.Cut(l, " ")
		switch t {
		case "f":
			files++
			n, err := strconv.ParseInt(size, 10, 64)
			if err != nil {
				return fmt.Errorf("find line %q: %w", l, err)
			}
			bytes += n
		case "d":
			dirs++
		default:
			return fmt.Errorf("find line %q: want only files and directories", l)
		}
	}
	if files != b.data.treeFiles || dirs != b.data.treeDirs || bytes != b.data.treeBytes {
		return fmt.Errorf("walk saw %d files (%d bytes) and %d directories, want %d (%d bytes) and %d",
			files, bytes, dirs, b.data.treeFiles, b.data.treeBytes, b.data.treeDirs)
	}
	return nil
}

func (b *unionBench) readdir(ctx context.Context, r *unionRun) (time.Duration, error) {
	cpu, out, err := command(ctx, "ls", "-f", filepath.Join(r.root, "dir"))
	r.out = out
	return cpu, err
}

func (b *unionBench) checkReaddir(r *unionRun) error {
	if n := strings.Count(r.out, "\n"); n != b.data.dirNames+2 {
		return fmt.Errorf("ls -f listed %d names, want %d and . and ..", n, b.data.dirNames)
	}
	return nil
}

func (b *unionBench) tarRead(ctx context.Context, r *unionRun) (time.Duration, error) {
	args := append([]string{"-c", `dir=$1; shift; tar -cf - -C "$dir" "$@" | wc -c`, "sh", filepath.Join(r.root, "tree")}, b.data.readDirs...)
	cpu, out, err := command(ctx, "sh", args...)
	r.out = out
	return cpu, err
}

func (b *unionBench) checkTar(r *unionRun) error {
	n, err := strconv.ParseInt(strings.TrimSpace(r.out), 10, 64)
	if err != nil {
		return fmt.Errorf("wc -c said %q: %w", r.out, err)
	}
	if n != b.data.tarBytes {
		return fmt.Errorf("tar wrote %d bytes, want %d", n, b.data.tarBytes)
	}
	return nil
}

// inProcess runs f on a locked thread and returns the CPU time that thread
// spent (the syscalls of a blocking call run on the calling thread).
func inProcess(f func() error) (time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &before); err != nil {
		return 0, err
	}
	err := f()
	if gerr := unix.Getrusage(unix.RUSAGE_THREAD, &after); gerr != nil && err == nil {
		err = gerr
	}
	tv := func(t unix.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(after.Utime) - tv(before.Utime) + tv(after.Stime) - tv(before.Stime), err
}

func (b *unionBench) seqPath(r *unionRun) string {
	if r.kind == kindPlain {
		return b.data.seqLower
	}
	return filepath.Join(r.root, b.data.seqFile)
}

func (b *unionBench) seqRead(ctx context.Context, r *unionRun) (time.Duration, error) {
	name := b.seqPath(r)
	return inProcess(func() error {
		fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", name, err)
		}
		defer unix.Close(fd)
		buf := make([]byte, 1<<20)
		var total int64
		for {
			n, err := unix.Read(fd, buf)
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			if n == 0 {
				break
			}
			total += int64(n)
			if total%(256<<20) == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
		}
		if total != b.data.seqSize {
			return fmt.Errorf("read %d bytes of %s, want %d", total, name, b.data.seqSize)
		}
		return nil
	})
}

func (b *unionBench) randomReads(ctx context.Context, r *unionRun) (time.Duration, error) {
	name := b.seqPath(r)
	return inProcess(func() error {
		fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", name, err)
		}
		defer unix.Close(fd)
		if err := unix.Fadvise(fd, 0, 0, unix.FADV_RANDOM); err != nil {
			return fmt.Errorf("fadvise %s: %w", name, err)
		}
		rng := rand.New(rand.NewPCG(4096, 1))
		blocks := b.data.seqSize / 4096
		buf := make([]byte, 4096)
		for i := range b.cfg.randomReads {
			off := rng.Int64N(blocks) * 4096
			n, err := unix.Pread(fd, buf, off)
			if err != nil || n != len(buf) {
				return fmt.Errorf("pread %s at %d: %d bytes, %v", name, off, n, err)
			}
			if i%256 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
		}
		return nil
	})
}

func (b *unionBench) createDir(r *unionRun) string {
	return filepath.Join(r.root, "create-"+repTag(r.rep))
}

func (b *unionBench) create(ctx context.Context, r *unionRun) (time.Duration, error) {
	top := b.createDir(r)
	content := []byte(strings.Repeat("layerfs\n", 13)[:100])
	return inProcess(func() error {
		if err := unix.Mkdir(top, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", top, err)
		}
		dir := ""
		for i := range b.cfg.createFiles {
			if i%1000 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
				dir = filepath.Join(top, fmt.Sprintf("d%03d", i/1000))
				if err := unix.Mkdir(dir, 0o755); err != nil {
					return fmt.Errorf("mkdir %s: %w", dir, err)
				}
			}
			name := filepath.Join(dir, fmt.Sprintf("f%05d", i))
			fd, err := unix.Open(name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
			if err != nil {
				return fmt.Errorf("create %s: %w", name, err)
			}
			n, err := unix.Write(fd, content)
			if cerr := unix.Close(fd); err == nil {
				err = cerr
			}
			if err != nil || n != len(content) {
				return fmt.Errorf("write %s: %d bytes, %v", name, n, err)
			}
		}
		return nil
	})
}

func (b *unionBench) checkCreate(r *unionRun) error {
	last := b.cfg.createFiles - 1
	name := filepath.Join(b.createDir(r), fmt.Sprintf("d%03d", last/1000), fmt.Sprintf("f%05d", last))
	st, err := os.Stat(name)
	if err != nil {
		return err
	}
	if st.Size() != 100 {
		return fmt.Errorf("%s has %d bytes, want 100", name, st.Size())
	}
	return nil
}

func (b *unionBench) copyUp(ctx context.Context, r *unionRun) (time.Duration, error) {
	return inProcess(func() error {
		for _, rel := range b.data.copyFiles {
			name := filepath.Join(r.root, rel)
			fd, err := unix.Open(name, unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open %s for writing: %w", name, err)
			}
			_, err = unix.Pwrite(fd, []byte{'x'}, b.data.copySize/2)
			if cerr := unix.Close(fd); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("write %s: %w", name, err)
			}
		}
		return nil
	})
}

func (b *unionBench) checkCopyUp(r *unionRun) error {
	if r.upper == "" {
		return nil
	}
	for _, rel := range b.data.copyFiles {
		st, err := os.Stat(filepath.Join(r.upper, rel))
		if err != nil {
			return fmt.Errorf("the upper has no copy: %w", err)
		}
		if st.Size() != b.data.copySize {
			return fmt.Errorf("the upper copy of %s has %d bytes, want %d", rel, st.Size(), b.data.copySize)
		}
	}
	return nil
}

// ownCopy is dir in a view, the run's own copy of it in the plain dir
// (a workload that changes the tree needs a fresh one every run there).
func ownCopy(r *unionRun, dir string) string {
	if r.kind == kindPlain {
		return filepath.Join(r.root, dir+"-"+repTag(r.rep))
	}
	return filepath.Join(r.root, dir)
}

// renameDir is ren/ (ownCopy).
// renameDir is the ren/ a run renames in: the plain dir has copies named
// plain-<run> (a row of its own each).
func renameDir(r *unionRun, plain string) string {
	if r.kind == kindPlain {
		return filepath.Join(r.root, plain+"-"+repTag(r.rep))
	}
	return filepath.Join(r.root, "ren")
}

// renameIn returns the rename workload's run and check functions for the
// plain dir's copies named plain.
func (b *unionBench) renameIn(plain string) (func(context.Context, *unionRun) (time.Duration, error), func(*unionRun) error) {
	run := func(ctx context.Context, r *unionRun) (time.Duration, error) {
		return b.rename(ctx, renameDir(r, plain))
	}
	check := func(r *unionRun) error { return b.checkRename(renameDir(r, plain)) }
	return run, check
}

func (b *unionBench) rename(ctx context.Context, dir string) (time.Duration, error) {
	return inProcess(func() error {
		for i, rel := range b.data.renameRel {
			if i%256 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			from := filepath.Join(dir, rel)
			if err := unix.Rename(from, from+".moved"); err != nil {
				return fmt.Errorf("rename %s: %w", from, err)
			}
		}
		return nil
	})
}

func (b *unionBench) checkRename(dir string) error {
	for _, rel := range []string{b.data.renameRel[0], b.data.renameRel[len(b.data.renameRel)-1]} {
		if _, err := os.Lstat(filepath.Join(dir, rel+".moved")); err != nil {
			return err
		}
		if _, err := os.Lstat(filepath.Join(dir, rel)); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s still there after its rename (%v)", rel, err)
		}
	}
	return nil
}

func (b *unionBench) untarDir(r *unionRun) string {
	return filepath.Join(r.root, "untar-"+repTag(r.rep))
}

func (b *unionBench) prepareUntar(ctx context.Context, r *unionRun) error {
	return os.Mkdir(b.untarDir(r), 0o755)
}

func (b *unionBench) untar(ctx context.Context, r *unionRun) (time.Duration, error) {
	cpu, _, err := command(ctx, "tar", "-xf", b.data.untarTar, "-C", b.untarDir(r))
	return cpu, err
}

func (b *unionBench) checkUntar(r *unionRun) error {
	last := b.data.untarFiles - 1
	// imagegen.ManyFiles's names.
	_, err := os.Stat(filepath.Join(b.untarDir(r), "data", fmt.Sprintf("d%04d", last/1000), fmt.Sprintf("f%06d", last)))
	return err
}

// rmDir is rm/ (ownCopy).
func (b *unionBench) rmDir(r *unionRun) string { return ownCopy(r, "rm") }

func (b *unionBench) rmTree(ctx context.Context, r *unionRun) (time.Duration, error) {
	cpu, _, err := command(ctx, "rm", "-rf", b.rmDir(r))
	return cpu, err
}

func (b *unionBench) checkRm(r *unionRun) error {
	if _, err := os.Lstat(b.rmDir(r)); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s still there after rm -rf (%v)", b.rmDir(r), err)
	}
	return nil
}
