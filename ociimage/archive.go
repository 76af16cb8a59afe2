// Package ociimage reads container images from an OCI image layout
// directory, an oci-archive (a tar of an OCI layout) and a docker-archive
// (`docker save` output, classic or Docker 25+). It hands out manifests,
// configs and verified layer blobs; it knows nothing of the layer store.
//
// Tar inputs are indexed once and served in place with io.SectionReader:
// nothing is extracted to disk. Every small blob (index, manifest, config) is
// checked against its digest and size when read; layer blobs are checked as
// they are streamed through OpenLayer.
package ociimage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	_ "crypto/sha256" // digest.SHA256 needs the hash registered
	_ "crypto/sha512"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// The formats Open recognises, as Format reports them.
const (
	FormatOCILayout     = "oci-layout"
	FormatOCIArchive    = "oci-archive"
	FormatDockerArchive = "docker-archive"
)

// Error kinds; every error this package returns for bad input wraps one of
// them (test with errors.Is) and names the file and member at fault.
var (
	// ErrNotImage: the path is neither an OCI layout nor a docker-archive.
	ErrNotImage = errors.New("not an OCI layout, oci-archive or docker-archive")
	// ErrCorrupt: bad JSON, a digest or size mismatch, counts that disagree,
	// a link pointing outside the archive.
	ErrCorrupt = errors.New("corrupt image")
	// ErrUnsupported: valid input this package does not read (foreign
	// layers, schema 1 manifests, compressed archives).
	ErrUnsupported = errors.New("unsupported")
	// ErrNoPlatform: an image index has no manifest for the platform.
	ErrNoPlatform = errors.New("no manifest for the platform")
)

// Archive is an opened image source. Its methods are safe for concurrent
// use.
type Archive struct {
	path     string
	format   string
	src      source
	platform v1.Platform
}

// Image is one image found in an archive.
type Image struct {
	// Names are references as the source gives them: the OCI annotations
	// io.containerd.image.name and org.opencontainers.image.ref.name (a bare
	// tag such as "v1", as skopeo and umoci write it, is kept as it is when
	// no fuller name is known), or docker's RepoTags.
	Names []string
	// Manifest is the image manifest. For a classic docker-archive, which has
	// none, it is synthesized from manifest.json.
	Manifest v1.Manifest
	// ManifestBytes are the manifest's original bytes, or the synthesized
	// manifest's JSON.
	ManifestBytes  []byte
	ManifestDigest digest.Digest
	Config         v1.Image
	ConfigBytes    []byte
	// ConfigDigest is the image ID.
	ConfigDigest digest.Digest
	// Layers are bottom first; Layers[i].DiffID is Config.RootFS.DiffIDs[i].
	Layers []Layer
}

// Open recognises what path is by its content, not its name: a directory
// holding an oci-layout file (or, as `docker save` output extracted, a
// manifest.json), or an uncompressed tar holding manifest.json (a
// docker-archive, which since Docker 25 is also an OCI layout) or an
// oci-layout file (an oci-archive). A tar is indexed here, once.
func Open(path string) (*Archive, error) {
	a := &Archive{path: path, platform: defaultPlatform()}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", path, err)
	}
	if fi.IsDir() {
		ds, err := openDirSource(path)
		if err != nil {
			return nil, fmt.Errorf("open image %s: %w", path, err)
		}
		a.src = ds
		switch {
		case fileExists(ds, dockerManifestFile):
			// `docker save` output extracted to a directory.
			a.format = FormatDockerArchive
		case fileExists(ds, v1.ImageLayoutFile):
			a.format = FormatOCILayout
		default:
			ds.close()
			return nil, fmt.Errorf("open image %s: %w: directory has neither oci-layout nor manifest.json", path, ErrNotImage)
		}
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("open image %s: %w", path, err)
		}
		ts, err := openTarSource(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("open image %s: %w", path, err)
		}
		a.src = ts
		switch {
		case ts.has(dockerManifestFile):
			a.format = FormatDockerArchive
		case ts.has(v1.ImageLayoutFile):
			a.format = FormatOCIArchive
		default:
			ts.close()
			return nil, fmt.Errorf("open image %s: %w: tar has neither manifest.json nor oci-layout", path, ErrNotImage)
		}
	}
	if a.format != FormatDockerArchive {
		if err := a.checkLayoutFile(); err != nil {
			a.src.close()
			return nil, err
		}
	}
	return a, nil
}

func fileExists(s source, name string) bool {
	m, err := s.open(name)
	if err != nil {
		return false
	}
	m.close()
	return true
}

