package ociimage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of the docker distribution formats, accepted beside the OCI
// ones.
const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerSchema1      = "application/vnd.docker.distribution.manifest.v1+json"
	mediaTypeDockerSchema1JWS   = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"

	// annotationContainerdName is the full reference containerd and Docker
	// 25+ record beside the (often bare-tag) ref.name annotation.
	annotationContainerdName = "io.containerd.image.name"
	// annotationDockerRefType marks the attestation manifests buildx puts
	// into indexes; they are not images to run.
	annotationDockerRefType = "vnd.docker.reference.type"
)

// maxIndexDepth bounds nested indexes so a cycle of indexes is an error.
const maxIndexDepth = 8

// decodeJSON unmarshals a JSON object; "null", an array or trailing data is
// an error rather than a silently empty value.
func decodeJSON(b []byte, v any) error {
	t := bytes.TrimSpace(b)
	if len(t) == 0 || t[0] != '{' {
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(t, v)
}

func isIndexType(mt string) bool {
	return mt == v1.MediaTypeImageIndex || mt == mediaTypeDockerManifestList
}

func isManifestType(mt string) bool {
	return mt == v1.MediaTypeImageManifest || mt == mediaTypeDockerManifest
}

func isConfigType(mt string) bool {
	return mt == v1.MediaTypeImageConfig || mt == mediaTypeDockerConfig
}

func isAttestation(d v1.Descriptor) bool {
	if d.Annotations[annotationDockerRefType] != "" {
		return true
	}
	return d.Platform != nil && d.Platform.OS == "unknown" && d.Platform.Architecture == "unknown"
}

// namesOf gives the references a top-level descriptor goes by.
func namesOf(d v1.Descriptor) []string {
	var names []string
	if n := d.Annotations[annotationContainerdName]; n != "" {
		names = append(names, n)
	}
	if ref := d.Annotations[v1.AnnotationRefName]; ref != "" {
		// A bare tag only says again what the full name says.
		full := len(names) > 0
		bareTag := !strings.ContainsAny(ref, "/:@")
		if !(full && bareTag) && !slices.Contains(names, ref) {
			names = append(names, ref)
		}
	}
	return names
}

func (a *Archive) readIndexFile() (v1.Index, error) {
	b, err := a.readMember(v1.ImageIndexFile, maxManifestSize)
	if err != nil {
		return v1.Index{}, err
	}
	var idx v1.Index
	if err := decodeJSON(b, &idx); err != nil {
		return v1.Index{}, a.errorf(v1.ImageIndexFile, corrupt("bad JSON: %v", err))
	}
	if idx.SchemaVersion != 2 {
		return v1.Index{}, a.errorf(v1.ImageIndexFile, unsupported("schemaVersion %d, want 2", idx.SchemaVersion))
	}
	return idx, nil
}

func (a *Archive) ociImages(ctx context.Context) ([]Image, error) {
	idx, err := a.readIndexFile()
	if err != nil {
		return nil, err
	}
	var images []Image
	for _, group := range groupTopLevel(idx.Manifests) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		desc := group[0]
		if len(group) > 1 {
			// Several platform manifests under one name at the top level
			// are an index written out flat.
			if desc, err = a.choosePlatform(group, v1.ImageIndexFile); err != nil {
				return nil, err
			}
		}
		mdesc, mbytes, referrer, err := a.resolve(desc, v1.ImageIndexFile, 0)
		if err != nil {
			return nil, err
		}
		img, err := a.imageFromManifest(mdesc, mbytes, referrer)
		if err != nil {
			return nil, err
		}
		img.Names = namesOf(desc)
		images = append(images, img)
	}
	if len(images) == 0 {
		return nil, a.errorf(v1.ImageIndexFile, corrupt("lists no images"))
	}
	return images, nil
}

// groupTopLevel groups the descriptors of index.json into images: each is
// one, except that manifests sharing a name that all carry a platform are
// the platforms of one image. Attestation manifests are dropped.
func groupTopLevel(descs []v1.Descriptor) [][]v1.Descriptor {
	var groups [][]v1.Descriptor
	byName := map[string]int{}
	for _, d := range descs {
		if isAttestation(d) {
			continue
		}
		if d.Platform == nil || !isManifestType(d.MediaType) {
			groups = append(groups, []v1.Descriptor{d})
			continue
		}
		key := d.Annotations[v1.AnnotationRefName] + "\x00" + d.Annotations[annotationContainerdName]
		if i, ok := byName[key]; ok {
			groups[i] = append(groups[i], d)
			continue
		}
		byName[key] = len(groups)
		groups = append(groups, []v1.Descriptor{d})
	}
	return groups
}

