package graph

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/ociimage"
)

// Image is an image's record (images/<hex>/image.json); its manifest and
// config are kept beside it byte for byte.
type Image struct {
	// ID is the digest of the image config, as docker and podman use it.
	ID             digest.Digest `json:"id"`
	Names          []string      `json:"names,omitempty"`
	ManifestDigest digest.Digest `json:"manifestDigest"`
	// Layers are the chainIDs of the image's layers, bottom first.
	Layers []digest.Digest `json:"layers"`
	// Blobs are the layers as the source held them (compressed).
	Blobs   []Blob    `json:"blobs"`
	Created time.Time `json:"created"`
	Source  string    `json:"source"`
}

// Blob describes a layer blob of the imported image.
type Blob struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType"`
	Size      int64         `json:"size"`
}

// Top is the chainID of the image's top layer ("" for an empty image).
func (img *Image) Top() digest.Digest {
	if len(img.Layers) == 0 {
		return ""
	}
	return img.Layers[len(img.Layers)-1]
}

// HasName reports whether ref (NAME:TAG, or NAME for NAME:latest) is one
// of the image's names.
func (img *Image) HasName(ref string) bool {
	full, _ := NormalizeName(ref)
	return slices.Contains(img.Names, ref) || slices.Contains(img.Names, full)
}

// DisplayNames are the image's names, or its short ID when it has none.
func (img *Image) DisplayNames() []string {
	if len(img.Names) > 0 {
		return img.Names
	}
	return []string{img.ID.Encoded()[:12]}
}

func (img *Image) displayName() string {
	if len(img.Names) > 0 {
		return img.Names[0]
	}
	return img.ID.String()
}

const (
	imagesDir     = "images"
	imageRecord   = "image.json"
	manifestFile  = "manifest.json"
	configFile    = "config.json"
	importKind    = "import"
	importJournal = "layers"
)

func (s *Store) imageDir(id digest.Digest) string {
	return filepath.Join(s.root, imagesDir, id.Encoded())
}

// NormalizeName gives a bare repository name the tag "latest".
func NormalizeName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("image name is empty")
	}
	if strings.ContainsAny(name, " \t\n\x00") {
		return "", fmt.Errorf("image name %q has white space", name)
	}
	last := name[strings.LastIndex(name, "/")+1:]
	if !strings.Contains(last, ":") && !strings.Contains(last, "@") {
		name += ":latest"
	}
	return name, nil
}

// ImportImageOptions tune ImportImage.
type ImportImageOptions struct {
	// Name replaces the names the archive gives (one image only).
	Name string
	// WrapLayer, if set, wraps each layer blob's reader (progress display).
	WrapLayer func(l ociimage.Layer, r io.Reader) io.Reader
}

// ImportImage imports every image of an OCI layout directory, an
// oci-archive or a docker-archive: its layers in order, then its manifest,
// config and names. Blob digests and the config's diff_ids are checked; on
// any mismatch nothing new is kept, also after a crash (the import's
// journal is replayed by recovery).
func (s *Store) ImportImage(ctx context.Context, path string, opts ImportImageOptions) ([]*Image, error) {
	a, err := ociimage.Open(path)
	if err != nil {
		return nil, fmt.Errorf("import image %s: %w", path, err)
	}
	defer a.Close()
	found, err := a.Images(ctx)
	if err != nil {
		return nil, fmt.Errorf("import image %s: %w", path, err)
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("import image %s: the archive holds no image", path)
	}
	var name string
	if opts.Name != "" {
		if len(found) != 1 {
			return nil, fmt.Errorf("import image %s: --name needs an archive with one image, this one has %d", path, len(found))
		}
		if name, err = NormalizeName(opts.Name); err != nil {
			return nil, err
		}
	}

	journal, err := s.newStaging(importKind)
	if err != nil {
		return nil, err
	}
	defer journal.discard()
	undo := func() {
		unlock, err := s.lock()
		if err != nil {
			return
		}
		defer unlock()
		s.undoImportLocked(journal.dir)
	}

	var records []*Image
	for _, img := range found {
		rec, err := s.importLayers(ctx, a, img, opts, journal.dir)
		if err != nil {
			undo()
			return nil, fmt.Errorf("import image %s: %w", path, err)
		}
		rec.Source = a.Format()
		if name != "" {
			rec.Names = []string{name}
		}
		records = append(records, rec)
	}
	var out []*Image
	for i, rec := range records {
		img, err := s.saveImage(rec, found[i])
		if err != nil {
			undo()
			return nil, fmt.Errorf("import image %s: %w", path, err)
		}
		out = append(out, img)
	}
	return out, nil
}

