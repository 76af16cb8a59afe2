package compression

import (
	"bytes"
	"io"
	"os/exec"
	"testing"
)

func TestRoundTripAndDetect(t *testing.T) {
	payload := bytes.Repeat([]byte("layerfs compresses and detects\n"), 4096)
	for _, f := range []Format{None, Gzip, Zstd} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			w, err := Compress(&buf, f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(payload); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if got := Detect(buf.Bytes()); got != f {
				t.Fatalf("Detect = %s, want %s", got, f)
			}
			r, got, err := Decompress(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if got != f {
				t.Fatalf("Decompress format = %s, want %s", got, f)
			}
			out, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, payload) {
				t.Fatalf("round trip changed %d bytes into %d", len(payload), len(out))
			}
		})
	}
}

// Streams made by the system tools, not only by ourselves.
func TestDecompressSystemTools(t *testing.T) {
	payload := bytes.Repeat([]byte("tool made\n"), 1000)
	for _, tc := range []struct {
		tool string
		args []string
		want Format
	}{
		{"gzip", []string{"-c"}, Gzip},
		{"bzip2", []string{"-c"}, Bzip2},
		{"xz", []string{"-c"}, Xz},
		{"zstd", []string{"-c", "-q"}, Zstd},
	} {
		t.Run(tc.tool, func(t *testing.T) {
			if _, err := exec.LookPath(tc.tool); err != nil {
				t.Skipf("%s not installed", tc.tool)
			}
			cmd := exec.Command(tc.tool, tc.args...)
			cmd.Stdin = bytes.NewReader(payload)
			compressed, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			r, f, err := Decompress(bytes.NewReader(compressed))
			if err != nil {
				t.Fatal(err)
			}
			if f != tc.want {
				t.Fatalf("format %s, want %s", f, tc.want)
			}
			out, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(out, payload) {
				t.Fatalf("decompressed %d bytes, err %v", len(out), err)
			}
		})
	}
}

func TestCorruptStreamErrors(t *testing.T) {
	r, f, err := Decompress(bytes.NewReader([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3}))
	if err == nil {
		_, err = io.ReadAll(r)
	}
	if f != Gzip || err == nil {
		t.Fatalf("corrupt gzip: format %s err %v, want gzip and an error", f, err)
	}
}
