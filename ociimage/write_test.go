package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/internal/imagegen"
	"github.com/layerfs/layerfs/internal/testutil"
)

// bytesLayer streams b in small chunks, as a store export would.
func bytesLayer(b []byte) LayerToWrite {
	return LayerToWrite{
		DiffID: digest.FromBytes(b),
		Write: func(ctx context.Context, w io.Writer) error {
			for rest := b; len(rest) > 0; {
				n := min(len(rest), 4096)
				if _, err := w.Write(rest[:n]); err != nil {
					return err
				}
				rest = rest[n:]
			}
			return nil
		},
	}
}

// configFor makes an image config whose diff_ids are those of layers.
func configFor(t *testing.T, diffIDs []digest.Digest) []byte {
	t.Helper()
	created := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	cfg := v1.Image{
		Created:  &created,
		Platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config:   v1.ImageConfig{Cmd: []string{"/bin/sh"}},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
	for i := range diffIDs {
		cfg.History = append(cfg.History, v1.History{Created: &created, CreatedBy: fmt.Sprintf("layer %d", i)})
	}
	return mustJSON(t, cfg)
}

// sampleImage is imagegen's three sample layers under names.
func sampleImage(t *testing.T, names ...string) (ImageToWrite, [][]byte) {
	t.Helper()
	tars, err := imagegen.SampleLayers()
	if err != nil {
		t.Fatal(err)
	}
	img := ImageToWrite{Names: names}
	var diffIDs []digest.Digest
	for _, b := range tars {
		img.Layers = append(img.Layers, bytesLayer(b))
		diffIDs = append(diffIDs, digest.FromBytes(b))
	}
	img.Config = configFor(t, diffIDs)
	return img, tars
}

var sampleNames = []string{"example/sample:v1", "other/thing:v2"}

// readBack reads a layer through OpenLayer and returns it uncompressed.
func readBack(t *testing.T, a *Archive, l Layer) []byte {
	t.Helper()
	rc, err := a.OpenLayer(l)
	if err != nil {
		t.Fatalf("OpenLayer %s: %v", l.Digest, err)
	}
	defer rc.Close()
	plain, f, err := compression.Decompress(rc)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	b, err := io.ReadAll(plain)
	if err != nil {
		t.Fatalf("read layer %s: %v", l.Digest, err)
	}
	want := compression.Format(l.Compression())
	if want == "" {
		want = compression.None
	}
	if f != want {
		t.Errorf("layer %s is %s-compressed, media type %s says %s", l.Digest, f, l.MediaType, want)
	}
	return b
}

// dirEntries lists dir, to see what a failed write left behind.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

type writeFunc func(ctx context.Context, target string, img ImageToWrite) (digest.Digest, error)

func ociLayoutWriter(c compression.Format) writeFunc {
	return func(ctx context.Context, target string, img ImageToWrite) (digest.Digest, error) {
		return WriteOCILayout(ctx, target, img, c)
	}
}

func ociArchiveWriter(c compression.Format) writeFunc {
	return func(ctx context.Context, target string, img ImageToWrite) (digest.Digest, error) {
		return WriteOCIArchive(ctx, target, img, c)
	}
}

func dockerArchiveWriter(ctx context.Context, target string, img ImageToWrite) (digest.Digest, error) {
	return "", WriteDockerArchive(ctx, target, img)
}

var allWriters = []struct {
	name   string
	write  writeFunc
	format string
}{
	{"oci-layout", ociLayoutWriter(""), FormatOCILayout},
	{"oci-archive", ociArchiveWriter(compression.Gzip), FormatOCIArchive},
	{"docker-archive", dockerArchiveWriter, FormatDockerArchive},
}

// TestWriteReadBack writes every format and reads it back with Open.
func TestWriteReadBack(t *testing.T) {
	img, tars := sampleImage(t, sampleNames...)
	wantDiffIDs := []digest.Digest{}
	for _, b := range tars {
		wantDiffIDs = append(wantDiffIDs, digest.FromBytes(b))
	}
	tests := []struct {
		name      string
		write     writeFunc
		format    string
		mediaType string
	}{
		{"oci-layout default", ociLayoutWriter(""), FormatOCILayout, v1.MediaTypeImageLayerGzip},
		{"oci-layout zstd", ociLayoutWriter(compression.Zstd), FormatOCILayout, v1.MediaTypeImageLayerZstd},
		{"oci-layout none", ociLayoutWriter(compression.None), FormatOCILayout, v1.MediaTypeImageLayer},
		{"oci-archive gzip", ociArchiveWriter(compression.Gzip), FormatOCIArchive, v1.MediaTypeImageLayerGzip},
		{"oci-archive zstd", ociArchiveWriter(compression.Zstd), FormatOCIArchive, v1.MediaTypeImageLayerZstd},
		{"docker-archive", dockerArchiveWriter, FormatDockerArchive, v1.MediaTypeImageLayer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "out")
			md, err := tc.write(context.Background(), target, img)
			if err != nil {
				t.Fatal(err)
			}
			a, imgs := openImages(t, target)
			if a.Format() != tc.format {
				t.Errorf("Format = %s, want %s", a.Format(), tc.format)
			}
			// OCI: one index entry per name; docker: one entry, all tags.
			var gotNames []string
			for _, got := range imgs {
				gotNames = append(gotNames, got.Names...)
			}
			if !slices.Equal(gotNames, sampleNames) {
				t.Errorf("names %q, want %q", gotNames, sampleNames)
			}
			for _, got := range imgs {
				if tc.format != FormatDockerArchive && got.ManifestDigest != md {
					t.Errorf("ManifestDigest %s, writer returned %s", got.ManifestDigest, md)
				}
				if got.ConfigDigest != digest.FromBytes(img.Config) || !bytes.Equal(got.ConfigBytes, img.Config) {
					t.Errorf("config %s differs from the one given (%s)", got.ConfigDigest, digest.FromBytes(img.Config))
				}
				if !slices.Equal(got.Config.RootFS.DiffIDs, wantDiffIDs) {
					t.Errorf("diff_ids %v, want %v", got.Config.RootFS.DiffIDs, wantDiffIDs)
				}
				if len(got.Layers) != len(tars) {
					t.Fatalf("%d layers, want %d", len(got.Layers), len(tars))
				}
				for i, l := range got.Layers {
					if l.MediaType != tc.mediaType {
						t.Errorf("layer %d media type %s, want %s", i, l.MediaType, tc.mediaType)
					}
					if l.DiffID != wantDiffIDs[i] {
						t.Errorf("layer %d DiffID %s, want %s", i, l.DiffID, wantDiffIDs[i])
					}
					if !bytes.Equal(readBack(t, a, l), tars[i]) {
						t.Errorf("layer %d: content differs from what was written", i)
					}
				}
			}
		})
	}
}