func (s *Store) importLayers(ctx context.Context, a *ociimage.Archive, img ociimage.Image, opts ImportImageOptions, journalDir string) (*Image, error) {
	rec := &Image{ID: img.ConfigDigest, ManifestDigest: img.ManifestDigest, Created: time.Now().UTC()}
	for _, n := range img.Names {
		if nn, err := NormalizeName(n); err == nil {
			rec.Names = append(rec.Names, nn)
		}
	}
	var parent digest.Digest
	for i, l := range img.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rc, err := a.OpenLayer(l)
		if err != nil {
			return nil, err
		}
		var r io.Reader = rc
		if opts.WrapLayer != nil {
			r = opts.WrapLayer(l, rc)
		}
		layer, existed, err := s.Register(ctx, r, RegisterOptions{Parent: parent.String(), ExpectDiffID: l.DiffID})
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, l.Digest, err)
		}
		if !existed {
			if err := s.appendJournal(journalDir, layer.ChainID); err != nil {
				return nil, err
			}
		}
		parent = layer.ChainID
		rec.Layers = append(rec.Layers, layer.ChainID)
		rec.Blobs = append(rec.Blobs, Blob{Digest: l.Digest, MediaType: l.MediaType, Size: l.Size})
	}
	return rec, nil
}

func (s *Store) appendJournal(dir string, id digest.Digest) error {
	p := filepath.Join(dir, importJournal)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("write import journal: %w", err)
	}
	_, err = f.WriteString(id.String() + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write import journal: %w", err)
	}
	return nil
}

// saveImage writes (or merges into) the image's record and moves its names
// away from any other image that had them.
func (s *Store) saveImage(rec *Image, src ociimage.Image) (*Image, error) {
	return s.saveImageRecord(rec, src.ManifestBytes, src.ConfigBytes)
}

// saveImageRecord stores an image record with its manifest and config.
func (s *Store) saveImageRecord(rec *Image, manifest, config []byte) (*Image, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	for _, id := range rec.Layers {
		if _, err := s.readLayer(id); err != nil {
			return nil, fmt.Errorf("layer %s was removed during the import", id)
		}
	}
	if old, err := s.readImage(rec.ID); err == nil {
		rec.Names = mergeNames(old.Names, rec.Names)
		rec.Created = old.Created
	} else {
		st, err := s.newStagingLocked("image")
		if err != nil {
			return nil, err
		}
		defer st.discard()
		if err := s.writeRecordFile(filepath.Join(st.dir, imageRecord), rec); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(st.dir, manifestFile), manifest, 0o600); err != nil {
			return nil, fmt.Errorf("write manifest: %w", err)
		}
		if err := os.WriteFile(filepath.Join(st.dir, configFile), config, 0o600); err != nil {
			return nil, fmt.Errorf("write config: %w", err)
		}
		if err := syncFilesystem(st.dir); err != nil {
			return nil, err
		}
		if err := os.Rename(st.dir, s.imageDir(rec.ID)); err != nil {
			return nil, fmt.Errorf("store image %s: %w", rec.ID, err)
		}
		st.committed()
	}
	if err := s.claimNamesLocked(rec.ID, rec.Names); err != nil {
		return nil, err
	}
	if err := s.writeJSONAtomic(filepath.Join(s.imageDir(rec.ID), imageRecord), rec); err != nil {
		return nil, err
	}
	s.log.Info("imported image", "id", rec.ID, "names", rec.Names)
	return rec, nil
}

