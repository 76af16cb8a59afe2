package ociimage

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/compression"
)

// ImageToWrite is an image the caller can stream layer by layer.
type ImageToWrite struct {
	// Config is the image config JSON, written byte for byte; its
	// rootfs.diff_ids must equal the Layers' DiffIDs, in order.
	Config []byte
	// Layers are bottom first.
	Layers []LayerToWrite
	// Names are "name:tag" references; a name without a tag means
	// name:latest. Digest references are refused: neither index.json's tag
	// annotation nor docker's RepoTags can hold one.
	Names []string
}

// LayerToWrite is one layer of an ImageToWrite.
type LayerToWrite struct {
	DiffID digest.Digest
	// Write streams the layer's uncompressed tar into w. It is called at
	// most once per distinct DiffID; what it writes is checked against
	// DiffID.
	Write func(ctx context.Context, w io.Writer) error
}

// WriteOCILayout writes img as a new OCI image layout at dir: the layers
// compressed as c (compression.Gzip when c is ""; compression.None for
// plain tars), the config, the manifest, and index.json with one entry per
// name, tagged as skopeo and umoci expect for "oci:DIR:TAG". It returns the
// manifest's digest.
//
// dir must not exist or be an empty directory: the layout is built in a
// temporary directory beside it and renamed into place, so a failure leaves
// nothing behind. A layer whose content does not hash to its DiffID, or a
// config whose diff_ids disagree with the layers, is an error wrapping
// ErrCorrupt.
func WriteOCILayout(ctx context.Context, dir string, img ImageToWrite, c compression.Format) (manifestDigest digest.Digest, err error) {
	dir = filepath.Clean(dir)
	defer wrapErr(&err, "write %s %s", FormatOCILayout, dir)
	plan, err := planImage(img, c)
	if err != nil {
		return "", err
	}
	if err := checkTarget(dir, true); err != nil {
		return "", err
	}
	parent := filepath.Dir(dir)
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return "", err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	s := &dirSink{root: tmp, have: map[string]bool{}}
	if manifestDigest, err = writeOCI(ctx, s, plan); err != nil {
		return "", err
	}
	if err := s.finish(); err != nil {
		return "", err
	}
	// rename(2) itself, not os.Rename, which refuses any existing
	// directory: the kernel replaces an empty one atomically and refuses
	// one that filled up since the check.
	if err := unix.Rename(tmp, dir); err != nil {
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return "", errors.New("the directory exists and is not empty")
		}
		return "", fmt.Errorf("rename %s to %s: %w", tmp, dir, err)
	}
	done = true
	return manifestDigest, syncDir(parent)
}

// WriteOCIArchive writes img as an oci-archive: the layout WriteOCILayout
// writes, as an uncompressed tar file at path. path must not exist or be an
// empty file; the tar is written to a temporary file beside it and renamed
// into place. It returns the manifest's digest.
func WriteOCIArchive(ctx context.Context, path string, img ImageToWrite, c compression.Format) (manifestDigest digest.Digest, err error) {
	defer wrapErr(&err, "write %s %s", FormatOCIArchive, path)
	plan, err := planImage(img, c)
	if err != nil {
		return "", err
	}
	err = writeTarFile(path, func(s *tarSink) error {
		manifestDigest, err = writeOCI(ctx, s, plan)
		return err
	})
	return manifestDigest, err
}

// WriteDockerArchive writes img in the classic `docker save` form that
// docker load, podman load and skopeo read: manifest.json, the config as
// HEX.json, each layer uncompressed as DIFFID-HEX/layer.tar beside the
// VERSION and json files of the legacy format, and a repositories file.
// path must not exist or be an empty file; the tar is written to a
// temporary file beside it and renamed into place.
func WriteDockerArchive(ctx context.Context, path string, img ImageToWrite) (err error) {
	defer wrapErr(&err, "write %s %s", FormatDockerArchive, path)
	plan, err := planImage(img, compression.None)
	if err != nil {
		return err
	}
	return writeTarFile(path, func(s *tarSink) error {
		return writeDocker(ctx, s, plan)
	})
}

func wrapErr(err *error, format string, args ...any) {
	if *err != nil {
		*err = fmt.Errorf(format+": %w", append(args, *err)...)
	}
}

// imagePlan is a checked ImageToWrite.
type imagePlan struct {
	config         []byte
	configDigest   digest.Digest
	layers         []LayerToWrite
	refs           []reference
	compression    compression.Format
	layerMediaType string
}

// reference is a name split the way the formats store it.
type reference struct {
	full, repo, tag string
}

// tagPattern is the tag grammar of the distribution reference spec.
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

