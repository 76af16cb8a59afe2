package main

import (
	"archive/tar"
	"bufio"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/imagegen"
)

// workload is one generated, uncompressed layer tar.
type workload struct {
	name string // for the tables: what it holds
	tar  string // path of the tar
	size int64  // bytes of the tar
}

func finishWorkload(name, file string) (*workload, error) {
	st, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", file, err)
	}
	return &workload{name: fmt.Sprintf("%s (%s tar)", name, mib(st.Size())), tar: file, size: st.Size()}, nil
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

// smallFilesWorkload is imagegen.ManyFiles: n files of 64 B to 1 KiB in
// directories of 1000.
func smallFilesWorkload(file string, n int) (*workload, error) {
	data, err := imagegen.ManyFiles(n, 1000, 1)
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", file, err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return nil, fmt.Errorf("workload %s: %w", file, err)
	}
	return finishWorkload(fmt.Sprintf("%d small files", n), file)
}

// largeFilesWorkload writes files regular files of random bytes, totalMiB
// in all, streamed so the tar is never held in memory.
func largeFilesWorkload(file string, files, totalMiB int) (*workload, error) {
	err := writeTar(file, func(tw *tar.Writer) error {
		rng := rand.NewChaCha8([32]byte{'l', 'a', 'y', 'e', 'r', 'f', 's'})
		if err := tw.WriteHeader(&tar.Header{Name: "blobs/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: benchTime()}); err != nil {
			return err
		}
		per := int64(totalMiB) << 20 / int64(files)
		buf := make([]byte, 1<<20)
		for i := 0; i < files; i++ {
			hdr := &tar.Header{Name: fmt.Sprintf("blobs/blob%02d.bin", i), Typeflag: tar.TypeReg, Mode: 0o644, Size: per, ModTime: benchTime()}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			for left := per; left > 0; {
				chunk := buf[:min(left, int64(len(buf)))]
				rng.Read(chunk)
				if _, err := tw.Write(chunk); err != nil {
					return err
				}
				left -= int64(len(chunk))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", file, err)
	}
	return finishWorkload(fmt.Sprintf("%d large files", files), file)
}

// mixedTreeWorkload is a tree shaped like a distribution's root file
// system: per package a shared library with its symlinks, an executable
// (some hardlinked under a second name), many small source files, docs,
// a man page, locale files and a config file. Sizes are log-uniform over
// the ranges such files have, so most entries are small and most bytes
// are in a few big ones, as in real images.
func mixedTreeWorkload(file string, packages int) (*workload, error) {
	entries := 0
	err := writeTar(file, func(tw *tar.Writer) error {
		g := &treeGen{tw: tw, rng: rand.New(rand.NewPCG(7, 11)), dirs: map[string]bool{}}
		for p := 0; p < packages; p++ {
			if err := g.pkg(fmt.Sprintf("pkg%03d", p), p); err != nil {
				return err
			}
		}
		entries = g.entries
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", file, err)
	}
	return finishWorkload(fmt.Sprintf("mixed tree, %d entries", entries), file)
}

// treeGen writes the mixed tree, each parent directory once before its
// first child.
type treeGen struct {
	tw      *tar.Writer
	rng     *rand.Rand
	dirs    map[string]bool
	entries int
}

func (g *treeGen) pkg(name string, index int) error {
	lib := fmt.Sprintf("usr/lib/x86_64-linux-gnu/lib%s.so", name)
	steps := []func() error{
		func() error { return g.file(lib+".1.2.3", 0o644, g.size(16<<10, 1<<20), false) },
		func() error { return g.symlink(lib+".1", path.Base(lib)+".1.2.3") },
		func() error { return g.symlink(lib, path.Base(lib)+".1") },
		func() error { return g.file("usr/bin/"+name, 0o755, g.size(8<<10, 512<<10), false) },
		func() error { return g.file("usr/share/doc/"+name+"/copyright", 0o644, g.size(512, 16<<10), true) },
		func() error { return g.file("usr/share/doc/"+name+"/changelog", 0o644, g.size(1<<10, 64<<10), true) },
		func() error { return g.file("usr/share/man/man1/"+name+".1", 0o644, g.size(1<<10, 12<<10), true) },
		func() error { return g.file("etc/"+name+"/"+name+".conf", 0o644, g.size(64, 4<<10), true) },
	}
	if index%8 == 0 {
		steps = append(steps, func() error { return g.hardlink("usr/bin/"+name+"-alias", "usr/bin/"+name) })
	}
	for _, lang := range []string{"de", "fr", "ja"} {
		steps = append(steps, func() error {
			return g.file("usr/share/locale/"+lang+"/LC_MESSAGES/"+name+".mo", 0o644, g.size(512, 32<<10), false)
		})
	}
	for m := 0; m < 20; m++ {
		dir := []string{"", "core/", "util/"}[m%3]
		steps = append(steps, func() error {
			return g.file(fmt.Sprintf("usr/lib/python3/dist-packages/%s/%smod%02d.py", name, dir, m), 0o644, g.size(128, 32<<10), true)
		})
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

// size is log-uniform in [lo, hi].
func (g *treeGen) size(lo, hi int64) int64 {
	l, h := math.Log(float64(lo)), math.Log(float64(hi))
	return int64(math.Exp(l + g.rng.Float64()*(h-l)))
}

func (g *treeGen) parents(name string) error {
	dir := path.Dir(name)
	if dir == "." || g.dirs[dir] {
		return nil
	}
	if err := g.parents(dir); err != nil {
		return err
	}
	g.dirs[dir] = true
	g.entries++
	return g.tw.WriteHeader(&tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: benchTime()})
}

// file writes a regular file: text-like lines or random bytes.
func (g *treeGen) file(name string, mode, size int64, text bool) error {
	if err := g.parents(name); err != nil {
		return err
	}
	g.entries++
	if err := g.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: size, ModTime: benchTime()}); err != nil {
		return err
	}
	data := make([]byte, size)
	if text {
		words := []string{"layer ", "image ", "the ", "of ", "and ", "copyright ", "license ", "def ", "return ", "self.", "import ", "\n", "    ", "# ", "(", "):\n"}
		var b strings.Builder
		for b.Len() < int(size) {
			b.WriteString(words[g.rng.IntN(len(words))])
		}
		copy(data, b.String())
	} else {
		for i := range data {
			data[i] = byte(g.rng.Uint32())
		}
	}
	_, err := g.tw.Write(data)
	return err
}

func (g *treeGen) symlink(name, target string) error {
	if err := g.parents(name); err != nil {
		return err
	}
	g.entries++
	return g.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777, ModTime: benchTime()})
}

func (g *treeGen) hardlink(name, target string) error {
	if err := g.parents(name); err != nil {
		return err
	}
	g.entries++
	return g.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target, ModTime: benchTime()})
}

// benchTime is the mtime of generated entries: fixed, so the tars are
// the same on every run.
func benchTime() time.Time { return time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC) }

func writeTar(file string, fill func(*tar.Writer) error) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	err = fill(tw)
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