// resolve reads the manifest or index desc names, following indexes down to
// the manifest for the archive's platform. It returns the manifest's
// descriptor, its bytes and the name of what referred to it.
func (a *Archive) resolve(desc v1.Descriptor, referrer string, depth int) (v1.Descriptor, []byte, string, error) {
	if depth > maxIndexDepth {
		return v1.Descriptor{}, nil, "", a.errorf(referrer, corrupt("indexes nested more than %d deep", maxIndexDepth))
	}
	if len(desc.URLs) > 0 {
		return v1.Descriptor{}, nil, "", a.errorf(referrer, unsupported("descriptor %s has external URLs", desc.Digest))
	}
	b, err := a.readBlob(desc, referrer, "index", maxManifestSize)
	if err != nil {
		return v1.Descriptor{}, nil, "", err
	}
	name := blobPath(desc.Digest)
	mt := desc.MediaType
	if mt == "" {
		mt = sniffMediaType(b)
	}
	switch {
	case isIndexType(mt):
		var idx v1.Index
		if err := decodeJSON(b, &idx); err != nil {
			return v1.Descriptor{}, nil, "", a.errorf(name, corrupt("bad JSON in index: %v", err))
		}
		if idx.MediaType != "" && desc.MediaType != "" && idx.MediaType != desc.MediaType {
			return v1.Descriptor{}, nil, "", a.errorf(name, corrupt("mediaType %q != %s %q", idx.MediaType, referrer, desc.MediaType))
		}
		next, err := a.choosePlatform(idx.Manifests, name)
		if err != nil {
			return v1.Descriptor{}, nil, "", err
		}
		return a.resolve(next, name, depth+1)
	case isManifestType(mt):
		desc.MediaType = mt
		return desc, b, referrer, nil
	case mt == mediaTypeDockerSchema1 || mt == mediaTypeDockerSchema1JWS:
		return v1.Descriptor{}, nil, "", a.errorf(name, unsupported("docker schema 1 manifests are not supported"))
	default:
		return v1.Descriptor{}, nil, "", a.errorf(name, unsupported("media type %q is not an image manifest or index", mt))
	}
}

// sniffMediaType reads the media type of a manifest or index whose
// descriptor does not give one.
func sniffMediaType(b []byte) string {
	var probe struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Config    json.RawMessage `json:"config"`
	}
	if json.Unmarshal(b, &probe) != nil {
		return ""
	}
	switch {
	case probe.MediaType != "":
		return probe.MediaType
	case probe.Manifests != nil:
		return v1.MediaTypeImageIndex
	case probe.Config != nil:
		return v1.MediaTypeImageManifest
	}
	return ""
}