func parseReference(name string) (reference, error) {
	bad := func(why string) (reference, error) {
		return reference{}, fmt.Errorf("name %q: %s", name, why)
	}
	if name == "" {
		return bad("empty")
	}
	if strings.ContainsAny(name, "@ \t\n\r") {
		return bad("want name:tag (no digest, no spaces)")
	}
	repo, tag := name, "latest"
	// A colon before the last slash belongs to a host:port.
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		repo, tag = name[:i], name[i+1:]
	}
	if repo == "" || strings.HasPrefix(repo, "/") || strings.HasSuffix(repo, "/") || strings.Contains(repo, "//") {
		return bad("bad repository part")
	}
	if !tagPattern.MatchString(tag) {
		return bad("bad tag")
	}
	return reference{full: repo + ":" + tag, repo: repo, tag: tag}, nil
}

// planImage checks img before anything is written: a config that parses,
// diff_ids equal to the layers' DiffIDs, names that parse, a compression
// the layers can be written with.
func planImage(img ImageToWrite, c compression.Format) (imagePlan, error) {
	p := imagePlan{config: img.Config, configDigest: digest.FromBytes(img.Config), layers: img.Layers, compression: c}
	switch c {
	case "", compression.Gzip:
		p.compression, p.layerMediaType = compression.Gzip, v1.MediaTypeImageLayerGzip
	case compression.Zstd:
		p.layerMediaType = v1.MediaTypeImageLayerZstd
	case compression.None:
		p.layerMediaType = v1.MediaTypeImageLayer
	default:
		return imagePlan{}, fmt.Errorf("cannot write layers compressed as %q (want none, gzip or zstd)", c)
	}
	var cfg v1.Image
	if err := decodeJSON(img.Config, &cfg); err != nil {
		return imagePlan{}, corrupt("config: bad JSON: %v", err)
	}
	if cfg.RootFS.Type != "layers" {
		return imagePlan{}, corrupt("config: rootfs.type %q, want \"layers\"", cfg.RootFS.Type)
	}
	if len(cfg.RootFS.DiffIDs) != len(img.Layers) {
		return imagePlan{}, corrupt("config: %d diff_ids != %d layers", len(cfg.RootFS.DiffIDs), len(img.Layers))
	}
	for i, l := range img.Layers {
		if err := l.DiffID.Validate(); err != nil {
			return imagePlan{}, fmt.Errorf("layer %d: diffID %q: %w", i, l.DiffID, err)
		}
		if cfg.RootFS.DiffIDs[i] != l.DiffID {
			return imagePlan{}, corrupt("config: diff_ids[%d] %s != layer %d diffID %s", i, cfg.RootFS.DiffIDs[i], i, l.DiffID)
		}
		if l.Write == nil {
			return imagePlan{}, fmt.Errorf("layer %d (%s): no Write function", i, l.DiffID)
		}
	}
	seen := map[string]bool{}
	for _, n := range img.Names {
		ref, err := parseReference(n)
		if err != nil {
			return imagePlan{}, err
		}
		if !seen[ref.full] {
			seen[ref.full] = true
			p.refs = append(p.refs, ref)
		}
	}
	return p, nil
}

// checkTarget refuses a target that holds something: a non-empty
// directory (isDir) or a non-empty file, or the wrong kind of object.
func checkTarget(p string, isDir bool) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if isDir {
		if !fi.IsDir() {
			return errors.New("exists and is not a directory")
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		names, err := f.Readdirnames(1)
		if len(names) > 0 {
			return errors.New("the directory exists and is not empty; refusing to mix with what it holds")
		}
		if err != nil && err != io.EOF {
			return err
		}
		return nil
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("exists and is not a regular file (%s)", fi.Mode().Type())
	}
	if fi.Size() > 0 {
		return errors.New("the file exists and is not empty; refusing to overwrite it")
	}
	return nil
}

// sink receives the members of an image: files in a directory or members
// of a tar. Names are slash-separated; directories end in "/".
type sink interface {
	mkdir(name string) error
	putBytes(name string, b []byte) error
	// spool returns an empty temporary file for putFile.
	spool() (*os.File, error)
	// putFile stores the content of a file from spool under name; it
	// consumes f (closes it, and removes it unless it became the member)
	// whether or not it succeeds.
	putFile(name string, f *os.File) error
	has(name string) bool
}

// dirSink writes members into a directory.
type dirSink struct {
	root string
	dirs []string // to fsync once written
	have map[string]bool
}

func (s *dirSink) path(name string) string { return filepath.Join(s.root, filepath.FromSlash(name)) }

func (s *dirSink) mkdir(name string) error {
	p := s.path(name)
	if err := os.Mkdir(p, 0o755); err != nil {
		return err
	}
	s.dirs = append(s.dirs, p)
	return nil
}

func (s *dirSink) putBytes(name string, b []byte) error {
	f, err := os.OpenFile(s.path(name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	s.have[name] = true
	return f.Close()
}

func (s *dirSink) spool() (*os.File, error) { return os.CreateTemp(s.root, ".spool-") }

func (s *dirSink) putFile(name string, f *os.File) error {
	err := f.Chmod(0o644)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), s.path(name))
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	s.have[name] = true
	return nil
}

