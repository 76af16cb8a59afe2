package apply

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/layerfs/layerfs/whiteout"
)

// boundedSource stops a fuzz input after a budget of content bytes: a
// sparse header may legally describe terabytes of holes, which archive/tar
// hands out as zeros one buffer at a time.
type boundedSource struct {
	Source
	left int64
}

var errBudget = errors.New("fuzz budget exhausted")

func (b *boundedSource) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errBudget
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.Source.Read(p)
	b.left -= int64(n)
	return n, err
}

func FuzzApply(f *testing.F) {
	seeds := [][]ent{
		{dirE("d/"), reg("d/f", "hello"), symlinkE("d/s", "f"), hardlinkE("d/h", "d/f")},
		{reg(".wh.x", ""), dirE("o"), reg("o/.wh..wh..opq", ""), reg("x", "real")},
		{{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "c", Devmajor: 1, Devminor: 3}}, {hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "p"}}},
		{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "x", Mode: 0o4755, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.a": "b", "SCHILY.xattr.trusted.overlay.opaque": "y"}}, body: "xx"}},
		{symlinkE("s", "../.."), reg("s/escape", "x")},
		{symlinkE("s", "/"), hardlinkE("h", "s/etc/passwd")},
		{hardlinkE("h", "../../outside/canary")},
		{reg("../../outside/canary", "pwned")},
		{dirE("./"), reg("a/b/c/d", "deep"), dirE("a/b")},
	}
	for i, s := range seeds {
		f.Add(buildTar(f, s...), i%2 == 1)
	}
	// A GNU-style sparse header as archive/tar writes PAX sparse records.
	f.Add(buildTar(f, ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "sp", Format: tar.FormatPAX,
		PAXRecords: map[string]string{"GNU.sparse.map": "0,1", "GNU.sparse.size": "100000"}}}), false)
	f.Add([]byte{}, false)
	f.Add(make([]byte, 1024), true)

	f.Fuzz(func(t *testing.T, data []byte, rootless bool) {
		s := newSandboxIn(t, memTempDir(t))
		src := &boundedSource{Source: tar.NewReader(bytes.NewReader(data)), left: 16 << 20}
		opts := Options{Rootless: rootless}
		if rootless {
			opts.OpaqueNamespace = whiteout.User
		}
		_, err := Apply(context.Background(), src, s.layer, opts)
		if err != nil && errors.Is(err, io.ErrShortWrite) {
			t.Errorf("short write: %v", err)
		}
		s.checkOutside(t)
	})
}