// TestWriteOCIIndexAnnotations reads index.json with plain encoding/json:
// the tag is what "oci:DIR:TAG" finds, the full name is beside it.
func TestWriteOCIIndexAnnotations(t *testing.T) {
	img, _ := sampleImage(t, "example/sample:v1", "example/sample", "example/sample:v1")
	dir := filepath.Join(t.TempDir(), "layout")
	md, err := WriteOCILayout(context.Background(), dir, img, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx v1.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	type ann struct{ tag, full string }
	var got []ann
	for _, d := range idx.Manifests {
		if d.Digest != md || d.MediaType != v1.MediaTypeImageManifest {
			t.Errorf("index entry %s %s, want manifest %s", d.MediaType, d.Digest, md)
		}
		got = append(got, ann{d.Annotations[v1.AnnotationRefName], d.Annotations["io.containerd.image.name"]})
	}
	// The duplicate is dropped; a bare name means :latest.
	want := []ann{{"v1", "example/sample:v1"}, {"latest", "example/sample:latest"}}
	if !slices.Equal(got, want) {
		t.Errorf("index annotations %v, want %v", got, want)
	}
	layout, err := os.ReadFile(filepath.Join(dir, "oci-layout"))
	if err != nil || !strings.Contains(string(layout), `"imageLayoutVersion":"1.0.0"`) {
		t.Errorf("oci-layout: %q, %v", layout, err)
	}
}

// tarMembers reads a tar file whole: member name to content.
func tarMembers(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = b
	}
}