func (s *dirSink) has(name string) bool { return s.have[name] }

// finish makes the tree durable before it is renamed into place.
func (s *dirSink) finish() error {
	for _, d := range slices.Backward(s.dirs) {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	if err := os.Chmod(s.root, 0o755); err != nil {
		return err
	}
	return syncDir(s.root)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// tarSink writes members into a tar. Members get fixed owners and times, so
// the same image gives the same archive.
type tarSink struct {
	tw       *tar.Writer
	spoolDir string
	prefix   string // of spool file names
	have     map[string]bool
}

// archiveTime is the mtime of archive members: the epoch, as docker save
// and skopeo write it.
var archiveTime = time.Unix(0, 0)

func (s *tarSink) mkdir(name string) error {
	s.have[name] = true
	return s.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: archiveTime})
}

func (s *tarSink) putBytes(name string, b []byte) error {
	if err := s.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b)), ModTime: archiveTime}); err != nil {
		return err
	}
	s.have[name] = true
	_, err := s.tw.Write(b)
	return err
}

func (s *tarSink) spool() (*os.File, error) { return os.CreateTemp(s.spoolDir, s.prefix) }

func (s *tarSink) putFile(name string, f *os.File) error {
	defer os.Remove(f.Name())
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := s.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: fi.Size(), ModTime: archiveTime}); err != nil {
		return err
	}
	s.have[name] = true
	if _, err := io.Copy(s.tw, f); err != nil {
		return fmt.Errorf("copy %s into the archive: %w", name, err)
	}
	return nil
}

func (s *tarSink) has(name string) bool { return s.have[name] }

// writeTarFile writes a tar through fill into a temporary file beside path
// and renames it to path once it is complete and synced.
func writeTarFile(path string, fill func(*tarSink) error) (err error) {
	if err := checkTarget(path, false); err != nil {
		return err
	}
	dir, base := filepath.Split(filepath.Clean(path))
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	s := &tarSink{tw: tar.NewWriter(bw), spoolDir: dir, prefix: "." + base + ".layer-", have: map[string]bool{}}
	if err := fill(s); err != nil {
		return err
	}
	if err := s.tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// Between the check and here another writer may have filled path; a
	// second check keeps the window small (rename cannot refuse to replace).
	if err := checkTarget(path, false); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

// spooledLayer is a layer written to a temporary file, compressed.
type spooledLayer struct {
	file   *os.File
	digest digest.Digest // of the stored (compressed) bytes
	size   int64
}

// spoolLayer streams layer i through the compressor into a temporary file
// of s, hashing the uncompressed bytes (checked against the DiffID) and the
// stored ones on the way: no layer is ever held in memory.
func spoolLayer(ctx context.Context, s sink, i int, l LayerToWrite, c compression.Format) (sl spooledLayer, err error) {
	f, err := s.spool()
	if err != nil {
		return spooledLayer{}, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	blobHash := digest.SHA256.Digester()
	counter := &countingWriter{}
	bw := bufio.NewWriterSize(f, 1<<20)
	zw, err := compression.Compress(io.MultiWriter(bw, blobHash.Hash(), counter), c)
	if err != nil {
		return spooledLayer{}, err
	}
	diffHash := l.DiffID.Algorithm().Digester()
	w := &ctxWriter{ctx: ctx, w: io.MultiWriter(diffHash.Hash(), zw)}
	if err := l.Write(ctx, w); err != nil {
		return spooledLayer{}, fmt.Errorf("layer %d (%s): %w", i, l.DiffID, err)
	}
	if err := ctx.Err(); err != nil {
		return spooledLayer{}, err
	}
	if err := zw.Close(); err != nil {
		return spooledLayer{}, fmt.Errorf("layer %d (%s): compress: %w", i, l.DiffID, err)
	}
	if err := bw.Flush(); err != nil {
		return spooledLayer{}, fmt.Errorf("layer %d (%s): %w", i, l.DiffID, err)
	}
	if got := diffHash.Digest(); got != l.DiffID {
		return spooledLayer{}, corrupt("layer %d (%s): its content (%d bytes) hashes to %s, not to its diffID", i, l.DiffID, w.n, got)
	}
	return spooledLayer{file: f, digest: blobHash.Digest(), size: counter.n}, nil
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// ctxWriter stops a layer writer that does not watch ctx itself.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
	n   int64
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeOCI writes the members of an OCI layout holding one image.
func writeOCI(ctx context.Context, s sink, p imagePlan) (digest.Digest, error) {
	layout, err := json.Marshal(v1.ImageLayout{Version: v1.ImageLayoutVersion})
	if err != nil {
		return "", err
	}
	if err := s.putBytes(v1.ImageLayoutFile, layout); err != nil {
		return "", err
	}
	if err := s.mkdir("blobs/"); err != nil {
		return "", err
	}
	if err := s.mkdir("blobs/sha256/"); err != nil {
		return "", err
	}
	putBlob := func(b []byte) error {
		name := blobPath(digest.FromBytes(b))
		if s.has(name) {
			return nil
		}
		return s.putBytes(name, b)
	}

	m := v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: p.configDigest, Size: int64(len(p.config))},
		Layers:    []v1.Descriptor{},
	}
	// A layer repeated in the image (an empty layer, say) is written once.
	written := map[digest.Digest]v1.Descriptor{}
	for i, l := range p.layers {
		if d, ok := written[l.DiffID]; ok {
			m.Layers = append(m.Layers, d)
			continue
		}
		sl, err := spoolLayer(ctx, s, i, l, p.compression)
		if err != nil {
			return "", err
		}
		name := blobPath(sl.digest)
		if s.has(name) {
			sl.file.Close()
			os.Remove(sl.file.Name())
		} else if err := s.putFile(name, sl.file); err != nil {
			return "", fmt.Errorf("layer %d (%s): %w", i, l.DiffID, err)
		}
		d := v1.Descriptor{MediaType: p.layerMediaType, Digest: sl.digest, Size: sl.size}
		written[l.DiffID] = d
		m.Layers = append(m.Layers, d)
	}
	if err := putBlob(p.config); err != nil {
		return "", err
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	if err := putBlob(mb); err != nil {
		return "", err
	}
	mdesc := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(mb), Size: int64(len(mb))}
	idx := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{}}
	if len(p.refs) == 0 {
		idx.Manifests = append(idx.Manifests, mdesc)
	}
	for _, r := range p.refs {
		d := mdesc
		// ref.name holds the bare tag, as "oci:DIR:TAG" looks it up; the
		// full name goes where containerd and docker look for it.
		d.Annotations = map[string]string{v1.AnnotationRefName: r.tag, annotationContainerdName: r.full}
		idx.Manifests = append(idx.Manifests, d)
	}
	ib, err := json.Marshal(idx)
	if err != nil {
		return "", err
	}
	if err := s.putBytes(v1.ImageIndexFile, ib); err != nil {
		return "", err
	}
	return mdesc.Digest, nil
}

