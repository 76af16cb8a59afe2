package layertar

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/asynchash"
)

// roundTrip splits data (recording with RecordWriter), writes each
// payload-bearing entry densely into a directory, and reassembles it
// twice: reading the record with RecordReader and with tar-split's own
// unpacker. It returns the reassembled bytes.
func roundTrip(t *testing.T, data []byte) []byte {
	t.Helper()
	dir := t.TempDir()
	var meta bytes.Buffer
	sp := NewSplitter(bytes.NewReader(data), NewRecordWriter(&meta))
	for {
		hdr, err := sp.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("split: %v", err)
		}
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeGNUSparse {
			continue
		}
		p := filepath.Join(dir, filepath.Clean(hdr.Name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		// Half the entries read with Read, half with ReadChunk.
		if err := copyContent(f, sp, len(hdr.Name)%2 == 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if got, want := sp.DiffID(), digest.FromBytes(data); got != want {
		t.Fatalf("DiffID %s, want %s", got, want)
	}
	open := func(name string) (int, error) { return openRead(filepath.Join(dir, filepath.Clean(name))) }
	var outs [2]bytes.Buffer
	for i, up := range []storage.Unpacker{NewRecordReader(bytes.NewReader(meta.Bytes())), storage.NewJSONUnpacker(bytes.NewReader(meta.Bytes()))} {
		sum, err := Assemble(context.Background(), up, open, &outs[i], AssembleOptions{VerifyPayloads: true})
		if err != nil {
			t.Fatalf("assemble with unpacker %d: %v", i, err)
		}
		if want := digest.FromBytes(outs[i].Bytes()); sum != want {
			t.Fatalf("Assemble returned %s for a stream that hashes to %s", sum, want)
		}
	}
	if !bytes.Equal(outs[0].Bytes(), outs[1].Bytes()) {
		t.Fatal("RecordReader and tar-split's unpacker reassemble different streams")
	}
	return outs[0].Bytes()
}

func gnuTar(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("tar", append(append([]string{"-C", dir, "-cf", "-"}, args...), ".")...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tar %v: %v", args, err)
	}
	return out
}

func makeTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "a/b"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a/b/small"), []byte("hello"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600))
	must(os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte{1, 2, 3}, 100000), 0o644))
	long := strings.Repeat("long-name-", 20)
	must(os.WriteFile(filepath.Join(dir, long), []byte("long"), 0o644))
	must(os.Symlink("a/b/small", filepath.Join(dir, "link")))
	must(os.Link(filepath.Join(dir, "a/b/small"), filepath.Join(dir, "hard")))
	// Sparse: holes at the start, in the middle and at the end.
	f, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	_, err = f.WriteAt([]byte("data in the middle"), 5<<20)
	must(err)
	_, err = f.WriteAt(bytes.Repeat([]byte("x"), 70000), 9<<20)
	must(err)
	must(f.Truncate(16 << 20))
	must(f.Close())
	return dir
}

func TestRoundTripGNUTarFormats(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("GNU tar not installed")
	}
	dir := makeTree(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"gnu", []string{"--format=gnu"}},
		{"gnu-sparse", []string{"--format=gnu", "--sparse"}},
		{"pax", []string{"--format=posix"}},
		{"pax-sparse-1.0", []string{"--format=posix", "--sparse"}},
		{"pax-sparse-0.0", []string{"--format=posix", "--sparse", "--sparse-version=0.0"}},
		{"pax-sparse-0.1", []string{"--format=posix", "--sparse", "--sparse-version=0.1"}},
		{"oldgnu", []string{"--format=oldgnu"}},
		{"ustar-no-long", []string{"--format=ustar", "--exclude=long-name-*"}},
		{"v7-blocking", []string{"--format=v7", "--exclude=long-name-*", "-b", "1"}},
		{"record-size", []string{"--format=gnu", "-b", "64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := gnuTar(t, dir, tc.args...)
			out := roundTrip(t, data)
			if sha256.Sum256(out) != sha256.Sum256(data) {
				t.Fatalf("reassembled %d bytes differ from the original %d", len(out), len(data))
			}
		})
	}
}

