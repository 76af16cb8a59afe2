package ociimage

import (
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layer is one layer of an image.
type Layer struct {
	// Digest is the blob's digest as the manifest names it (of the
	// compressed blob); for a classic docker-archive, the digest of its
	// layer.tar.
	Digest    digest.Digest
	MediaType string
	Size      int64
	// DiffID is the digest of the uncompressed tar, from the config's
	// rootfs.diff_ids.
	DiffID digest.Digest

	// member is where the blob is in the archive; "" means the OCI blob
	// path of Digest.
	member string
}

// Compression names how the blob is compressed: "" for a plain tar,
// "gzip" or "zstd".
func (l Layer) Compression() string {
	c, _ := layerCompression(l.MediaType)
	return c
}

// layerCompression maps a layer media type to its compression; ok is false
// for a type that is not a layer.
func layerCompression(mediaType string) (compression string, ok bool) {
	switch mediaType {
	case v1.MediaTypeImageLayer,
		"application/vnd.oci.image.layer.nondistributable.v1.tar",
		"application/vnd.docker.image.rootfs.diff.tar":
		return "", true
	case v1.MediaTypeImageLayerGzip,
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
		"application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		return "gzip", true
	case v1.MediaTypeImageLayerZstd,
		"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd":
		return "zstd", true
	}
	return "", false
}

// isForeignLayerType reports docker's foreign layer type, whose blob lives
// elsewhere by definition.
func isForeignLayerType(mediaType string) bool {
	return mediaType == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
}

// OpenLayer returns the layer's blob as stored (compressed as its
// MediaType says). Reading it to EOF checks its size and digest: a mismatch
// is an error naming the blob, returned in place of io.EOF.
func (a *Archive) OpenLayer(l Layer) (io.ReadCloser, error) {
	if err := l.Digest.Validate(); err != nil {
		return nil, a.errorf("", corrupt("open layer: digest %q: %v", l.Digest, err))
	}
	name := l.member
	if name == "" {
		name = blobPath(l.Digest)
	}
	m, err := a.src.open(name)
	if err != nil {
		return nil, a.errorf(name, err)
	}
	if m.size != l.Size {
		m.close()
		return nil, a.errorf(name, corrupt("size %d != manifest %d", m.size, l.Size))
	}
	return &verifyingReader{
		a:      a,
		name:   name,
		r:      io.NewSectionReader(m.r, 0, m.size),
		closer: m,
		want:   l.Digest,
		size:   l.Size,
		h:      l.Digest.Algorithm().Hash(),
	}, nil
}

// verifyingReader hashes what it reads and, at the end, reports a size or
// digest mismatch instead of io.EOF.
type verifyingReader struct {
	a      *Archive
	name   string
	r      io.Reader
	closer member
	want   digest.Digest
	size   int64
	n      int64
	h      hash.Hash
	err    error // sticky: the verdict once reached
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if err == io.EOF {
		err = v.verdict()
		v.err = err
	} else if err != nil {
		err = v.a.errorf(v.name, err)
		v.err = err
	}
	return n, err
}

func (v *verifyingReader) verdict() error {
	if v.n != v.size {
		return v.a.errorf(v.name, corrupt("read %d bytes != manifest size %d", v.n, v.size))
	}
	if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
		return v.a.errorf(v.name, corrupt("content digest %s != %s", got, v.want))
	}
	return io.EOF
}

func (v *verifyingReader) Close() error {
	if err := v.closer.close(); err != nil {
		return fmt.Errorf("close %s: %w", v.name, err)
	}
	return nil
}
