package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// fixture is a hand-made image source: members by name plus link members,
// written out as a directory or as a tar.
type fixture struct {
	files map[string][]byte
	links []fixtureLink
}

type fixtureLink struct {
	name, target string
	hard         bool
}

func newFixture() *fixture { return &fixture{files: map[string][]byte{}} }

// newLayoutFixture starts an OCI layout.
func newLayoutFixture() *fixture {
	f := newFixture()
	f.files["oci-layout"] = []byte(`{"imageLayoutVersion":"1.0.0"}`)
	return f
}

func (f *fixture) blob(mediaType string, data []byte) v1.Descriptor {
	d := digest.FromBytes(data)
	f.files[blobPath(d)] = data
	return v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

func (f *fixture) jsonBlob(t *testing.T, mediaType string, v any) v1.Descriptor {
	t.Helper()
	return f.blob(mediaType, mustJSON(t, v))
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// layerTar makes an uncompressed layer tar holding files (name -> content).
func layerTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(files[n])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// testLayer is a layer to put into a fixture image.
type testLayer struct {
	tar  []byte // uncompressed
	gzip bool
}

// image adds a config, the layer blobs and a manifest; it returns the
// manifest's descriptor and the config's.
func (f *fixture) image(t *testing.T, platform *v1.Platform, layers ...testLayer) (manifest, config v1.Descriptor) {
	t.Helper()
	cfg := v1.Image{RootFS: v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{}}}
	if platform != nil {
		cfg.Platform = *platform
	}
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Layers: []v1.Descriptor{}}
	for _, l := range layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, digest.FromBytes(l.tar))
		if l.gzip {
			m.Layers = append(m.Layers, f.blob(v1.MediaTypeImageLayerGzip, gzipBytes(t, l.tar)))
		} else {
			m.Layers = append(m.Layers, f.blob(v1.MediaTypeImageLayer, l.tar))
		}
	}
	m.Config = f.jsonBlob(t, v1.MediaTypeImageConfig, cfg)
	md := f.jsonBlob(t, v1.MediaTypeImageManifest, m)
	md.Platform = platform
	return md, m.Config
}

func (f *fixture) index(t *testing.T, descs ...v1.Descriptor) {
	t.Helper()
	f.files["index.json"] = mustJSON(t, v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: descs})
}

func named(d v1.Descriptor, ref string) v1.Descriptor {
	d.Annotations = map[string]string{v1.AnnotationRefName: ref}
	return d
}

// writeTar writes the fixture as a tar, files in name order, links last.
func (f *fixture) writeTar(t *testing.T, path string) {
	t.Helper()
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tw := tar.NewWriter(out)
	names := make([]string, 0, len(f.files))
	for n := range f.files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o444, Size: int64(len(f.files[n])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.files[n]); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range f.links {
		h := &tar.Header{Name: l.name, Linkname: l.target, Mode: 0o777, Typeflag: tar.TypeSymlink}
		if l.hard {
			h.Typeflag = tar.TypeLink
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// writeDir writes the fixture as a directory.
func (f *fixture) writeDir(t *testing.T, dir string) {
	t.Helper()
	for n, b := range f.files {
		p := filepath.Join(dir, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range f.links {
		p := filepath.Join(dir, filepath.FromSlash(l.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if l.hard {
			err = os.Link(filepath.Join(dir, filepath.FromSlash(l.target)), p)
		} else {
			err = os.Symlink(l.target, p)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// run runs a tool and fails the test with its output on error.
func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// umociLayout builds an OCI layout with umoci: image "v1" with two layers,
// /etc/hello and /bin/tool. It returns the layout directory.
func umociLayout(t *testing.T) string {
	t.Helper()
	umoci := testutil.NeedTool(t, "umoci")
	work := t.TempDir()
	layout := filepath.Join(work, "layout")
	var rootless []string
	if os.Geteuid() != 0 {
		rootless = []string{"--rootless"}
	}
	run(t, umoci, "init", "--layout", layout)
	run(t, umoci, append([]string{"new", "--image", layout + ":v1"}, rootless...)...)
	for _, l := range []struct{ dir, file, content string }{
		{"etc", "hello", "hello from layer one\n"},
		{"bin", "tool", "#!/bin/sh\necho layer two\n"},
	} {
		src := filepath.Join(work, "src-"+l.dir)
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, l.file), []byte(l.content), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, umoci, append(append([]string{"insert"}, rootless...), "--image", layout+":v1", src, "/"+l.dir)...)
	}
	return layout
}

// skopeoCopy copies with skopeo, without needing a policy file on the host.
func skopeoCopy(t *testing.T, from, to string) {
	t.Helper()
	skopeo := testutil.NeedTool(t, "skopeo")
	run(t, skopeo, "--insecure-policy", "copy", "--quiet", from, to)
}