func TestRoundTripGoWriterAndTrailingGarbage(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, name := range []string{"one", "dir/", "dir/two", "three"} {
		hdr := &tar.Header{Name: name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(i * 700), Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.k": "v"}}
		if strings.HasSuffix(name, "/") {
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(bytes.Repeat([]byte{byte(i)}, int(hdr.Size)))
	}
	tw.Close()
	buf.Write(make([]byte, 3000)) // more zero padding than any writer needs
	data := buf.Bytes()
	if out := roundTrip(t, data); !bytes.Equal(out, data) {
		t.Fatalf("reassembled %d bytes differ from %d", len(out), len(data))
	}
}

func TestAssembleDetectsChangedFile(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: 5})
	tw.Write([]byte("hello"))
	tw.Close()
	dir := t.TempDir()
	var meta bytes.Buffer
	sp := NewSplitter(bytes.NewReader(buf.Bytes()), storage.NewJSONPacker(&meta))
	for {
		if _, err := sp.Next(); err != nil {
			break
		}
	}
	for _, tc := range []struct{ name, content string }{
		{"same size", "jello"},
		{"grown", "hello world"},
		{"shrunk", "hel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(filepath.Join(dir, "f"), []byte(tc.content), 0o644)
			open := func(name string) (int, error) { return openRead(filepath.Join(dir, name)) }
			_, err := Assemble(context.Background(), NewRecordReader(bytes.NewReader(meta.Bytes())), open, io.Discard, AssembleOptions{VerifyPayloads: true})
			if err == nil || !strings.Contains(err.Error(), "export f") {
				t.Fatalf("Assemble over a changed file: err = %v, want an error naming f", err)
			}
		})
	}
}

func TestSplitterRejectsGarbage(t *testing.T) {
	var meta bytes.Buffer
	sp := NewSplitter(bytes.NewReader(bytes.Repeat([]byte("not a tar "), 100)), storage.NewJSONPacker(&meta))
	if _, err := sp.Next(); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("Next on garbage: %v, want a header error", err)
	}
}