// TestWriteDockerArchiveMembers checks the classic layout member by member.
func TestWriteDockerArchiveMembers(t *testing.T) {
	img, tars := sampleImage(t, sampleNames...)
	p := filepath.Join(t.TempDir(), "docker.tar")
	if err := WriteDockerArchive(context.Background(), p, img); err != nil {
		t.Fatal(err)
	}
	m := tarMembers(t, p)
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(m["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("manifest.json %q: %v", m["manifest.json"], err)
	}
	e := manifest[0]
	if e.Config != digest.FromBytes(img.Config).Encoded()+".json" || !bytes.Equal(m[e.Config], img.Config) {
		t.Errorf("Config %q does not name the config by its digest", e.Config)
	}
	if !slices.Equal(e.RepoTags, sampleNames) {
		t.Errorf("RepoTags %q", e.RepoTags)
	}
	var top string
	for i, l := range e.Layers {
		hex := digest.FromBytes(tars[i]).Encoded()
		if l != hex+"/layer.tar" || !bytes.Equal(m[l], tars[i]) {
			t.Errorf("layer %d: %q, content equal %v", i, l, bytes.Equal(m[l], tars[i]))
		}
		if string(m[hex+"/VERSION"]) != "1.0" {
			t.Errorf("%s/VERSION = %q", hex, m[hex+"/VERSION"])
		}
		var lj struct{ ID, Parent string }
		if err := json.Unmarshal(m[hex+"/json"], &lj); err != nil || lj.ID != hex || lj.Parent != top {
			t.Errorf("%s/json = %s (%v), want id %s parent %q", hex, m[hex+"/json"], err, hex, top)
		}
		top = hex
	}
	var repos map[string]map[string]string
	if err := json.Unmarshal(m["repositories"], &repos); err != nil {
		t.Fatalf("repositories %q: %v", m["repositories"], err)
	}
	want := map[string]map[string]string{"example/sample": {"v1": top}, "other/thing": {"v2": top}}
	if fmt.Sprint(repos) != fmt.Sprint(want) {
		t.Errorf("repositories %v, want %v", repos, want)
	}
}

// TestWriteRepeatedLayer: a layer that appears twice is streamed and stored
// once and read back twice.
func TestWriteRepeatedLayer(t *testing.T) {
	tars, err := imagegen.SampleLayers()
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	l := bytesLayer(tars[0])
	inner := l.Write
	l.Write = func(ctx context.Context, w io.Writer) error { calls++; return inner(ctx, w) }
	img := ImageToWrite{Layers: []LayerToWrite{l, bytesLayer(tars[1]), l}}
	img.Config = configFor(t, []digest.Digest{l.DiffID, digest.FromBytes(tars[1]), l.DiffID})
	for _, w := range allWriters {
		t.Run(w.name, func(t *testing.T) {
			calls = 0
			target := filepath.Join(t.TempDir(), "out")
			if _, err := w.write(context.Background(), target, img); err != nil {
				t.Fatal(err)
			}
			if calls != 1 {
				t.Errorf("the repeated layer was streamed %d times", calls)
			}
			a, imgs := openImages(t, target)
			if len(imgs) != 1 || len(imgs[0].Layers) != 3 {
				t.Fatalf("images %v", imgs)
			}
			if got := readBack(t, a, imgs[0].Layers[2]); !bytes.Equal(got, tars[0]) {
				t.Error("the repeated layer reads back different")
			}
		})
	}
}

// TestWriteFailuresLeaveNothing: a bad layer, a failing or cancelled
// writer, a config that disagrees: an error, and the target's directory as
// it was.
func TestWriteFailuresLeaveNothing(t *testing.T) {
	good, tars := sampleImage(t, "example/sample:v1")
	errBoom := errors.New("export failed")
	tests := []struct {
		name    string
		edit    func(img *ImageToWrite, ctx *context.Context)
		wantErr error
		wantMsg string
	}{
		{"diffID mismatch", func(img *ImageToWrite, _ *context.Context) {
			bad := bytes.Clone(tars[1])
			bad[len(bad)/3] ^= 1
			img.Layers[1].Write = bytesLayer(bad).Write
		}, ErrCorrupt, "layer 1 (" + digest.FromBytes(tars[1]).String() + ")"},
		{"layer writer fails", func(img *ImageToWrite, _ *context.Context) {
			img.Layers[2].Write = func(ctx context.Context, w io.Writer) error {
				w.Write([]byte("partial"))
				return errBoom
			}
		}, errBoom, "layer 2"},
		{"config diff_ids disagree", func(img *ImageToWrite, _ *context.Context) {
			img.Config = configFor(t, []digest.Digest{img.Layers[0].DiffID, img.Layers[2].DiffID, img.Layers[1].DiffID})
		}, ErrCorrupt, "diff_ids[1]"},
		{"config lacks a layer", func(img *ImageToWrite, _ *context.Context) {
			img.Config = configFor(t, []digest.Digest{img.Layers[0].DiffID})
		}, ErrCorrupt, "1 diff_ids != 3 layers"},
		{"config not JSON", func(img *ImageToWrite, _ *context.Context) {
			img.Config = []byte("[]")
		}, ErrCorrupt, "config"},
		{"digest reference", func(img *ImageToWrite, _ *context.Context) {
			img.Names = []string{"example/sample@" + img.Layers[0].DiffID.String()}
		}, nil, "no digest"},
		{"cancelled", func(img *ImageToWrite, ctx *context.Context) {
			c, cancel := context.WithCancel(*ctx)
			inner := img.Layers[1].Write
			img.Layers[1].Write = func(ctx context.Context, w io.Writer) error {
				cancel()
				return inner(ctx, w)
			}
			*ctx = c
		}, context.Canceled, ""},
	}
	for _, w := range allWriters {
		for _, tc := range tests {
			t.Run(w.name+"/"+tc.name, func(t *testing.T) {
				img := good
				img.Layers = slices.Clone(good.Layers)
				ctx := context.Background()
				tc.edit(&img, &ctx)
				parent := t.TempDir()
				if err := os.WriteFile(filepath.Join(parent, "bystander"), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
				target := filepath.Join(parent, "out")
				_, err := w.write(ctx, target, img)
				if err == nil {
					t.Fatal("no error")
				}
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Errorf("error %v is not %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), target) {
					t.Errorf("error %q should name %q and the target", err, tc.wantMsg)
				}
				if got := dirEntries(t, parent); !slices.Equal(got, []string{"bystander"}) {
					t.Errorf("left behind: %q", got)
				}
			})
		}
	}
}

// TestWriteRefusesExistingTarget: a non-empty directory or file is not
// touched; an empty one is used.
func TestWriteRefusesExistingTarget(t *testing.T) {
	img, _ := sampleImage(t, "example/sample:v1")
	for _, w := range allWriters {
		t.Run(w.name, func(t *testing.T) {
			parent := t.TempDir()
			target := filepath.Join(parent, "out")
			isDir := w.format == FormatOCILayout
			if isDir {
				if err := os.Mkdir(target, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(target, "index.json"), []byte("{}"), 0o644); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(target, []byte("keep me"), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := w.write(context.Background(), target, img)
			if err == nil || !strings.Contains(err.Error(), "not empty") {
				t.Fatalf("error %v, want one saying the target is not empty", err)
			}
			if got := dirEntries(t, parent); !slices.Equal(got, []string{"out"}) {
				t.Errorf("left behind: %q", got)
			}
			if isDir {
				if got := dirEntries(t, target); !slices.Equal(got, []string{"index.json"}) {
					t.Errorf("the directory now holds %q", got)
				}
			} else if b, _ := os.ReadFile(target); string(b) != "keep me" {
				t.Errorf("the file now holds %q", b)
			}

			// Emptied, the target is used.
			if isDir {
				os.Remove(filepath.Join(target, "index.json"))
			} else {
				os.WriteFile(target, nil, 0o644)
			}
			if _, err := w.write(context.Background(), target, img); err != nil {
				t.Fatalf("empty target: %v", err)
			}
			if _, imgs := openImages(t, target); len(imgs) != 1 {
				t.Errorf("%d images", len(imgs))
			}
		})
	}
}

func TestParseReference(t *testing.T) {
	tests := []struct {
		in        string
		repo, tag string
		ok        bool
	}{
		{"app:v1", "app", "v1", true},
		{"org/app", "org/app", "latest", true},
		{"a:5000/org/app:1.2_rc-3", "a:5000/org/app", "1.2_rc-3", true},
		{"a:5000/org/app", "a:5000/org/app", "latest", true},
		{"", "", "", false},
		{"app:", "", "", false},
		{":v1", "", "", false},
		{"app:v 1", "", "", false},
		{"app@sha256:0123", "", "", false},
		{"org//app:v1", "", "", false},
		{"app:" + strings.Repeat("x", 129), "", "", false},
	}
	for _, tc := range tests {
		r, err := parseReference(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("parseReference(%q) error %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && (r.repo != tc.repo || r.tag != tc.tag || r.full != tc.repo+":"+tc.tag) {
			t.Errorf("parseReference(%q) = %+v", tc.in, r)
		}
	}
}

// TestWriteStreams writes a layer much larger than the memory the writers
// may allocate: a layer held in memory would show in TotalAlloc.
func TestWriteStreams(t *testing.T) {
	const size = 48 << 20
	chunk := bytes.Repeat([]byte("layerfs streams "), 4096) // 64 KiB
	gen := func(ctx context.Context, w io.Writer) error {
		tw := tar.NewWriter(w)
		if err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
			return err
		}
		for n := 0; n < size; n += len(chunk) {
			if _, err := tw.Write(chunk); err != nil {
				return err
			}
		}
		return tw.Close()
	}
	h := digest.SHA256.Digester()
	if err := gen(context.Background(), h.Hash()); err != nil {
		t.Fatal(err)
	}
	img := ImageToWrite{Layers: []LayerToWrite{{DiffID: h.Digest(), Write: gen}}, Names: []string{"big:v1"}}
	img.Config = configFor(t, []digest.Digest{h.Digest()})
	for _, w := range []struct {
		name  string
		write writeFunc
	}{
		{"oci-layout", ociLayoutWriter(compression.None)},
		{"oci-archive", ociArchiveWriter(compression.None)},
		{"docker-archive", dockerArchiveWriter},
	} {
		t.Run(w.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "out")
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			if _, err := w.write(context.Background(), target, img); err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("allocated %d KiB writing a %d MiB layer", alloc>>10, size>>20)
			if alloc > size/4 {
				t.Errorf("writing a %d MiB layer allocated %d MiB", size>>20, alloc>>20)
			}
			a, imgs := openImages(t, target)
			rc, err := a.OpenLayer(imgs[0].Layers[0])
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			// OpenLayer verifies the blob's digest as it is read.
			if n, err := io.Copy(io.Discard, rc); err != nil || n < size {
				t.Errorf("read back %d bytes: %v", n, err)
			}
		})
	}
}

// skopeoInspect runs skopeo inspect on ref and returns its manifest digest
// and layer count.
func skopeoInspect(t *testing.T, ref string) (digest.Digest, int) {
	t.Helper()
	skopeo := testutil.NeedTool(t, "skopeo")
	out, err := exec.Command(skopeo, "inspect", ref).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("skopeo inspect %s: %v\n%s", ref, err, stderr)
	}
	var info struct {
		Digest digest.Digest
		Layers []string
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("skopeo inspect %s: %v\n%s", ref, err, out)
	}
	return info.Digest, len(info.Layers)
}

// TestWrittenImagesLoadInRealTools has skopeo and umoci read what the
// writers wrote.
func TestWrittenImagesLoadInRealTools(t *testing.T) {
	img, tars := sampleImage(t, sampleNames...)
	single, _ := sampleImage(t, "example/sample:v1")
	work := t.TempDir()
	ctx := context.Background()

	layout := filepath.Join(work, "layout")
	md, err := WriteOCILayout(ctx, layout, img, "")
	if err != nil {
		t.Fatal(err)
	}
	zstdLayout := filepath.Join(work, "zstd-layout")
	zmd, err := WriteOCILayout(ctx, zstdLayout, img, compression.Zstd)
	if err != nil {
		t.Fatal(err)
	}
	ociArchive := filepath.Join(work, "oci.tar")
	amd, err := WriteOCIArchive(ctx, ociArchive, single, compression.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	namedOCIArchive := filepath.Join(work, "named-oci.tar")
	nmd, err := WriteOCIArchive(ctx, namedOCIArchive, img, compression.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	dockerArchive := filepath.Join(work, "docker.tar")
	if err := WriteDockerArchive(ctx, dockerArchive, img); err != nil {
		t.Fatal(err)
	}

	t.Run("skopeo", func(t *testing.T) {
		for _, tc := range []struct {
			ref  string
			want digest.Digest // "" when skopeo makes its own manifest
		}{
			{"oci:" + layout + ":v1", md},
			{"oci:" + layout + ":v2", md},
			{"oci:" + zstdLayout + ":v1", zmd},
			{"oci-archive:" + ociArchive, amd},
			{"oci-archive:" + namedOCIArchive + ":v2", nmd},
			{"docker-archive:" + dockerArchive, ""},
		} {
			got, layers := skopeoInspect(t, tc.ref)
			if layers != len(tars) {
				t.Errorf("skopeo inspect %s: %d layers, want %d", tc.ref, layers, len(tars))
			}
			if tc.want != "" && got != tc.want {
				t.Errorf("skopeo inspect %s: digest %s, want %s", tc.ref, got, tc.want)
			}
		}

		// A copy reads every layer of the docker-archive; the config must
		// come through byte for byte.
		copied := filepath.Join(t.TempDir(), "copied")
		skopeoCopy(t, "docker-archive:"+dockerArchive, "oci:"+copied+":c")
		a, imgs := openImages(t, copied)
		if len(imgs) != 1 || imgs[0].ConfigDigest != digest.FromBytes(img.Config) {
			t.Fatalf("skopeo copy of the docker-archive: %d images, config %v", len(imgs), imgs)
		}
		for i, l := range imgs[0].Layers {
			if !bytes.Equal(readBack(t, a, l), tars[i]) {
				t.Errorf("skopeo copy of the docker-archive: layer %d differs", i)
			}
		}
	})

	t.Run("umoci unpack", func(t *testing.T) {
		umoci := testutil.NeedTool(t, "umoci")
		bundle := filepath.Join(t.TempDir(), "bundle")
		args := []string{"unpack", "--image", layout + ":v1", bundle}
		if os.Geteuid() != 0 {
			args = append([]string{"unpack", "--rootless"}, args[1:]...)
		}
		run(t, umoci, args...)
		rootfs := filepath.Join(bundle, "rootfs")
		for name, want := range map[string]string{
			"usr/bin/ping":           "#!/bin/sh\necho pong\n", // last layer
			"etc/hostname":           "layerfs-demo-v2\n",      // replaced in layer 2
			"var/cache/fresh":        "fresh\n",
			"bin/tool-alias":         strings.Repeat("\x7fELF", 512),
			"etc/shadow":             "", // whited out
			"var/cache/old":          "", // under an opaque dir
			"etc/.wh.shadow":         "",
			"var/cache/.wh..wh..opq": "",
		} {
			b, err := os.ReadFile(filepath.Join(rootfs, name))
			switch {
			case want == "" && err == nil:
				t.Errorf("%s is in the unpacked rootfs", name)
			case want == "" && !errors.Is(err, os.ErrNotExist):
				t.Errorf("%s: %v", name, err)
			case want != "" && (err != nil || string(b) != want):
				t.Errorf("%s = %q (%v), want %q", name, b, err, want)
			}
		}
	})
}
