package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

func openImages(t *testing.T, path string) (*Archive, []Image) {
	t.Helper()
	a, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	imgs, err := a.Images(context.Background())
	if err != nil {
		t.Fatalf("Images: %v", err)
	}
	return a, imgs
}

// readLayer reads a layer through OpenLayer, uncompresses it and returns its
// files; it checks the blob's digest and the diffID independently of the
// package.
func readLayer(t *testing.T, a *Archive, l Layer) map[string]string {
	t.Helper()
	rc, err := a.OpenLayer(l)
	if err != nil {
		t.Fatalf("OpenLayer %s: %v", l.Digest, err)
	}
	defer rc.Close()
	blob, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read layer %s: %v", l.Digest, err)
	}
	if got := digest.FromBytes(blob); got != l.Digest {
		t.Fatalf("layer blob digest %s, Layer says %s", got, l.Digest)
	}
	if int64(len(blob)) != l.Size {
		t.Fatalf("layer blob is %d bytes, Layer says %d", len(blob), l.Size)
	}
	plain := blob
	switch l.Compression() {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			t.Fatalf("layer %s (%s): %v", l.Digest, l.MediaType, err)
		}
		if plain, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	case "":
	default:
		t.Fatalf("unexpected compression %q", l.Compression())
	}
	if got := digest.FromBytes(plain); got != l.DiffID {
		t.Fatalf("layer %s uncompressed digest %s != DiffID %s", l.Digest, got, l.DiffID)
	}
	files := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(plain))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[strings.TrimPrefix(h.Name, "./")] = string(b)
	}
	return files
}

// layoutOracle reads the single image of an OCI layout directory with plain
// encoding/json: the manifest digest, the config digest and diff_ids.
func layoutOracle(t *testing.T, dir string) (manifest, config digest.Digest, diffIDs []digest.Digest) {
	t.Helper()
	read := func(name string, v any) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatal(err)
		}
	}
	var idx v1.Index
	read("index.json", &idx)
	if len(idx.Manifests) != 1 {
		t.Fatalf("oracle: %d manifests", len(idx.Manifests))
	}
	var m v1.Manifest
	read(blobPath(idx.Manifests[0].Digest), &m)
	var cfg v1.Image
	read(blobPath(m.Config.Digest), &cfg)
	return idx.Manifests[0].Digest, m.Config.Digest, cfg.RootFS.DiffIDs
}