// choosePlatform picks the manifest for the archive's platform from the
// entries of an index (named where).
func (a *Archive) choosePlatform(descs []v1.Descriptor, where string) (v1.Descriptor, error) {
	var candidates []v1.Descriptor
	for _, d := range descs {
		if !isAttestation(d) {
			candidates = append(candidates, d)
		}
	}
	if len(candidates) == 1 && candidates[0].Platform == nil {
		return candidates[0], nil
	}
	want := a.platform
	var best *v1.Descriptor
	bestScore := 0
	for i, d := range candidates {
		p := d.Platform
		if p == nil || p.OS != want.OS || p.Architecture != want.Architecture {
			continue
		}
		score := 1
		switch p.Variant {
		case want.Variant:
			score = 3
		case "":
			score = 2
		}
		if score > bestScore {
			best, bestScore = &candidates[i], score
		}
	}
	if best != nil {
		return *best, nil
	}
	var present []string
	for _, d := range candidates {
		present = append(present, platformString(d.Platform))
	}
	return v1.Descriptor{}, a.errorf(where, kindError{kind: ErrNoPlatform,
		msg: fmt.Sprintf("no manifest for %s; the index has %s", platformString(&want), orNone(present))})
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func platformString(p *v1.Platform) string {
	if p == nil {
		return "(no platform)"
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// imageFromManifest reads and checks the config and layer descriptors of an
// image manifest.
func (a *Archive) imageFromManifest(mdesc v1.Descriptor, mbytes []byte, referrer string) (Image, error) {
	name := blobPath(mdesc.Digest)
	var m v1.Manifest
	if err := decodeJSON(mbytes, &m); err != nil {
		return Image{}, a.errorf(name, corrupt("bad JSON in manifest: %v", err))
	}
	if m.SchemaVersion != 2 {
		return Image{}, a.errorf(name, unsupported("manifest schemaVersion %d, want 2", m.SchemaVersion))
	}
	if m.MediaType != "" && m.MediaType != mdesc.MediaType {
		return Image{}, a.errorf(name, corrupt("mediaType %q != %s %q", m.MediaType, referrer, mdesc.MediaType))
	}
	if !isConfigType(m.Config.MediaType) {
		return Image{}, a.errorf(name, unsupported("config media type %q is not an image config", m.Config.MediaType))
	}
	cbytes, err := a.readBlob(m.Config, name, "manifest", maxConfigSize)
	if err != nil {
		return Image{}, err
	}
	cfg, err := a.parseConfig(blobPath(m.Config.Digest), cbytes, len(m.Layers))
	if err != nil {
		return Image{}, err
	}
	img := Image{
		Manifest:       m,
		ManifestBytes:  mbytes,
		ManifestDigest: mdesc.Digest,
		Config:         cfg,
		ConfigBytes:    cbytes,
		ConfigDigest:   m.Config.Digest,
	}
	for i, ld := range m.Layers {
		l, err := a.checkLayerDescriptor(ld, name, i)
		if err != nil {
			return Image{}, err
		}
		l.DiffID = cfg.RootFS.DiffIDs[i]
		img.Layers = append(img.Layers, l)
	}
	return img, nil
}

// parseConfig parses an image config and checks that it describes nLayers
// layers.
func (a *Archive) parseConfig(name string, b []byte, nLayers int) (v1.Image, error) {
	var cfg v1.Image
	if err := decodeJSON(b, &cfg); err != nil {
		return v1.Image{}, a.errorf(name, corrupt("bad JSON in config: %v", err))
	}
	if cfg.RootFS.Type != "layers" {
		return v1.Image{}, a.errorf(name, corrupt("rootfs.type %q, want \"layers\"", cfg.RootFS.Type))
	}
	if len(cfg.RootFS.DiffIDs) != nLayers {
		return v1.Image{}, a.errorf(name, corrupt("%d diff_ids != %d layers", len(cfg.RootFS.DiffIDs), nLayers))
	}
	for i, d := range cfg.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return v1.Image{}, a.errorf(name, corrupt("diff_ids[%d] %q: %v", i, d, err))
		}
	}
	return cfg, nil
}

// checkLayerDescriptor checks layer i of a manifest: a layer media type, no
// external URLs, a blob present with the size the manifest gives.
func (a *Archive) checkLayerDescriptor(d v1.Descriptor, manifest string, i int) (Layer, error) {
	if len(d.URLs) > 0 || isForeignLayerType(d.MediaType) {
		return Layer{}, a.errorf(manifest, unsupported("layer %d (%s) is a foreign layer (media type %q, URLs %v)", i, d.Digest, d.MediaType, d.URLs))
	}
	if _, ok := layerCompression(d.MediaType); !ok {
		return Layer{}, a.errorf(manifest, corrupt("layer %d (%s): media type %q is not a layer type", i, d.Digest, d.MediaType))
	}
	if err := d.Digest.Validate(); err != nil {
		return Layer{}, a.errorf(manifest, corrupt("layer %d digest %q: %v", i, d.Digest, err))
	}
	name := blobPath(d.Digest)
	m, err := a.src.open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Layer{}, a.errorf(name, kindError{kind: ErrCorrupt, msg: fmt.Sprintf("missing blob (layer %d of %s)", i, manifest)})
		}
		return Layer{}, a.errorf(name, err)
	}
	m.close()
	if m.size != d.Size {
		return Layer{}, a.errorf(name, corrupt("size %d != manifest %d", m.size, d.Size))
	}
	return Layer{Digest: d.Digest, MediaType: d.MediaType, Size: d.Size, member: name}, nil
}

// digestFromBlobPath gives the digest an OCI blob path names, "" for a path
// that is not one.
func digestFromBlobPath(name string) digest.Digest {
	parts := strings.Split(name, "/")
	if len(parts) != 3 || parts[0] != "blobs" {
		return ""
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2])
	if d.Validate() != nil {
		return ""
	}
	return d
}
