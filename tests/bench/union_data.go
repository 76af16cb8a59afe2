package main

import (
	"context"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/imagegen"
)

// unionData is the generated input of the union section: layer
// directories (top first) for the three stacks and the merged files in one
// plain directory. Every view path below is relative to the view's root.
type unionData struct {
	shallow []string // tree/, big/, rm/, ren/ over cfg.layers layers
	deep    []string // the shallow stack under cfg.deepLayers-cfg.layers directory-only layers
	wide    []string // dir/ (one huge directory) over cfg.dirLayers layers
	plain   string   // tree/, big/, dir/ merged, and per-run copies of rm/ and ren/

	treeFiles int      // regular files the view shows under tree/
	treeDirs  int      // directories under tree/, tree/ included
	treeBytes int64    // their total size
	readDirs  []string // the directories of tree/ the tar workload reads
	readFiles int      // the files in them
	tarBytes  int64    // what `tar -cf - -C VIEW/tree readDirs...` writes
	dirNames  int      // names in dir/

	seqFile    string   // big/seq.bin
	seqSize    int64    // its size
	seqLower   string   // its path in its layer: the plain candidate reads it there
	copyFiles  []string // big/cu-N.bin
	copySize   int64
	rmDirs     int // directories under rm/
	renameRel  []string
	untarTar   string // tar of cfg.untarFiles small files
	untarFiles int
}

// Layer directory names are kept short: 64 of them go into one -o
// lowerdir=... argument.
func layerDirs(root string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, filepath.Join(root, fmt.Sprintf("%02d", i)))
	}
	return out
}

// fileJob is one object the generator creates.
type fileJob struct {
	path     string
	size     int64
	seed     uint64
	whiteout bool // a 0/0 character device (overlay's whiteout)
}