// TestRealTools reads images that umoci and skopeo wrote.
func TestRealTools(t *testing.T) {
	layout := umociLayout(t)
	wantManifest, wantConfig, wantDiffIDs := layoutOracle(t, layout)
	if len(wantDiffIDs) != 2 {
		t.Fatalf("umoci layout has %d layers, want 2", len(wantDiffIDs))
	}
	work := t.TempDir()

	tests := []struct {
		name   string
		make   func() string
		format string
		// sameManifest: the source keeps umoci's manifest bytes.
		sameManifest bool
		checkNames   func([]string) bool
	}{
		{"oci-layout", func() string { return layout }, FormatOCILayout, true,
			func(n []string) bool { return slices.Equal(n, []string{"v1"}) }},
		{"oci-archive unnamed", func() string {
			p := filepath.Join(work, "unnamed.tar")
			skopeoCopy(t, "oci:"+layout+":v1", "oci-archive:"+p)
			return p
		}, FormatOCIArchive, true, func(n []string) bool { return len(n) == 0 }},
		{"oci-archive named", func() string {
			p := filepath.Join(work, "named.tar")
			skopeoCopy(t, "oci:"+layout+":v1", "oci-archive:"+p+":example/app:v2")
			return p
		}, FormatOCIArchive, true, func(n []string) bool { return slices.Equal(n, []string{"example/app:v2"}) }},
		{"oci-archive made by GNU tar", func() string {
			// Member names start with "./" and directories have entries.
			p := filepath.Join(work, "gnu.tar")
			run(t, testutil.NeedTool(t, "tar"), "-C", layout, "-cf", p, ".")
			return p
		}, FormatOCIArchive, true, func(n []string) bool { return slices.Equal(n, []string{"v1"}) }},
		{"docker-archive", func() string {
			p := filepath.Join(work, "docker.tar")
			skopeoCopy(t, "oci:"+layout+":v1", "docker-archive:"+p+":example/app:v3")
			return p
		}, FormatDockerArchive, false, func(n []string) bool {
			// skopeo qualifies the name with a default registry host.
			return len(n) == 1 && (n[0] == "example/app:v3" || strings.HasSuffix(n[0], "/example/app:v3"))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, imgs := openImages(t, tc.make())
			if a.Format() != tc.format {
				t.Errorf("Format = %q, want %q", a.Format(), tc.format)
			}
			if len(imgs) != 1 {
				t.Fatalf("%d images, want 1", len(imgs))
			}
			img := imgs[0]
			if !tc.checkNames(img.Names) {
				t.Errorf("Names = %q", img.Names)
			}
			if img.ConfigDigest != wantConfig || digest.FromBytes(img.ConfigBytes) != wantConfig {
				t.Errorf("ConfigDigest %s (bytes %s), umoci wrote %s", img.ConfigDigest, digest.FromBytes(img.ConfigBytes), wantConfig)
			}
			if got := digest.FromBytes(img.ManifestBytes); got != img.ManifestDigest {
				t.Errorf("ManifestDigest %s, bytes hash to %s", img.ManifestDigest, got)
			}
			if tc.sameManifest && img.ManifestDigest != wantManifest {
				t.Errorf("ManifestDigest %s, umoci wrote %s", img.ManifestDigest, wantManifest)
			}
			var diffIDs []digest.Digest
			all := map[string]string{}
			for _, l := range img.Layers {
				diffIDs = append(diffIDs, l.DiffID)
				for n, c := range readLayer(t, a, l) {
					all[n] = c
				}
			}
			if !slices.Equal(diffIDs, wantDiffIDs) {
				t.Errorf("DiffIDs %v, umoci wrote %v", diffIDs, wantDiffIDs)
			}
			if all["etc/hello"] != "hello from layer one\n" || all["bin/tool"] != "#!/bin/sh\necho layer two\n" {
				t.Errorf("layer files: %q", all)
			}
		})
	}
}

// classicDockerArchive builds a `docker save` archive of the pre-25 form:
// <id>/layer.tar members, a gzip layer, duplicate layers as a symlink and a
// hardlink, manifest.json and repositories.
func classicDockerArchive(t *testing.T) (f *fixture, plain, gz []byte, cfgDigest digest.Digest) {
	t.Helper()
	plain = layerTar(t, map[string]string{"etc/os-release": "ID=test\n"})
	second := layerTar(t, map[string]string{"usr/bin/app": "binary"})
	gz = gzipBytes(t, second)
	cfg := mustJSON(t, v1.Image{RootFS: v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{
		digest.FromBytes(plain), digest.FromBytes(second), digest.FromBytes(plain), digest.FromBytes(plain),
	}}})
	cfgDigest = digest.FromBytes(cfg)
	f = newFixture()
	f.files[cfgDigest.Encoded()+".json"] = cfg
	f.files["1111/layer.tar"] = plain
	f.files["1111/VERSION"] = []byte("1.0")
	f.files["2222/layer.tar"] = gz
	f.links = []fixtureLink{
		{name: "3333/layer.tar", target: "../1111/layer.tar"},
		{name: "4444/layer.tar", target: "1111/layer.tar", hard: true},
	}
	f.files["manifest.json"] = mustJSON(t, []map[string]any{{
		"Config":   cfgDigest.Encoded() + ".json",
		"RepoTags": []string{"example/app:1", "example/app:latest"},
		"Layers":   []string{"1111/layer.tar", "2222/layer.tar", "3333/layer.tar", "4444/layer.tar"},
	}})
	f.files["repositories"] = []byte(`{"example/app":{"1":"4444","latest":"4444"}}`)
	return f, plain, gz, cfgDigest
}

