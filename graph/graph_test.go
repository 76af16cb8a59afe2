package graph

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/internal/imagegen"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "store"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func compress(t *testing.T, data []byte, f compression.Format) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := compression.Compress(&buf, f)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func oneFileTar(t *testing.T, name, content string) []byte {
	t.Helper()
	data, err := imagegen.Tar([]imagegen.Entry{{Name: name, Type: tar.TypeReg, Content: []byte(content)}})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(h[:])
}

func TestChainID(t *testing.T) {
	a := digest.FromString("a")
	b := digest.FromString("b")
	for _, tc := range []struct {
		name         string
		parent, diff digest.Digest
		want         string
	}{
		{"base layer is its diffID", "", a, a.String()},
		{"child hashes parent space diff", a, b, sha(a.String() + " " + b.String())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ChainID(tc.parent, tc.diff); got.String() != tc.want {
				t.Fatalf("ChainID = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRegisterChainAndExportBitForBit(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	sample, err := imagegen.SampleLayers()
	if err != nil {
		t.Fatal(err)
	}
	formats := []compression.Format{compression.Gzip, compression.Zstd, compression.None}
	var parent digest.Digest
	for i, layer := range sample {
		in := compress(t, layer, formats[i%len(formats)])
		l, existed, err := s.Register(ctx, bytes.NewReader(in), RegisterOptions{Parent: parent.String()})
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		if existed {
			t.Fatalf("layer %d reported as already stored", i)
		}
		diff := digest.FromBytes(layer)
		if l.DiffID != diff || l.ChainID != ChainID(parent, diff) || l.Parent != parent {
			t.Fatalf("layer %d record %+v, want diffID %s on %s", i, l, diff, parent)
		}
		if l.Compression != formats[i%len(formats)] {
			t.Fatalf("layer %d compression %s", i, l.Compression)
		}
		var out bytes.Buffer
		if _, err := s.Export(ctx, l.ChainID.String(), &out, compression.None); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), layer) {
			t.Fatalf("layer %d: export differs from the imported tar", i)
		}
		parent = l.ChainID
	}
	chain, err := s.Chain(parent)
	if err != nil || len(chain) != 3 {
		t.Fatalf("Chain = %d layers, %v", len(chain), err)
	}
	heads, err := s.Heads()
	if err != nil || len(heads) != 1 || heads[0].ChainID != parent {
		t.Fatalf("Heads = %v, %v", heads, err)
	}
	problems, err := s.Check(ctx, nil)
	if err != nil || len(problems) != 0 {
		t.Fatalf("Check = %v, %v", problems, err)
	}
}

func TestRegisterSameChainTwice(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := oneFileTar(t, "f", "x")
	first, _, err := s.Register(ctx, bytes.NewReader(data), RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Compressed differently, same content: same chain.
	second, existed, err := s.Register(ctx, bytes.NewReader(compress(t, data, compression.Gzip)), RegisterOptions{})
	if err != nil || !existed || second.ChainID != first.ChainID {
		t.Fatalf("second registration: %v existed=%v %v", second, existed, err)
	}
	assertClean(t, s, 1)
}

// Two stores on one directory stand for two processes: flock(2) locks
// belong to open file descriptions, so they exclude each other just as well.
func TestConcurrentRegistrationOfOneLayer(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "store")
	data := compress(t, bytes.Repeat(oneFileTar(t, "f", strings.Repeat("y", 1<<20)), 1), compression.Gzip)
	const n = 4
	var wg sync.WaitGroup
	ids := make([]digest.Digest, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := Open(ctx, root, Options{})
			if err != nil {
				errs[i] = err
				return
			}
			l, _, err := s.Register(ctx, bytes.NewReader(data), RegisterOptions{})
			if err == nil {
				ids[i] = l.ChainID
			}
			errs[i] = err
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("registration %d: %s %v", i, ids[i], errs[i])
		}
	}
	s, err := Open(ctx, root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	assertClean(t, s, 1)
}

// assertClean checks the store holds exactly n layers and no leftovers.
func assertClean(t *testing.T, s *Store, n int) {
	t.Helper()
	layers, err := s.Layers()
	if err != nil || len(layers) != n {
		t.Fatalf("store holds %d layers (%v), want %d", len(layers), err, n)
	}
	ents, _ := os.ReadDir(filepath.Join(s.Root(), "layers"))
	if len(ents) != n {
		t.Fatalf("layers/ holds %d entries, want %d", len(ents), n)
	}
	tmp, _ := os.ReadDir(s.tmpDir())
	if len(tmp) != 0 {
		t.Fatalf("tmp/ holds leftovers: %v", tmp)
	}
}

func TestBadInputLeavesStoreUnchanged(t *testing.T) {
	ctx := context.Background()
	good := oneFileTar(t, "ok", strings.Repeat("z", 5000))
	for _, tc := range []struct {
		name    string
		input   []byte
		wantErr string
	}{
		{"truncated tar", good[:1000], "unexpected EOF"},
		{"truncated gzip", compress(t, good, compression.Gzip)[:40], "EOF"},
		{"not a tar", bytes.Repeat([]byte("garbage "), 200), "header"},
		{"escaping name", mustTar(t, &tar.Header{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o644}), "evil"},
		{"absolute name", mustTar(t, &tar.Header{Name: "/etc/evil", Typeflag: tar.TypeReg, Mode: 0o644}), "evil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			_, _, err := s.Register(ctx, bytes.NewReader(tc.input), RegisterOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Register: %v, want an error with %q", err, tc.wantErr)
			}
			assertClean(t, s, 0)
		})
	}
}