// newStagingLocked is newStaging for a caller that holds the store lock
// already (flock would deadlock on a second, shared lock of the same file
// from another descriptor).
func (s *Store) newStagingLocked(kind string) (*staging, error) {
	dir, err := os.MkdirTemp(s.tmpDir(), stagingPrefix+kind+"-")
	if err != nil {
		return nil, fmt.Errorf("create staging dir: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("lock staging dir %s: %w", dir, err)
	}
	return &staging{dir: dir, lock: f}, nil
}

func mergeNames(a, b []string) []string {
	out := slices.Clone(a)
	for _, n := range b {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// claimNamesLocked removes names from every image other than id.
func (s *Store) claimNamesLocked(id digest.Digest, names []string) error {
	if len(names) == 0 {
		return nil
	}
	images, err := s.Images()
	if err != nil {
		return err
	}
	for _, img := range images {
		if img.ID == id {
			continue
		}
		kept := slices.DeleteFunc(slices.Clone(img.Names), func(n string) bool { return slices.Contains(names, n) })
		if len(kept) != len(img.Names) {
			img.Names = kept
			if err := s.writeJSONAtomic(filepath.Join(s.imageDir(img.ID), imageRecord), img); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Store) readImage(id digest.Digest) (*Image, error) {
	return readRecord[Image]("image", id.String(), filepath.Join(s.imageDir(id), imageRecord))
}

// Images returns every image record, sorted by ID.
func (s *Store) Images() ([]*Image, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, imagesDir))
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []*Image
	for _, e := range ents {
		id := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if id.Validate() != nil {
			continue
		}
		img, err := s.readImage(id)
		if err != nil {
			continue
		}
		out = append(out, img)
	}
	return out, nil
}

// Image finds an image by name (NAME:TAG, or NAME meaning NAME:latest) or
// by ID or unique ID prefix.
func (s *Store) Image(ref string) (*Image, error) {
	images, err := s.Images()
	if err != nil {
		return nil, err
	}
	for _, img := range images {
		if img.HasName(ref) {
			return img, nil
		}
	}
	ids := make([]digest.Digest, len(images))
	for i, img := range images {
		ids[i] = img.ID
	}
	id, err := resolvePrefix("image", ref, ids)
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, errNotAnID) {
			return nil, fmt.Errorf("image %q: no image has that name or ID: %w", ref, ErrNotFound)
		}
		return nil, err
	}
	return s.readImage(id)
}

// ImageConfig returns the stored config bytes of an image.
func (s *Store) ImageConfig(id digest.Digest) ([]byte, error) {
	return os.ReadFile(filepath.Join(s.imageDir(id), configFile))
}

// ImageManifest returns the stored manifest bytes of an image.
func (s *Store) ImageManifest(id digest.Digest) ([]byte, error) {
	return os.ReadFile(filepath.Join(s.imageDir(id), manifestFile))
}

// DeleteImage removes a name from its image; the image record goes with its
// last name (or at once when ref is an ID). Layers stay: rm them, or gc.
func (s *Store) DeleteImage(ctx context.Context, ref string) (*Image, bool, error) {
	img, err := s.Image(ref)
	if err != nil {
		return nil, false, err
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	if img.HasName(ref) {
		full, _ := NormalizeName(ref)
		img.Names = slices.DeleteFunc(img.Names, func(n string) bool { return n == ref || n == full })
		if len(img.Names) > 0 {
			return img, false, s.writeJSONAtomic(filepath.Join(s.imageDir(img.ID), imageRecord), img)
		}
	}
	trash, err := os.MkdirTemp(s.tmpDir(), "trash-")
	if err != nil {
		return nil, false, fmt.Errorf("remove image %s: %w", img.ID, err)
	}
	if err := os.Rename(s.imageDir(img.ID), filepath.Join(trash, "image")); err != nil {
		return nil, false, fmt.Errorf("remove image %s: %w", img.ID, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return nil, false, fmt.Errorf("remove image %s: %w", img.ID, err)
	}
	s.log.Info("removed image", "id", img.ID)
	return img, true, nil
}

// ExportImageFormat is what ExportImage writes.
type ExportImageFormat string

// Export formats.
const (
	ExportOCILayout     ExportImageFormat = "oci"
	ExportOCIArchive    ExportImageFormat = "oci-archive"
	ExportDockerArchive ExportImageFormat = "docker"
)

// ExportImage writes an image as an OCI layout directory, an oci-archive
// or a docker-archive, its layers reassembled from the store (and checked
// against their diffIDs) and compressed as c (OCI formats only).
func (s *Store) ExportImage(ctx context.Context, ref string, format ExportImageFormat, target string, c compression.Format) (*Image, error) {
	img, err := s.Image(ref)
	if err != nil {
		return nil, err
	}
	cfg, err := s.ImageConfig(img.ID)
	if err != nil {
		return nil, fmt.Errorf("export image %s: config: %w", img.displayName(), err)
	}
	out := ociimage.ImageToWrite{Config: cfg, Names: img.Names}
	for _, id := range img.Layers {
		l, err := s.readLayer(id)
		if err != nil {
			return nil, fmt.Errorf("export image %s: %w", img.displayName(), err)
		}
		out.Layers = append(out.Layers, ociimage.LayerToWrite{
			DiffID: l.DiffID,
			Write: func(ctx context.Context, w io.Writer) error {
				_, err := s.Export(ctx, l.ChainID.String(), w, compression.None)
				return err
			},
		})
	}
	switch format {
	case ExportOCILayout:
		_, err = ociimage.WriteOCILayout(ctx, target, out, c)
	case ExportOCIArchive:
		_, err = ociimage.WriteOCIArchive(ctx, target, out, c)
	case ExportDockerArchive:
		err = ociimage.WriteDockerArchive(ctx, target, out)
	default:
		return nil, fmt.Errorf("export image: unknown format %q (want oci, oci-archive or docker)", format)
	}
	if err != nil {
		return nil, fmt.Errorf("export image %s: %w", img.displayName(), err)
	}
	return img, nil
}