func TestClassicDockerArchive(t *testing.T) {
	f, plain, gz, cfgDigest := classicDockerArchive(t)
	for _, form := range []string{"tar", "dir"} {
		t.Run(form, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "save")
			if form == "tar" {
				f.writeTar(t, p)
			} else {
				f.writeDir(t, p)
			}
			a, imgs := openImages(t, p)
			if a.Format() != FormatDockerArchive {
				t.Errorf("Format = %q", a.Format())
			}
			if len(imgs) != 1 {
				t.Fatalf("%d images", len(imgs))
			}
			img := imgs[0]
			if !slices.Equal(img.Names, []string{"example/app:1", "example/app:latest"}) {
				t.Errorf("Names = %q", img.Names)
			}
			if img.ConfigDigest != cfgDigest {
				t.Errorf("ConfigDigest %s, want %s", img.ConfigDigest, cfgDigest)
			}
			wantDigests := []digest.Digest{digest.FromBytes(plain), digest.FromBytes(gz), digest.FromBytes(plain), digest.FromBytes(plain)}
			wantTypes := []string{v1.MediaTypeImageLayer, v1.MediaTypeImageLayerGzip, v1.MediaTypeImageLayer, v1.MediaTypeImageLayer}
			if len(img.Layers) != len(wantDigests) {
				t.Fatalf("%d layers", len(img.Layers))
			}
			for i, l := range img.Layers {
				if l.Digest != wantDigests[i] || l.MediaType != wantTypes[i] {
					t.Errorf("layer %d: %s %s, want %s %s", i, l.Digest, l.MediaType, wantDigests[i], wantTypes[i])
				}
				files := readLayer(t, a, l)
				if len(files) != 1 {
					t.Errorf("layer %d files %q", i, files)
				}
			}
			// The synthesized manifest describes exactly these blobs.
			var m v1.Manifest
			if err := json.Unmarshal(img.ManifestBytes, &m); err != nil {
				t.Fatal(err)
			}
			if digest.FromBytes(img.ManifestBytes) != img.ManifestDigest || m.Config.Digest != cfgDigest || len(m.Layers) != 4 || m.Layers[1].Digest != digest.FromBytes(gz) {
				t.Errorf("synthesized manifest %s does not match: %s", img.ManifestDigest, img.ManifestBytes)
			}
		})
	}
}

// TestDocker25Archive: an OCI layout plus manifest.json, as Docker 25+
// saves; the OCI manifest is used as written.
func TestDocker25Archive(t *testing.T) {
	f := newLayoutFixture()
	md, cd := f.image(t, nil, testLayer{tar: layerTar(t, map[string]string{"a": "1"})}, testLayer{tar: layerTar(t, map[string]string{"b": "2"})})
	md.Annotations = map[string]string{annotationContainerdName: "example/app:latest", v1.AnnotationRefName: "latest"}
	f.index(t, md)
	var m v1.Manifest
	if err := json.Unmarshal(f.files[blobPath(md.Digest)], &m); err != nil {
		t.Fatal(err)
	}
	f.files["manifest.json"] = mustJSON(t, []map[string]any{{
		"Config":   blobPath(cd.Digest),
		"RepoTags": []string{"example/app:latest"},
		"Layers":   []string{blobPath(m.Layers[0].Digest), blobPath(m.Layers[1].Digest)},
	}})
	p := filepath.Join(t.TempDir(), "save.tar")
	f.writeTar(t, p)
	a, imgs := openImages(t, p)
	if a.Format() != FormatDockerArchive {
		t.Errorf("Format = %q", a.Format())
	}
	if len(imgs) != 1 {
		t.Fatalf("%d images", len(imgs))
	}
	img := imgs[0]
	if img.ManifestDigest != md.Digest || !bytes.Equal(img.ManifestBytes, f.files[blobPath(md.Digest)]) {
		t.Errorf("ManifestDigest %s, want the OCI manifest %s", img.ManifestDigest, md.Digest)
	}
	if !slices.Equal(img.Names, []string{"example/app:latest"}) {
		t.Errorf("Names = %q", img.Names)
	}
	for _, l := range img.Layers {
		readLayer(t, a, l)
	}

	// The same layout without manifest.json is an oci-archive whose names
	// come from the annotations: the full name, not the bare tag again.
	delete(f.files, "manifest.json")
	f.writeTar(t, p)
	a, imgs = openImages(t, p)
	if a.Format() != FormatOCIArchive || len(imgs) != 1 || !slices.Equal(imgs[0].Names, []string{"example/app:latest"}) {
		t.Errorf("as oci-archive: format %q, %d images, names %q", a.Format(), len(imgs), imgs[0].Names)
	}
}

