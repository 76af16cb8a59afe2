package apply

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// chunkSource hands out content in chunks of its own buffer, of sizes
// that vary, and scribbles over the last chunk before it reads the next:
// an applier that used a chunk past its validity would write garbage.
type chunkSource struct {
	*tar.Reader
	buf    []byte
	last   []byte
	sizes  []int
	calls  int
	chunks int
}

func (c *chunkSource) Next() (*tar.Header, error) {
	c.scribble()
	return c.Reader.Next()
}

func (c *chunkSource) Read(p []byte) (int, error) {
	c.scribble()
	return c.Reader.Read(p)
}

func (c *chunkSource) ReadChunk() ([]byte, error) {
	c.scribble()
	c.calls++
	size := c.sizes[c.calls%len(c.sizes)]
	n, err := c.Reader.Read(c.buf[:size])
	c.last = c.buf[:n]
	if n > 0 {
		c.chunks++
	}
	return c.last, err
}

func (c *chunkSource) scribble() {
	for i := range c.last {
		c.last[i] = 0xa5
	}
	c.last = nil
}

func TestChunkSourceContentIsWrittenExactly(t *testing.T) {
	body := func(n int) string {
		var b strings.Builder
		for i := 0; b.Len() < n; i++ {
			b.WriteByte(byte('a' + i%23))
		}
		return b.String()
	}
	bodies := map[string]string{
		"one":   "x",
		"small": body(4095),
		"big":   body(1<<20 + 3),
		"odd":   body(70001),
	}
	ents := []ent{reg("empty", ""), dirE("d/")}
	for _, name := range []string{"one", "small", "big", "odd"} {
		ents = append(ents, reg("d/"+name, bodies[name]))
	}
	s := newSandbox(t)
	src := &chunkSource{Reader: tar.NewReader(bytes.NewReader(buildTar(t, ents...))), buf: make([]byte, 1<<20), sizes: []int{1 << 20, 1, 4096, 33333}}
	var _ ChunkSource = src
	if _, err := Apply(context.Background(), src, s.layer, Options{}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	s.checkOutside(t)
	if src.chunks == 0 {
		t.Fatal("Apply never used ReadChunk")
	}
	for name, want := range bodies {
		got, err := os.ReadFile(filepath.Join(s.layer, "d", name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("d/%s: %d bytes differ from the %d in the tar", name, len(got), len(want))
		}
	}
	if st, err := os.Stat(filepath.Join(s.layer, "empty")); err != nil || st.Size() != 0 {
		t.Errorf("empty: %v, size %v", err, st)
	}
}

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

func TestStartWritebackWritesAndClosesEverything(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", (writebackStep+writebackStep/2)/16)
	mid := strings.Repeat("m", writebackMin+1)
	data := buildTar(t, reg("small", "s"), reg("big", big), reg("mid", mid), reg("after", "a"))
	t.Run("complete", func(t *testing.T) {
		before := openFds(t)
		s := newSandbox(t)
		src := &chunkSource{Reader: tar.NewReader(bytes.NewReader(data)), buf: make([]byte, 1<<20), sizes: []int{1 << 20}}
		if _, err := Apply(context.Background(), src, s.layer, Options{StartWriteback: true}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		for name, want := range map[string]string{"small": "s", "big": big, "mid": mid, "after": "a"} {
			got, err := os.ReadFile(filepath.Join(s.layer, name))
			if err != nil || string(got) != want {
				t.Errorf("%s: %d bytes (%v), want %d", name, len(got), err, len(want))
			}
		}
		if after := openFds(t); after != before {
			t.Errorf("%d descriptors open before Apply, %d after", before, after)
		}
	})
	t.Run("truncated in a large file", func(t *testing.T) {
		before := openFds(t)
		s := newSandbox(t)
		cut := data[:len(data)/2]
		src := &chunkSource{Reader: tar.NewReader(bytes.NewReader(cut)), buf: make([]byte, 1<<20), sizes: []int{1 << 20}}
		if _, err := Apply(context.Background(), src, s.layer, Options{StartWriteback: true}); err == nil {
			t.Fatal("Apply of a truncated tar succeeded")
		}
		if after := openFds(t); after != before {
			t.Errorf("%d descriptors open before Apply, %d after", before, after)
		}
	})
}
