package apply

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ent is one tar entry to build: a header and, for regular files, a body.
type ent struct {
	hdr  tar.Header
	body string
}

func reg(name, body string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, body: body}
}

func dirE(name string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

func symlinkE(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func hardlinkE(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target}}
}

// buildTar writes entries with archive/tar.Writer; bodies set the size of
// regular entries unless a size is given.
func buildTar(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.hdr
		if h.Size == 0 && e.body != "" {
			h.Size = int64(len(e.body))
		}
		if h.ModTime.IsZero() && h.Typeflag != tar.TypeXGlobalHeader {
			h.ModTime = time.Unix(1_600_000_000, 0)
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("build tar: header %q: %v", h.Name, err)
		}
		if e.body != "" {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatalf("build tar: body %q: %v", h.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("build tar: %v", err)
	}
	return buf.Bytes()
}

// sandbox is a layer dir with a populated neighbourhood whose state is
// recorded, so a test can prove an apply wrote nowhere else.
type sandbox struct {
	base    string // t.TempDir()
	outside string // base/outside, holds canary
	layer   string // base/a/layer, the apply target
	before  map[string]string
}

func newSandbox(t testing.TB) *sandbox {
	t.Helper()
	return newSandboxIn(t, t.TempDir())
}

// newSandboxIn builds the sandbox in base, an empty directory.
func newSandboxIn(t testing.TB, base string) *sandbox {
	t.Helper()
	s := &sandbox{base: base, outside: filepath.Join(base, "outside"), layer: filepath.Join(base, "a", "layer")}
	for _, d := range []string{s.outside, s.layer} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.outside, "canary"), []byte("original"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.before = snapshot(t, base, s.layer)
	return s
}

// checkOutside fails the test if anything beside the layer dir changed.
func (s *sandbox) checkOutside(t testing.TB) {
	t.Helper()
	after := snapshot(t, s.base, s.layer)
	for k, v := range s.before {
		if after[k] != v {
			t.Errorf("outside the layer: %s changed: %q -> %q", k, v, after[k])
		}
	}
	for k, v := range after {
		if _, ok := s.before[k]; !ok {
			t.Errorf("outside the layer: %s appeared (%s)", k, v)
		}
	}
}

// snapshot describes every object under root except the subtree skip.
func snapshot(t testing.TB, root, skip string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode=%o uid=%d gid=%d size=%d ino=%d nlink=%d", st.Mode, st.Uid, st.Gid, st.Size, st.Ino, st.Nlink)
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " sha=" + sha(b)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			desc += fmt.Sprintf(" mtime=%d.%d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		m[p] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", root, err)
	}
	return m
}

// applyBytes applies a tar held in memory and fails the test if Apply ever
// asked for the next entry before reading the current one to io.EOF.
func applyBytes(t testing.TB, data []byte, dir string, opts Options) (Result, error) {
	t.Helper()
	dc := &drainCheck{src: tar.NewReader(bytes.NewReader(data))}
	res, err := Apply(context.Background(), dc, dir, opts)
	if len(dc.violation) > 0 {
		t.Errorf("Next called before the content of %v was read to EOF", dc.violation)
	}
	return res, err
}

func lstat(t testing.TB, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return st
}

func getxattr(t testing.TB, p, name string) (string, bool) {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(p, name, buf)
	if err == unix.ENODATA {
		return "", false
	}
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", p, name, err)
	}
	return string(buf[:n]), true
}

// listTree lists the names under dir, sorted, directories with a slash.
func listTree(t testing.TB, dir string) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			rel += "/"
		}
		names = append(names, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	return names
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// fakeSource hands out headers as given (names archive/tar would never
// produce) with bodies, and records protocol misuse.
type fakeSource struct {
	ents []ent
	i    int
	r    *strings.Reader
}

func (f *fakeSource) Next() (*tar.Header, error) {
	if f.i >= len(f.ents) {
		return nil, io.EOF
	}
	e := f.ents[f.i]
	f.i++
	f.r = strings.NewReader(e.body)
	h := e.hdr
	return &h, nil
}

func (f *fakeSource) Read(p []byte) (int, error) {
	if f.r == nil {
		return 0, io.EOF
	}
	return f.r.Read(p)
}

// drainCheck wraps a Source and records every Next called while the
// previous entry still had unread content.
type drainCheck struct {
	src       Source
	atEOF     bool
	violation []string
	cur       string
}

func (d *drainCheck) Next() (*tar.Header, error) {
	if d.cur != "" && !d.atEOF {
		d.violation = append(d.violation, d.cur)
	}
	h, err := d.src.Next()
	d.atEOF = false
	if h != nil {
		d.cur = h.Name
	}
	return h, err
}

func (d *drainCheck) Read(p []byte) (int, error) {
	n, err := d.src.Read(p)
	if err == io.EOF {
		d.atEOF = true
	}
	return n, err
}

// memTempDir is t.TempDir on tmpfs (/dev/shm) when there is one: freeing
// blocks on a disk mounted with -o discard costs a synchronous discard,
// which stalls a fuzzer that creates and removes thousands of trees.
func memTempDir(t testing.TB) string {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("/dev/shm", "apply-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}