// generateUnionData writes everything the section reads. Small files get
// 64 B to 1 KiB of pseudo-random bytes; the layout of a file is a function
// of its name, so every stack shows the same tree.
func generateUnionData(ctx context.Context, h *harness, base string, c unionConfig) (*unionData, error) {
	d := &unionData{
		shallow: layerDirs(filepath.Join(base, "s"), c.layers),
		wide:    layerDirs(filepath.Join(base, "w"), c.dirLayers),
		plain:   filepath.Join(base, "plain"),
	}
	// The deep stack: the shallow layers at the bottom, topped by layers
	// that hold every directory of tree/ and nothing else. The merged tree
	// is the same, so the plain dir and the expected results are too; each
	// name is found only below all of them, the worst case for a lookup.
	extra := layerDirs(filepath.Join(base, "d"), c.deepLayers-c.layers)
	d.deep = append(slices.Clone(extra), d.shallow...)

	var jobs []fileJob
	dirs := map[string]bool{}
	addDir := func(p string) { dirs[p] = true }
	add := func(j fileJob) {
		addDir(filepath.Dir(j.path))
		jobs = append(jobs, j)
	}

	// tree/: c.files files in directories of up to 1000, the files of
	// one directory spread over every layer; 1 in 50 also has an older
	// version one layer down, 1 in 100 names is a whiteout over a file one
	// layer down (hidden, not in the plain dir).
	perDir := min(1000, c.files)
	ndirs := (c.files + perDir - 1) / perDir
	d.treeDirs = ndirs + 1
	readDirs := min(ndirs, (c.readFiles+perDir-1)/perDir)
	for dn := range readDirs {
		d.readDirs = append(d.readDirs, fmt.Sprintf("d%03d", dn))
	}
	addDir(filepath.Join(d.plain, "tree"))
	for dn := range ndirs {
		for _, l := range extra {
			addDir(filepath.Join(l, "tree", fmt.Sprintf("d%03d", dn)))
		}
		for _, l := range d.shallow {
			addDir(filepath.Join(l, "tree", fmt.Sprintf("d%03d", dn)))
		}
		addDir(filepath.Join(d.plain, "tree", fmt.Sprintf("d%03d", dn)))
		for j := 0; j < perDir && dn*perDir+j < c.files; j++ {
			rel := filepath.Join("tree", fmt.Sprintf("d%03d", dn), fmt.Sprintf("f%05d", j))
			seed := nameSeed(rel)
			size := int64(64 + seed%961)
			home := (dn + j) % c.layers
			add(fileJob{path: filepath.Join(d.shallow[home], rel), size: size, seed: seed})
			add(fileJob{path: filepath.Join(d.plain, rel), size: size, seed: seed})
			d.treeFiles++
			d.treeBytes += size
			if dn < readDirs {
				d.tarBytes += 512 + (size+511)/512*512
				d.readFiles++
			}
			if home+1 < c.layers && j%50 == 1 {
				add(fileJob{path: filepath.Join(d.shallow[home+1], rel), size: size/2 + 1, seed: seed + 1})
			}
			if home+1 < c.layers && j%100 == 3 {
				hidden := filepath.Join("tree", fmt.Sprintf("d%03d", dn), fmt.Sprintf("w%05d", j))
				add(fileJob{path: filepath.Join(d.shallow[home], hidden), whiteout: true})
				add(fileJob{path: filepath.Join(d.shallow[home+1], hidden), size: 100, seed: seed + 2})
			}
		}
	}
	// GNU tar: a header per directory, a header and the data in
	// 512-byte blocks per file, two zero blocks, padded to a 10240-byte
	// record.
	d.tarBytes += int64(readDirs)*512 + 1024
	d.tarBytes = (d.tarBytes + 10239) / 10240 * 10240

	// dir/: one directory of c.dirEntries empty files, entry k in layer
	// k mod c.dirLayers.
	for k := range c.dirEntries {
		rel := filepath.Join("dir", fmt.Sprintf("e%07d", k))
		add(fileJob{path: filepath.Join(d.wide[k%c.dirLayers], rel)})
		add(fileJob{path: filepath.Join(d.plain, rel)})
	}
	d.dirNames = c.dirEntries

	// rm/: c.rmFiles empty files in directories of 100 over every layer:
	// removing them never frees a lower file's data, and empty files keep
	// the plain candidate's rm -rf from timing this disk's discards. The
	// plain dir gets one copy per run.
	rmPer := min(100, c.rmFiles)
	d.rmDirs = (c.rmFiles+rmPer-1)/rmPer + 1
	for k := range c.rmFiles {
		rel := filepath.Join(fmt.Sprintf("d%03d", k/rmPer), fmt.Sprintf("f%05d", k))
		add(fileJob{path: filepath.Join(d.shallow[k%c.layers], "rm", rel)})
		for rep := range h.reps {
			add(fileJob{path: filepath.Join(d.plain, "rm-"+repTag(rep), rel)})
		}
	}
	// ren/: c.renameFiles small files in directories of 100 over every
	// layer, renamed in place by the workload; the plain dir gets a copy
	// per run of each rename row.
	renPer := min(100, c.renameFiles)
	for k := range c.renameFiles {
		rel := filepath.Join(fmt.Sprintf("d%03d", k/renPer), fmt.Sprintf("f%05d", k))
		seed := nameSeed("ren/" + rel)
		size := int64(64 + seed%961)
		add(fileJob{path: filepath.Join(d.shallow[k%c.layers], "ren", rel), size: size, seed: seed})
		for rep := range h.reps {
			for _, copy := range []string{"ren-", "ren-nosync-"} {
				add(fileJob{path: filepath.Join(d.plain, copy+repTag(rep), rel), size: size, seed: seed})
			}
		}
		d.renameRel = append(d.renameRel, rel)
	}
	// Every layer exists, even one a small configuration leaves empty.
	for _, l := range slices.Concat(extra, d.shallow, d.wide) {
		addDir(l)
	}
	for _, sub := range []string{"tree", "dir", "big"} {
		addDir(filepath.Join(d.plain, sub))
	}

	h.log.Info("union: generating layers", "files", len(jobs), "dirs", len(dirs))
	if err := mkdirs(dirs); err != nil {
		return nil, err
	}
	if err := writeJobs(ctx, jobs); err != nil {
		return nil, err
	}

	// big/: the sequential-read file in a middle layer (the plain
	// candidate reads it there: it is a plain file) and the copy-up
	// files one layer up, with copies in the plain dir to write to.
	seqLayer := d.shallow[min(2, c.layers-1)]
	cuLayer := d.shallow[min(1, c.layers-1)]
	d.seqFile = "big/seq.bin"
	d.seqSize = int64(c.seqMiB) << 20
	d.seqLower = filepath.Join(seqLayer, d.seqFile)
	if err := writeBigFile(ctx, d.seqLower, d.seqSize, 1); err != nil {
		return nil, err
	}
	d.copySize = int64(c.copyupMiB) << 20
	for i := range c.copyupFiles {
		rel := fmt.Sprintf("big/cu-%d.bin", i)
		d.copyFiles = append(d.copyFiles, rel)
		for _, p := range []string{filepath.Join(cuLayer, rel), filepath.Join(d.plain, rel)} {
			if err := writeBigFile(ctx, p, d.copySize, uint64(i+2)); err != nil {
				return nil, err
			}
		}
	}

	// The untar input: imagegen.ManyFiles (64 B to 1 KiB files, 1000 a
	// directory).
	d.untarFiles = c.untarFiles
	data, err := imagegen.ManyFiles(c.untarFiles, 1000, 5)
	if err != nil {
		return nil, fmt.Errorf("untar input: %w", err)
	}
	d.untarTar = filepath.Join(base, "untar.tar")
	if err := os.WriteFile(d.untarTar, data, 0o644); err != nil {
		return nil, fmt.Errorf("untar input: %w", err)
	}
	unix.Sync()
	return d, nil
}