func TestParseSparseFormats(t *testing.T) {
	for _, tc := range []struct {
		name string
		pax  []paxRecord
		area string
		want []Fragment
	}{
		{"0.0", []paxRecord{{"GNU.sparse.numblocks", "2"}, {"GNU.sparse.offset", "0"}, {"GNU.sparse.numbytes", "5"}, {"GNU.sparse.offset", "100"}, {"GNU.sparse.numbytes", "0"}}, "", []Fragment{{0, 5}, {100, 0}}},
		{"0.1", []paxRecord{{"GNU.sparse.major", "0"}, {"GNU.sparse.minor", "1"}, {"GNU.sparse.map", "4096,10,8192,0"}}, "", []Fragment{{4096, 10}, {8192, 0}}},
		{"1.0", []paxRecord{{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"}}, "2\n0\n3\n9000\n1\n", []Fragment{{0, 3}, {9000, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, sparse, err := parsePAXSparse(tc.pax, []byte(tc.area))
			if err != nil || !sparse {
				t.Fatalf("sparse=%v err=%v", sparse, err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
	if _, _, err := parseMap1x0([]byte("3\n0\n")); err == nil {
		t.Fatal("truncated 1.0 map accepted")
	}
}

func TestSplitterRejectsTruncation(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "a", Mode: 0o644, Size: 3})
	tw.Write([]byte("abc"))
	tw.WriteHeader(&tar.Header{Name: "b", Mode: 0o644, Size: 600})
	tw.Write(bytes.Repeat([]byte("b"), 600))
	tw.Close()
	whole := buf.Bytes()
	for _, cut := range []int{0, 100, 515, 700, 1024, 1536, 1600, 2048, 2560} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			sp := NewSplitter(bytes.NewReader(whole[:cut]), storage.NewJSONPacker(io.Discard))
			var err error
			for err == nil {
				_, err = sp.Next()
			}
			if errors.Is(err, io.EOF) {
				t.Fatalf("a tar cut at %d of %d bytes read as complete", cut, len(whole))
			}
			// Cut after an entry's data, in its padding, or at a header:
			// the stream ended where an entry could have.
			if (cut == 515 || cut == 700 || cut == 1024) && !strings.Contains(err.Error(), "truncated") {
				t.Fatalf("a tar cut at %d: %v, want it called truncated", cut, err)
			}
		})
	}
	sp := NewSplitter(bytes.NewReader(whole[:2560+512]), storage.NewJSONPacker(io.Discard))
	var err error
	for err == nil {
		_, err = sp.Next()
	}
	if !errors.Is(err, io.EOF) {
		t.Fatalf("a tar with one end-of-archive block: %v, want io.EOF (archive/tar accepts it too)", err)
	}
}

// openRead is a FileOpener for tests: the file at path, read-only.
func openRead(path string) (int, error) {
	return unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

// copyContent copies the current entry's content with Read, or with
// ReadChunk when chunks is set.
func copyContent(w io.Writer, sp *Splitter, chunks bool) error {
	if !chunks {
		_, err := io.Copy(w, sp)
		return err
	}
	for {
		chunk, err := sp.ReadChunk()
		if _, werr := w.Write(chunk); werr != nil {
			return werr
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// TestAssembleChecksSizesAcrossChunks: files as large as a chunk, or
// straddling one, that grew or shrank behind the store's back are
// named, and intact ones reassemble.
func TestAssembleChecksSizesAcrossChunks(t *testing.T) {
	const chunk = asynchash.ChunkSize
	sizes := []int{chunk, chunk - 1, chunk + 1, 3*chunk + 7, 1<<20 + 1}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "first", Mode: 0o644, Size: 100})
	tw.Write(bytes.Repeat([]byte{1}, 100))
	for i, n := range sizes {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprint("f", i), Mode: 0o644, Size: int64(n)})
		tw.Write(bytes.Repeat([]byte{byte(i + 2)}, n))
	}
	tw.Close()
	data := buf.Bytes()
	dir := t.TempDir()
	var meta bytes.Buffer
	sp := NewSplitter(bytes.NewReader(data), NewRecordWriter(&meta))
	for {
		hdr, err := sp.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(dir, hdr.Name))
		if err != nil {
			t.Fatal(err)
		}
		if err := copyContent(f, sp, true); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	open := func(name string) (int, error) { return openRead(filepath.Join(dir, name)) }
	assemble := func() (string, error) {
		var out bytes.Buffer
		sum, err := Assemble(context.Background(), NewRecordReader(bytes.NewReader(meta.Bytes())), open, &out, AssembleOptions{})
		if err == nil && sum != digest.FromBytes(out.Bytes()) {
			t.Fatalf("Assemble returned %s for a stream that hashes to %s", sum, digest.FromBytes(out.Bytes()))
		}
		return out.String(), err
	}
	if out, err := assemble(); err != nil || out != string(data) {
		t.Fatalf("intact layer: err %v, %d bytes reassembled of %d", err, len(out), len(data))
	}
	for i, n := range sizes {
		name := filepath.Join(dir, fmt.Sprint("f", i))
		for _, change := range []int{1, -1} {
			if err := os.Truncate(name, int64(n+change)); err != nil {
				t.Fatal(err)
			}
			_, err := assemble()
			if err == nil || !strings.Contains(err.Error(), fmt.Sprint("export f", i)) {
				t.Errorf("f%d (%d bytes) resized by %d: err %v, want one naming it", i, n, change, err)
			}
		}
		os.Truncate(name, int64(n))
		os.WriteFile(name, bytes.Repeat([]byte{byte(i + 2)}, n), 0o644)
	}
}