// Close releases the underlying file or directory.
func (a *Archive) Close() error {
	if err := a.src.close(); err != nil {
		return fmt.Errorf("close %s %s: %w", a.format, a.path, err)
	}
	return nil
}

// Format reports what Open found: FormatOCILayout, FormatOCIArchive or
// FormatDockerArchive.
func (a *Archive) Format() string { return a.format }

// Images lists the images in the archive, in the order the source lists
// them. An image index is resolved to the manifest for linux and the
// running architecture.
func (a *Archive) Images(ctx context.Context) ([]Image, error) {
	if a.format == FormatDockerArchive {
		return a.dockerImages(ctx)
	}
	return a.ociImages(ctx)
}

// defaultPlatform is linux on the architecture this program runs on, the
// variant being the one a Go binary for it assumes by default.
func defaultPlatform() v1.Platform {
	p := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	switch runtime.GOARCH {
	case "arm64":
		p.Variant = "v8"
	case "arm":
		p.Variant = "v7"
	}
	return p
}

// errorf names the archive and the member in an error.
func (a *Archive) errorf(member string, err error) error {
	if member == "" {
		return fmt.Errorf("%s %s: %w", a.format, a.path, err)
	}
	return fmt.Errorf("%s %s: %s: %w", a.format, a.path, member, err)
}

// corrupt builds an ErrCorrupt whose message is only the detail.
func corrupt(format string, args ...any) error {
	return kindError{kind: ErrCorrupt, msg: fmt.Sprintf(format, args...)}
}

func unsupported(format string, args ...any) error {
	return kindError{kind: ErrUnsupported, msg: fmt.Sprintf(format, args...)}
}

// kindError is an error of one of the package's kinds whose text does not
// repeat the kind: "size 10 != manifest 12" reads better than
// "corrupt image: size 10 != manifest 12" after the file and member names.
type kindError struct {
	kind  error
	msg   string
	cause error // optional, for errors.Is such as fs.ErrNotExist
}

func (e kindError) Error() string { return e.msg }
func (e kindError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

// readMember reads a whole small member, refusing one larger than limit.
func (a *Archive) readMember(name string, limit int64) ([]byte, error) {
	m, err := a.src.open(name)
	if err != nil {
		return nil, a.errorf(name, err)
	}
	defer m.close()
	if m.size > limit {
		return nil, a.errorf(name, corrupt("%d bytes is more than the %d this file may have", m.size, limit))
	}
	b := make([]byte, m.size)
	if _, err := m.r.ReadAt(b, 0); err != nil && !(err == io.EOF && m.size == 0) {
		return nil, a.errorf(name, err)
	}
	return b, nil
}

// Limits on the JSON documents read whole into memory; registries cap
// manifests at 4 MiB, configs with long histories can be larger.
const (
	maxManifestSize = 4 << 20
	maxConfigSize   = 64 << 20
)

// blobPath is where an OCI layout keeps the blob of digest d.
func blobPath(d digest.Digest) string {
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded()
}

// readBlob reads the blob desc names and checks it against desc's digest
// and size. referrer is the member holding desc; what says what it is
// ("index", "manifest"), for errors.
func (a *Archive) readBlob(desc v1.Descriptor, referrer, what string, limit int64) ([]byte, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, a.errorf(referrer, corrupt("descriptor digest %q: %v", desc.Digest, err))
	}
	name := blobPath(desc.Digest)
	if desc.Size < 0 || desc.Size > limit {
		return nil, a.errorf(name, corrupt("%s %s gives size %d, outside 0..%d", what, referrer, desc.Size, limit))
	}
	b, err := a.readMember(name, limit)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != desc.Size {
		return nil, a.errorf(name, corrupt("size %d != %s %d", len(b), what, desc.Size))
	}
	if got := desc.Digest.Algorithm().FromBytes(b); got != desc.Digest {
		return nil, a.errorf(name, corrupt("content digest %s != %s %s", got, what, desc.Digest))
	}
	return b, nil
}

// checkLayoutFile checks the oci-layout file of an OCI layout.
func (a *Archive) checkLayoutFile() error {
	b, err := a.readMember(v1.ImageLayoutFile, 1<<16)
	if err != nil {
		return err
	}
	var l v1.ImageLayout
	if err := decodeJSON(b, &l); err != nil {
		return a.errorf(v1.ImageLayoutFile, corrupt("bad JSON: %v", err))
	}
	if l.Version != v1.ImageLayoutVersion {
		return a.errorf(v1.ImageLayoutFile, unsupported("imageLayoutVersion %q, want %q", l.Version, v1.ImageLayoutVersion))
	}
	return nil
}
