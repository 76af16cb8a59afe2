// Package imagegen makes deterministic sample layers and OCI image layouts
// for the demo, the benchmarks and the tests: real tars of every entry type
// a layer may hold, so the store is exercised on more than toy input.
package imagegen

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/compression"
)

// sampleTime is the mtime of generated entries: fixed, so output is
// reproducible.
func sampleTime() time.Time { return time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC) }

// Entry is one tar entry to generate.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg, TypeDir, TypeSymlink, TypeLink, TypeFifo, TypeChar
	Mode     int64
	UID, GID int
	Content  []byte
	Linkname string
	Xattrs   map[string]string
	Major    int64
	Minor    int64
}

// Tar writes entries as a PAX tar (archive/tar picks ustar where it can).
func Tar(entries []Entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Uid: e.UID, Gid: e.GID,
			Linkname: e.Linkname, ModTime: sampleTime(), Devmajor: e.Major, Devminor: e.Minor,
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
			if e.Type == tar.TypeDir {
				hdr.Mode = 0o755
			}
		}
		if e.Type == tar.TypeReg {
			hdr.Size = int64(len(e.Content))
		}
		if len(e.Xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range e.Xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("generate %s: %w", e.Name, err)
		}
		if _, err := tw.Write(e.Content); err != nil {
			return nil, fmt.Errorf("generate %s: %w", e.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// SampleLayers returns a small, varied three-layer image: a base with
// directories, files, links, a fifo and odd modes and owners; a layer that
// changes, deletes (whiteout) and replaces a directory (opaque); and a top
// layer with xattrs and a long name.
func SampleLayers() ([][]byte, error) {
	base := []Entry{
		{Name: "etc/", Type: tar.TypeDir},
		{Name: "etc/hostname", Type: tar.TypeReg, Content: []byte("layerfs-demo\n")},
		{Name: "etc/shadow", Type: tar.TypeReg, Mode: 0o640, GID: 42, Content: []byte("root:*:19000::::::\n")},
		{Name: "bin/", Type: tar.TypeDir},
		{Name: "bin/tool", Type: tar.TypeReg, Mode: 0o4755, Content: bytes.Repeat([]byte("\x7fELF"), 512)},
		{Name: "bin/tool-alias", Type: tar.TypeLink, Linkname: "bin/tool"},
		{Name: "bin/sh", Type: tar.TypeSymlink, Linkname: "tool"},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		{Name: "home/", Type: tar.TypeDir},
		{Name: "home/user/", Type: tar.TypeDir, Mode: 0o700, UID: 1000, GID: 1000},
		{Name: "home/user/notes.txt", Type: tar.TypeReg, UID: 1000, GID: 1000, Content: []byte("owned by 1000\n")},
		{Name: "var/", Type: tar.TypeDir},
		{Name: "var/cache/", Type: tar.TypeDir},
		{Name: "var/cache/old", Type: tar.TypeReg, Content: []byte("stale\n")},
		{Name: "run/", Type: tar.TypeDir},
		{Name: "run/initctl", Type: tar.TypeFifo, Mode: 0o600},
		{Name: "nobody/", Type: tar.TypeDir, UID: 65534, GID: 65534},
	}
	change := []Entry{
		{Name: "etc/", Type: tar.TypeDir},
		{Name: "etc/hostname", Type: tar.TypeReg, Content: []byte("layerfs-demo-v2\n")},
		{Name: "etc/.wh.shadow", Type: tar.TypeReg, Mode: 0o600},
		{Name: "var/", Type: tar.TypeDir},
		{Name: "var/cache/", Type: tar.TypeDir},
		{Name: "var/cache/.wh..wh..opq", Type: tar.TypeReg, Mode: 0o600},
		{Name: "var/cache/fresh", Type: tar.TypeReg, Content: []byte("fresh\n")},
	}
	long := "usr/share/doc/" + string(bytes.Repeat([]byte("a-rather-long-directory-name/"), 6)) + "README"
	top := []Entry{
		{Name: "usr/", Type: tar.TypeDir},
		{Name: "usr/bin/", Type: tar.TypeDir},
		{Name: "usr/bin/ping", Type: tar.TypeReg, Mode: 0o755, Content: []byte("#!/bin/sh\necho pong\n"),
			Xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "user.origin": "layerfs demo"}},
		{Name: long, Type: tar.TypeReg, Content: []byte("long names survive\n")},
	}
	var out [][]byte
	for _, entries := range [][]Entry{base, change, top} {
		t, err := Tar(entries)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// ManyFiles returns a layer of n small files spread over directories of
// perDir entries, with content derived from seed.
func ManyFiles(n, perDir int, seed uint64) ([]byte, error) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	entries := make([]Entry, 0, n+n/perDir+1)
	for i := 0; i < n; i++ {
		dir := fmt.Sprintf("data/d%04d/", i/perDir)
		if i%perDir == 0 {
			if i == 0 {
				entries = append(entries, Entry{Name: "data/", Type: tar.TypeDir})
			}
			entries = append(entries, Entry{Name: dir, Type: tar.TypeDir})
		}
		content := make([]byte, 64+rng.IntN(1024))
		for j := range content {
			content[j] = byte('a' + rng.IntN(26))
		}
		entries = append(entries, Entry{Name: fmt.Sprintf("%sf%06d", dir, i), Type: tar.TypeReg, Content: content})
	}
	return Tar(entries)
}

// WriteOCILayout writes an OCI image layout at dir holding one image made
// of the given uncompressed layer tars, compressed as c, tagged name
// (annotation org.opencontainers.image.ref.name). It returns the config
// digest (the image ID).
func WriteOCILayout(dir string, layers [][]byte, c compression.Format, name string) (digest.Digest, error) {
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return "", err
	}
	writeBlob := func(data []byte) (digest.Digest, error) {
		d := digest.FromBytes(data)
		return d, os.WriteFile(filepath.Join(blobs, d.Encoded()), data, 0o644)
	}
	mediaType := v1.MediaTypeImageLayer
	switch c {
	case compression.Gzip:
		mediaType = v1.MediaTypeImageLayerGzip
	case compression.Zstd:
		mediaType = v1.MediaTypeImageLayerZstd
	}
	created := sampleTime()
	cfg := v1.Image{
		Created:  &created,
		Platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config:   v1.ImageConfig{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/usr/bin:/bin"}},
		RootFS:   v1.RootFS{Type: "layers"},
	}
	manifest := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest}
	for i, l := range layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, digest.FromBytes(l))
		cfg.History = append(cfg.History, v1.History{Created: &created, CreatedBy: fmt.Sprintf("imagegen layer %d", i+1)})
		var buf bytes.Buffer
		w, err := compression.Compress(&buf, c)
		if err != nil {
			return "", err
		}
		if _, err := io.Copy(w, bytes.NewReader(l)); err != nil {
			return "", err
		}
		if err := w.Close(); err != nil {
			return "", err
		}
		d, err := writeBlob(buf.Bytes())
		if err != nil {
			return "", err
		}
		manifest.Layers = append(manifest.Layers, v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(buf.Len())})
	}
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return "", err
	}
	cfgDigest, err := writeBlob(cfgBytes)
	if err != nil {
		return "", err
	}
	manifest.Config = v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: cfgDigest, Size: int64(len(cfgBytes))}
	mBytes, err := json.Marshal(manifest)
	if err != nil {
		return "", err
	}
	mDigest, err := writeBlob(mBytes)
	if err != nil {
		return "", err
	}
	index := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex,
		Manifests: []v1.Descriptor{{MediaType: v1.MediaTypeImageManifest, Digest: mDigest, Size: int64(len(mBytes)),
			Annotations: map[string]string{v1.AnnotationRefName: name}}}}
	iBytes, err := json.Marshal(index)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), iBytes, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, v1.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return "", err
	}
	return cfgDigest, nil
}