// dockerLayerJSON is the legacy per-layer json of `docker save`; loaders
// that read manifest.json ignore it, so it says only what links the layers.
type dockerLayerJSON struct {
	ID      string `json:"id"`
	Parent  string `json:"parent,omitempty"`
	Created string `json:"created"`
}

// writeDocker writes the members of a classic docker-archive.
func writeDocker(ctx context.Context, s sink, p imagePlan) error {
	entry := dockerEntry{Config: p.configDigest.Encoded() + ".json", RepoTags: []string{}, Layers: []string{}}
	parent := ""
	for i, l := range p.layers {
		id := l.DiffID.Encoded()
		layerName := id + "/layer.tar"
		entry.Layers = append(entry.Layers, layerName)
		if s.has(layerName) {
			// A repeated layer: the same content, already written.
			parent = id
			continue
		}
		sl, err := spoolLayer(ctx, s, i, l, compression.None)
		if err != nil {
			return err
		}
		if err := s.mkdir(id + "/"); err != nil {
			sl.file.Close()
			os.Remove(sl.file.Name())
			return err
		}
		if err := s.putFile(layerName, sl.file); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i, l.DiffID, err)
		}
		if err := s.putBytes(id+"/VERSION", []byte("1.0")); err != nil {
			return err
		}
		lj, err := json.Marshal(dockerLayerJSON{ID: id, Parent: parent, Created: archiveTime.UTC().Format(time.RFC3339)})
		if err != nil {
			return err
		}
		if err := s.putBytes(id+"/json", lj); err != nil {
			return err
		}
		parent = id
	}
	if err := s.putBytes(entry.Config, p.config); err != nil {
		return err
	}
	repositories := map[string]map[string]string{}
	for _, r := range p.refs {
		entry.RepoTags = append(entry.RepoTags, r.full)
		if parent != "" {
			if repositories[r.repo] == nil {
				repositories[r.repo] = map[string]string{}
			}
			repositories[r.repo][r.tag] = parent
		}
	}
	mb, err := json.Marshal([]dockerEntry{entry})
	if err != nil {
		return err
	}
	if err := s.putBytes(dockerManifestFile, mb); err != nil {
		return err
	}
	if len(repositories) == 0 {
		// docker save writes no repositories file for an untagged image.
		return nil
	}
	rb, err := json.Marshal(repositories)
	if err != nil {
		return err
	}
	return s.putBytes("repositories", rb)
}