func TestPlatformSelection(t *testing.T) {
	other := "s390x"
	if runtime.GOARCH == other {
		other = "ppc64le"
	}
	f := newLayoutFixture()
	layer := testLayer{tar: layerTar(t, map[string]string{"f": "x"})}
	native := &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	foreign := &v1.Platform{OS: "linux", Architecture: other}
	windows := &v1.Platform{OS: "windows", Architecture: runtime.GOARCH}
	mNative, cNative := f.image(t, native, layer)
	mForeign, cForeign := f.image(t, foreign, layer)
	mWindows, _ := f.image(t, windows, layer)
	attest := f.blob(v1.MediaTypeImageManifest, []byte(`{"schemaVersion":2}`))
	attest.Platform = &v1.Platform{OS: "unknown", Architecture: "unknown"}
	inner := f.jsonBlob(t, v1.MediaTypeImageIndex, map[string]any{"schemaVersion": 2, "mediaType": v1.MediaTypeImageIndex,
		"manifests": []v1.Descriptor{attest, mForeign, mWindows, mNative}})
	outer := f.jsonBlob(t, v1.MediaTypeImageIndex, map[string]any{"schemaVersion": 2, "manifests": []v1.Descriptor{inner}})

	tests := []struct {
		name     string
		top      []v1.Descriptor
		platform v1.Platform
		want     []digest.Digest // config digests; nil: ErrNoPlatform
	}{
		{"nested index, native", []v1.Descriptor{named(outer, "multi")}, *native, []digest.Digest{cNative.Digest}},
		{"nested index, other arch", []v1.Descriptor{named(outer, "multi")}, *foreign, []digest.Digest{cForeign.Digest}},
		{"nested index, no match", []v1.Descriptor{named(outer, "multi")}, v1.Platform{OS: "linux", Architecture: "mips64"}, nil},
		{"flat platforms under one name", []v1.Descriptor{named(mForeign, "flat"), named(mNative, "flat")}, *native, []digest.Digest{cNative.Digest}},
		{"flat, different names are different images", []v1.Descriptor{named(mForeign, "a"), named(mNative, "b")}, *native, []digest.Digest{cForeign.Digest, cNative.Digest}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.index(t, tc.top...)
			dir := t.TempDir()
			f.writeDir(t, dir)
			a, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			a.platform = tc.platform
			imgs, err := a.Images(context.Background())
			if tc.want == nil {
				if !errors.Is(err, ErrNoPlatform) {
					t.Fatalf("err = %v, want ErrNoPlatform", err)
				}
				for _, p := range []string{"linux/mips64", "linux/" + other, "windows/" + runtime.GOARCH, "linux/" + runtime.GOARCH, blobPath(inner.Digest)} {
					if !strings.Contains(err.Error(), p) {
						t.Errorf("error %q does not name %s", err, p)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []digest.Digest
			for _, img := range imgs {
				got = append(got, img.ConfigDigest)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("configs %v, want %v", got, tc.want)
			}
		})
	}
}

// corruptCase changes a good single-image fixture so that Open or Images
// fails.
type corruptCase struct {
	name   string
	mutate func(t *testing.T, f *fixture, g goodImage)
	kind   error
	// inError must appear in the message (besides the file's path).
	inError string
	tarOnly bool
}

type goodImage struct {
	manifest, config v1.Descriptor
	layers           []v1.Descriptor
}

func goodLayout(t *testing.T) (*fixture, goodImage) {
	t.Helper()
	f := newLayoutFixture()
	md, cd := f.image(t, nil,
		testLayer{tar: layerTar(t, map[string]string{"a": "one"})},
		testLayer{tar: layerTar(t, map[string]string{"b": "two"}), gzip: true})
	f.index(t, named(md, "v1"))
	var m v1.Manifest
	if err := json.Unmarshal(f.files[blobPath(md.Digest)], &m); err != nil {
		t.Fatal(err)
	}
	return f, goodImage{manifest: md, config: cd, layers: m.Layers}
}

// rewriteManifest replaces the image's manifest by edit(manifest) and
// points index.json at it.
func rewriteManifest(t *testing.T, f *fixture, g goodImage, edit func(m *v1.Manifest)) string {
	var m v1.Manifest
	if err := json.Unmarshal(f.files[blobPath(g.manifest.Digest)], &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	md := f.jsonBlob(t, v1.MediaTypeImageManifest, m)
	f.index(t, named(md, "v1"))
	return blobPath(md.Digest)
}

func flipLastByte(b []byte) []byte {
	c := bytes.Clone(b)
	c[len(c)-1] ^= 0x55
	return c
}

func TestCorruptInputs(t *testing.T) {
	cases := []corruptCase{
		{"config digest mismatch", func(t *testing.T, f *fixture, g goodImage) {
			p := blobPath(g.config.Digest)
			f.files[p] = bytes.Replace(f.files[p], []byte(`"layers"`), []byte(`"LAYERS"`), 1)
		}, ErrCorrupt, "content digest", false},
		{"manifest digest mismatch", func(t *testing.T, f *fixture, g goodImage) {
			p := blobPath(g.manifest.Digest)
			f.files[p] = bytes.Replace(f.files[p], []byte(`"schemaVersion":2`), []byte(`"schemaVersion":3`), 1)
		}, ErrCorrupt, "content digest", false},
		{"truncated layer blob", func(t *testing.T, f *fixture, g goodImage) {
			p := blobPath(g.layers[1].Digest)
			f.files[p] = f.files[p][:len(f.files[p])-10]
		}, ErrCorrupt, "size", false},
		{"missing layer blob", func(t *testing.T, f *fixture, g goodImage) {
			delete(f.files, blobPath(g.layers[0].Digest))
		}, ErrCorrupt, "missing blob", false},
		{"missing config blob", func(t *testing.T, f *fixture, g goodImage) {
			delete(f.files, blobPath(g.config.Digest))
		}, fs.ErrNotExist, "", false},
		{"diff_ids count mismatch", func(t *testing.T, f *fixture, g goodImage) {
			rewriteManifest(t, f, g, func(m *v1.Manifest) {
				var cfg v1.Image
				if err := json.Unmarshal(f.files[blobPath(m.Config.Digest)], &cfg); err != nil {
					t.Fatal(err)
				}
				cfg.RootFS.DiffIDs = cfg.RootFS.DiffIDs[:1]
				m.Config = f.jsonBlob(t, v1.MediaTypeImageConfig, cfg)
			})
		}, ErrCorrupt, "1 diff_ids != 2 layers", false},
		{"bad JSON in index.json", func(t *testing.T, f *fixture, g goodImage) {
			f.files["index.json"] = []byte(`{"schemaVersion":2,"manifests":[`)
		}, ErrCorrupt, "index.json: bad JSON", false},
		{"bad JSON in manifest", func(t *testing.T, f *fixture, g goodImage) {
			d := f.blob(v1.MediaTypeImageManifest, []byte(`{"schemaVersion":2,"config":`))
			f.index(t, d)
		}, ErrCorrupt, "bad JSON in manifest", false},
		{"bad JSON in config", func(t *testing.T, f *fixture, g goodImage) {
			rewriteManifest(t, f, g, func(m *v1.Manifest) {
				m.Config = f.blob(v1.MediaTypeImageConfig, []byte(`{"rootfs":`))
			})
		}, ErrCorrupt, "bad JSON in config", false},
		{"foreign layer with URLs", func(t *testing.T, f *fixture, g goodImage) {
			rewriteManifest(t, f, g, func(m *v1.Manifest) {
				m.Layers[0].URLs = []string{"https://example.invalid/layer"}
			})
		}, ErrUnsupported, "foreign layer", false},
		{"layer of a non-layer media type", func(t *testing.T, f *fixture, g goodImage) {
			rewriteManifest(t, f, g, func(m *v1.Manifest) {
				m.Layers[1].MediaType = "application/vnd.example.not-a-layer"
			})
		}, ErrCorrupt, "is not a layer type", false},
		{"layer size differs from the blob", func(t *testing.T, f *fixture, g goodImage) {
			rewriteManifest(t, f, g, func(m *v1.Manifest) { m.Layers[0].Size += 12 })
		}, ErrCorrupt, "!= manifest", false},
		{"unknown layout version", func(t *testing.T, f *fixture, g goodImage) {
			f.files["oci-layout"] = []byte(`{"imageLayoutVersion":"9.9.9"}`)
		}, ErrUnsupported, "oci-layout", false},
		{"docker-archive symlink outside the archive", func(t *testing.T, f *fixture, g goodImage) {
			dockerManifest(t, f, g, "evil/layer.tar")
			f.links = append(f.links, fixtureLink{name: "evil/layer.tar", target: "../../../etc/passwd"})
		}, ErrCorrupt, "outside the archive", true},
		{"docker-archive absolute symlink", func(t *testing.T, f *fixture, g goodImage) {
			dockerManifest(t, f, g, "evil/layer.tar")
			f.links = append(f.links, fixtureLink{name: "evil/layer.tar", target: "/etc/passwd"})
		}, ErrCorrupt, "outside the archive", true},
		{"docker-archive hardlink outside the archive", func(t *testing.T, f *fixture, g goodImage) {
			dockerManifest(t, f, g, "evil/layer.tar")
			f.links = append(f.links, fixtureLink{name: "evil/layer.tar", target: "../etc/passwd", hard: true})
		}, ErrCorrupt, "outside the archive", true},
		{"docker-archive symlink loop", func(t *testing.T, f *fixture, g goodImage) {
			dockerManifest(t, f, g, "loop/layer.tar")
			f.links = append(f.links, fixtureLink{name: "loop/layer.tar", target: "layer.tar"})
		}, ErrCorrupt, "too many levels", true},
		{"docker-archive bad manifest.json", func(t *testing.T, f *fixture, g goodImage) {
			f.files["manifest.json"] = []byte(`[{"Config":`)
		}, ErrCorrupt, "manifest.json: bad JSON", false},
		{"docker-archive foreign layer source", func(t *testing.T, f *fixture, g goodImage) {
			layer0 := f.files[blobPath(g.layers[0].Digest)]
			f.files["0/layer.tar"] = layer0
			f.files["manifest.json"] = mustJSON(t, []map[string]any{{
				"Config": blobPath(g.config.Digest),
				"Layers": []string{"0/layer.tar", blobPath(g.layers[1].Digest)},
				"LayerSources": map[digest.Digest]v1.Descriptor{digest.FromBytes(layer0): {
					MediaType: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
					Digest:    digest.FromBytes([]byte("elsewhere")), Size: 9, URLs: []string{"https://example.invalid/l"}}},
			}})
		}, ErrUnsupported, "foreign layer", false},
		{"docker-archive config name and content disagree", func(t *testing.T, f *fixture, g goodImage) {
			other := digest.FromBytes([]byte("other"))
			f.files[other.Encoded()+".json"] = f.files[blobPath(g.config.Digest)]
			f.files["manifest.json"] = mustJSON(t, []map[string]any{{
				"Config": other.Encoded() + ".json",
				"Layers": []string{blobPath(g.layers[0].Digest), blobPath(g.layers[1].Digest)},
			}})
		}, ErrCorrupt, "content digest", false},
		{"docker-archive layer path leaves the archive", func(t *testing.T, f *fixture, g goodImage) {
			dockerManifest(t, f, g, "../outside.tar")
		}, ErrCorrupt, "not a plain relative path", false},
	}
	for _, tc := range cases {
		for _, form := range []string{"tar", "dir"} {
			if tc.tarOnly && form == "dir" {
				continue
			}
			t.Run(tc.name+"/"+form, func(t *testing.T) {
				f, g := goodLayout(t)
				tc.mutate(t, f, g)
				p := filepath.Join(t.TempDir(), "img")
				if form == "tar" {
					f.writeTar(t, p)
				} else {
					f.writeDir(t, p)
				}
				err := openAndList(p)
				if err == nil {
					t.Fatal("no error")
				}
				t.Logf("error: %v", err)
				if !errors.Is(err, tc.kind) {
					t.Errorf("error %q is not %v", err, tc.kind)
				}
				if !strings.Contains(err.Error(), tc.inError) || !strings.Contains(err.Error(), p) {
					t.Errorf("error %q does not say %q and name %s", err, tc.inError, p)
				}
			})
		}
	}
}

// dockerManifest adds a manifest.json whose first layer is layerPath, making
// the fixture a docker-archive.
func dockerManifest(t *testing.T, f *fixture, g goodImage, layerPath string) {
	f.files["manifest.json"] = mustJSON(t, []map[string]any{{
		"Config": blobPath(g.config.Digest),
		"Layers": []string{layerPath, blobPath(g.layers[1].Digest)},
	}})
}

func openAndList(p string) error {
	a, err := Open(p)
	if err != nil {
		return err
	}
	defer a.Close()
	_, err = a.Images(context.Background())
	return err
}

// TestGoodLayoutReads makes sure the corrupt cases start from a fixture
// that reads, in both forms.
func TestGoodLayoutReads(t *testing.T) {
	f, g := goodLayout(t)
	for _, form := range []string{"tar", "dir"} {
		p := filepath.Join(t.TempDir(), "img")
		if form == "tar" {
			f.writeTar(t, p)
		} else {
			f.writeDir(t, p)
		}
		a, imgs := openImages(t, p)
		if len(imgs) != 1 || imgs[0].ManifestDigest != g.manifest.Digest || !slices.Equal(imgs[0].Names, []string{"v1"}) {
			t.Fatalf("%s: %+v", form, imgs)
		}
		for _, l := range imgs[0].Layers {
			readLayer(t, a, l)
		}
	}
}

func TestOpenLayerVerifies(t *testing.T) {
	f, g := goodLayout(t)
	tampered := g.layers[0]
	p := blobPath(tampered.Digest)
	f.files[p] = flipLastByte(f.files[p]) // same size: only the digest can tell
	for _, form := range []string{"tar", "dir"} {
		t.Run(form, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "img")
			if form == "tar" {
				f.writeTar(t, path)
			} else {
				f.writeDir(t, path)
			}
			a, imgs := openImages(t, path)
			layers := imgs[0].Layers

			// The intact layer reads cleanly and behaves as an io.Reader.
			rc, err := a.OpenLayer(layers[1])
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(rc, f.files[blobPath(layers[1].Digest)]); err != nil {
				t.Errorf("intact layer: %v", err)
			}
			rc.Close()

			// The tampered one fails at the end, never with a bare io.EOF,
			// even when read a byte at a time.
			rc, err = a.OpenLayer(layers[0])
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			r := iotest.OneByteReader(rc)
			var n int
			for {
				var b [1]byte
				k, err := r.Read(b[:])
				n += k
				if err == nil {
					continue
				}
				if err == io.EOF || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), p) {
					t.Fatalf("after %d bytes: err = %v, want a digest error naming %s", n, err, p)
				}
				if _, again := r.Read(b[:]); again == nil || again == io.EOF {
					t.Errorf("error is not sticky: %v", again)
				}
				break
			}
			if int64(n) != tampered.Size {
				t.Errorf("read %d bytes before the error, blob has %d", n, tampered.Size)
			}

			// A Layer whose size does not match the blob is refused.
			wrong := layers[1]
			wrong.Size++
			if _, err := a.OpenLayer(wrong); !errors.Is(err, ErrCorrupt) {
				t.Errorf("wrong size: err = %v", err)
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := newFixture()
	plain.files["hello.txt"] = []byte("hi")
	plainTar := filepath.Join(dir, "plain.tar")
	plain.writeTar(t, plainTar)
	tarBytes, err := os.ReadFile(plainTar)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := goodLayout(t)
	good := filepath.Join(dir, "good.tar")
	f.writeTar(t, good)
	goodBytes, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		path string
		kind error
	}{
		{"missing path", filepath.Join(dir, "nope"), fs.ErrNotExist},
		{"empty directory", t.TempDir(), ErrNotImage},
		{"not a tar", write("random.bin", bytes.Repeat([]byte("not a tar "), 100)), ErrNotImage},
		{"empty file", write("empty", nil), ErrNotImage},
		{"tar without image", plainTar, ErrNotImage},
		{"compressed tar", write("image.tar.gz", gzipBytes(t, tarBytes)), ErrUnsupported},
		{"truncated tar", write("truncated.tar", goodBytes[:len(goodBytes)/2+100]), ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Open(tc.path)
			if err == nil {
				a.Close()
				t.Fatal("Open succeeded")
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.path) {
				t.Errorf("err = %v, want %v naming %s", err, tc.kind, tc.path)
			}
		})
	}
}

// TestConcurrentLayerReads reads every layer of an archive from several
// goroutines at once: tar members share one *os.File through ReadAt.
func TestConcurrentLayerReads(t *testing.T) {
	f, _, _, _ := classicDockerArchive(t)
	p := filepath.Join(t.TempDir(), "save.tar")
	f.writeTar(t, p)
	a, imgs := openImages(t, p)
	errs := make(chan error, 4*len(imgs[0].Layers))
	for range 4 {
		for _, l := range imgs[0].Layers {
			go func() {
				rc, err := a.OpenLayer(l)
				if err == nil {
					_, err = io.Copy(io.Discard, rc)
					rc.Close()
				}
				errs <- err
			}()
		}
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestImagesHonoursContext(t *testing.T) {
	f, _ := goodLayout(t)
	dir := t.TempDir()
	f.writeDir(t, dir)
	a, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := a.Images(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Images with a cancelled context: err = %v", err)
	}
}

// TestDockerMediaTypes reads a layout whose manifest and layers use the
// docker distribution media types, with a descriptor lacking a media type.
func TestDockerMediaTypes(t *testing.T) {
	f := newLayoutFixture()
	plain := layerTar(t, map[string]string{"x": "1"})
	gz := f.blob("application/vnd.docker.image.rootfs.diff.tar.gzip", gzipBytes(t, plain))
	cfg := f.jsonBlob(t, mediaTypeDockerConfig, v1.Image{RootFS: v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(plain)}}})
	md := f.jsonBlob(t, mediaTypeDockerManifest, map[string]any{
		"schemaVersion": 2, "mediaType": mediaTypeDockerManifest, "config": cfg, "layers": []v1.Descriptor{gz}})
	list := f.jsonBlob(t, "", map[string]any{
		"schemaVersion": 2, "mediaType": mediaTypeDockerManifestList,
		"manifests": []v1.Descriptor{{MediaType: mediaTypeDockerManifest, Digest: md.Digest, Size: md.Size,
			Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}}})
	f.index(t, list)
	dir := t.TempDir()
	f.writeDir(t, dir)
	a, imgs := openImages(t, dir)
	if len(imgs) != 1 || imgs[0].ManifestDigest != md.Digest || len(imgs[0].Layers) != 1 {
		t.Fatalf("images: %+v", imgs)
	}
	l := imgs[0].Layers[0]
	if l.Compression() != "gzip" || l.MediaType != gz.MediaType {
		t.Errorf("layer %s compression %q", l.MediaType, l.Compression())
	}
	if files := readLayer(t, a, l); files["x"] != "1" {
		t.Errorf("layer files %q", files)
	}
}