// repTag names a run's own copy or target: "1" for the first timed run,
// "0" for a warm-up run (rep -1).
func repTag(rep int) string { return fmt.Sprint(rep + 1) }

func nameSeed(name string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(name))
	return f.Sum64()
}

func mkdirs(dirs map[string]bool) error {
	list := make([]string, 0, len(dirs))
	for d := range dirs {
		list = append(list, d)
	}
	slices.Sort(list) // parents first
	for _, d := range list {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("generate: %w", err)
		}
	}
	return nil
}

// writeJobs creates the small files and whiteouts, a few at a time,
// cutting the files' bytes from one block of random bytes.
func writeJobs(ctx context.Context, jobs []fileJob) error {
	block := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{'u', 'n', 'i', 'o', 'n'}).Read(block)
	work := make(chan fileJob)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for j := range work {
				if err := writeJob(j, block); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	var err error
feed:
	for _, j := range jobs {
		select {
		case work <- j:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

func writeJob(j fileJob, block []byte) error {
	if j.whiteout {
		if err := unix.Mknod(j.path, unix.S_IFCHR|0o000, 0); err != nil {
			return fmt.Errorf("generate whiteout %s: %w", j.path, err)
		}
		return nil
	}
	off := j.seed % uint64(len(block)-int(j.size))
	if err := os.WriteFile(j.path, block[off:off+uint64(j.size)], 0o644); err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	return nil
}

// writeBigFile writes size bytes that no two MiB share.
func writeBigFile(ctx context.Context, path string, size int64, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	buf := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{byte(seed), 'b', 'i', 'g'}).Read(buf)
	for off := int64(0); off < size && err == nil; off += int64(len(buf)) {
		if err = ctx.Err(); err != nil {
			break
		}
		for i := 0; i < 8; i++ {
			buf[i] = byte(off >> (8 * i))
		}
		_, err = f.Write(buf[:min(int64(len(buf)), size-off)])
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("generate %s: %w", path, err)
	}
	return nil
}

// removeParallel removes dir's tree with many unlinks in flight: on a file
// system mounted with online discard (and no journal), every unlink of a
// file whose data reached the disk waits for the device, one at a time;
// in parallel they overlap.
func removeParallel(h *harness, dir string) {
	var dirs []string
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	work := make(chan string)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for d := range work {
				entries, _ := os.ReadDir(d)
				for _, e := range entries {
					if !e.IsDir() {
						os.Remove(filepath.Join(d, e.Name()))
					}
				}
			}
		})
	}
	for _, d := range dirs {
		work <- d
	}
	close(work)
	wg.Wait()
	if err := os.RemoveAll(dir); err != nil {
		h.log.Warn("remove scratch data", "dir", dir, "err", err)
	}
}