func mustTar(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestPrefixResolution(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	var ids []digest.Digest
	// Enough layers that some share a first hex digit.
	for i := 0; i < 40; i++ {
		l, _, err := s.Register(ctx, bytes.NewReader(oneFileTar(t, "f", fmt.Sprint(i))), RegisterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, l.ChainID)
	}
	byFirst := map[byte][]digest.Digest{}
	for _, id := range ids {
		byFirst[id.Encoded()[0]] = append(byFirst[id.Encoded()[0]], id)
	}
	for c, group := range byFirst {
		l, err := s.Layer(string(c))
		if len(group) == 1 {
			if err != nil || l.ChainID != group[0] {
				t.Fatalf("unique prefix %c: %v %v", c, l, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "ambiguous") || !strings.Contains(err.Error(), group[0].String()) {
			t.Fatalf("ambiguous prefix %c: %v, want an error listing the candidates", c, err)
		}
	}
	for _, ref := range []string{ids[0].String(), ids[0].Encoded(), "sha256:" + ids[0].Encoded()[:20]} {
		if l, err := s.Layer(ref); err != nil || l.ChainID != ids[0] {
			t.Fatalf("Layer(%q) = %v, %v", ref, l, err)
		}
	}
	for _, ref := range []string{"zz", "", "sha256:"} {
		if _, err := s.Layer(ref); err == nil {
			t.Fatalf("Layer(%q) succeeded", ref)
		}
	}
	if _, err := s.Layer(strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing layer: %v, want ErrNotFound", err)
	}
}

func TestDeleteRefusesWhileUsed(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	dir := t.TempDir()
	sample, _ := imagegen.SampleLayers()
	if _, err := imagegen.WriteOCILayout(dir, sample[:2], compression.Gzip, "img:1"); err != nil {
		t.Fatal(err)
	}
	imgs, err := s.ImportImage(ctx, dir, ImportImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	img := imgs[0]
	base, top := img.Layers[0], img.Layers[1]
	if _, err := s.DeleteLayer(ctx, base.String()); err == nil || !strings.Contains(err.Error(), "layer "+top.String()) {
		t.Fatalf("delete of a parent: %v, want refusal naming the child", err)
	}
	if _, err := s.DeleteLayer(ctx, top.String()); err == nil || !strings.Contains(err.Error(), "image img:1") {
		t.Fatalf("delete of an image's layer: %v, want refusal naming the image", err)
	}
	// Reference counts are derived from what is on disk: a reopened store
	// refuses just the same.
	s2, err := Open(ctx, s.Root(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.DeleteLayer(ctx, top.String()); err == nil {
		t.Fatal("reopened store deleted a used layer")
	}
	if _, gone, err := s2.DeleteImage(ctx, "img:1"); err != nil || !gone {
		t.Fatalf("rmi: gone=%v %v", gone, err)
	}
	for _, id := range []digest.Digest{top, base} {
		if _, err := s2.DeleteLayer(ctx, id.String()); err != nil {
			t.Fatalf("delete %s after rmi: %v", id, err)
		}
	}
	assertClean(t, s2, 0)
}

func TestImportImageWithBadBlobKeepsNothing(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	dir := t.TempDir()
	sample, _ := imagegen.SampleLayers()
	if _, err := imagegen.WriteOCILayout(dir, sample, compression.None, "img:1"); err != nil {
		t.Fatal(err)
	}
	// Corrupt the last layer blob in place (same size): its digest no
	// longer matches the manifest.
	blob := filepath.Join(dir, "blobs", "sha256", digest.FromBytes(sample[2]).Encoded())
	data, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	data[600] ^= 0xff
	if err := os.WriteFile(blob, data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = s.ImportImage(ctx, dir, ImportImageOptions{})
	if err == nil {
		t.Fatal("import of a corrupt image succeeded")
	}
	images, _ := s.Images()
	if len(images) != 0 {
		t.Fatalf("a failed import kept %d images", len(images))
	}
	assertClean(t, s, 0)
}

func TestRecoveryRemovesOnlyDeadStaging(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	dead := filepath.Join(s.tmpDir(), stagingPrefix+"layer-dead")
	live := filepath.Join(s.tmpDir(), stagingPrefix+"layer-live")
	for _, d := range []string{dead, live} {
		if err := os.MkdirAll(filepath.Join(d, "diff", "x"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(live)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(s.tmpDir(), "file-image.json-123"), []byte("{"), 0o600)
	if _, err := Open(ctx, s.Root(), Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dead staging survived Open: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("live staging was removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.tmpDir(), "file-image.json-123")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("leftover temp file survived Open")
	}
}

func TestCheckFindsTampering(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, diff string)
		kind   string
	}{
		{"content changed", func(t *testing.T, diff string) {
			os.WriteFile(filepath.Join(diff, "etc/hostname"), []byte("changed-by-hand\n"), 0o644)
		}, ProblemCorrupt},
		{"file removed", func(t *testing.T, diff string) { os.Remove(filepath.Join(diff, "bin/tool")) }, ProblemCorrupt},
		{"file added", func(t *testing.T, diff string) {
			os.WriteFile(filepath.Join(diff, "etc/intruder"), []byte("x"), 0o644)
		}, ProblemUnrecorded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			sample, _ := imagegen.SampleLayers()
			l, _, err := s.Register(ctx, bytes.NewReader(sample[0]), RegisterOptions{})
			if err != nil {
				t.Fatal(err)
			}
			tc.tamper(t, s.DiffDir(l.ChainID))
			problems, err := s.Check(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, p := range problems {
				if p.Kind == tc.kind && p.ID == l.ChainID.String() {
					found = true
				}
			}
			if !found {
				t.Fatalf("Check = %v, want a %s problem for %s", problems, tc.kind, l.ChainID)
			}
		})
	}
}

func TestGCRemovesOrphanDirs(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	orphan := filepath.Join(s.Root(), "layers", strings.Repeat("ab", 32))
	os.MkdirAll(filepath.Join(orphan, "diff"), 0o755)
	problems, err := s.Check(ctx, nil)
	if err != nil || len(problems) != 1 || problems[0].Kind != ProblemOrphan {
		t.Fatalf("Check = %v, %v; want one orphan", problems, err)
	}
	removed, err := s.GC(ctx)
	if err != nil || len(removed) != 1 || removed[0] != orphan {
		t.Fatalf("GC removed %v, %v", removed, err)
	}
	if problems, _ := s.Check(ctx, nil); len(problems) != 0 {
		t.Fatalf("after GC: %v", problems)
	}
}

func TestRootlessStoreKeepsOwnershipInXattrs(t *testing.T) {
	ctx := context.Background()
	rootless := true
	s, err := Open(ctx, filepath.Join(t.TempDir(), "store"), Options{Rootless: &rootless})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Config().Rootless || s.Namespace().String() != "user" {
		t.Fatalf("config %+v", s.Config())
	}
	sample, _ := imagegen.SampleLayers()
	base, _, err := s.Register(ctx, bytes.NewReader(sample[0]), RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	change, _, err := s.Register(ctx, bytes.NewReader(sample[1]), RegisterOptions{Parent: base.ChainID.String()})
	if err != nil {
		t.Fatal(err)
	}
	if !change.Rootless || change.XattrNamespace != "user" {
		t.Fatalf("layer record %+v", change)
	}
	for _, tc := range []struct{ path, want string }{
		{"home/user/notes.txt", "1000:1000:0644:file"},
		{"bin/tool", "0:0:04755:file"},
		{"nobody", "65534:65534:0755:dir"},
	} {
		buf := make([]byte, 64)
		n, err := unix.Lgetxattr(filepath.Join(s.DiffDir(base.ChainID), tc.path), "user.containers.override_stat", buf)
		if err != nil || string(buf[:n]) != tc.want {
			t.Fatalf("%s: override_stat %q %v, want %q", tc.path, buf[:max(n, 0)], err, tc.want)
		}
	}
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(filepath.Join(s.DiffDir(change.ChainID), "var/cache"), "user.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Fatalf("opaque marker in a rootless store: %q %v", buf[:max(n, 0)], err)
	}
	for _, l := range []*Layer{base, change} {
		var out bytes.Buffer
		if _, err := s.Export(ctx, l.ChainID.String(), &out, compression.None); err != nil {
			t.Fatal(err)
		}
		if digest.FromBytes(out.Bytes()) != l.DiffID {
			t.Fatalf("rootless layer %s does not export bit for bit", l.ChainID)
		}
	}
}
