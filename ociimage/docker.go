package ociimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// dockerManifestFile is the image list `docker save` writes.
const dockerManifestFile = "manifest.json"

// dockerEntry is one image in a docker-archive's manifest.json.
type dockerEntry struct {
	Config       string
	RepoTags     []string
	Layers       []string
	LayerSources map[digest.Digest]v1.Descriptor `json:",omitempty"`
}

// ociManifest is a manifest found in the OCI half of a Docker 25+ archive.
type ociManifest struct {
	desc     v1.Descriptor
	bytes    []byte
	referrer string
	layers   []string // blob paths, bottom first
}

func (a *Archive) dockerImages(ctx context.Context) ([]Image, error) {
	b, err := a.readMember(dockerManifestFile, maxManifestSize)
	if err != nil {
		return nil, err
	}
	var entries []dockerEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, a.errorf(dockerManifestFile, corrupt("bad JSON: %v", err))
	}
	if len(entries) == 0 {
		return nil, a.errorf(dockerManifestFile, corrupt("lists no images"))
	}
	// Docker 25+ writes an OCI layout beside manifest.json; its manifests
	// are the originals, which the store may want bit for bit.
	var byConfig map[digest.Digest][]ociManifest
	if fileExists(a.src, v1.ImageLayoutFile) {
		if byConfig, err = a.ociManifestsByConfig(ctx); err != nil {
			return nil, err
		}
	}
	var images []Image
	for i, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		img, err := a.dockerImage(ctx, e, fmt.Sprintf("%s[%d]", dockerManifestFile, i), byConfig)
		if err != nil {
			return nil, err
		}
		images = append(images, img)
	}
	return images, nil
}

// ociManifestsByConfig finds every image manifest reachable from
// index.json whose blob is in the archive, by config digest. Docker saves
// the whole index of a multi-platform image but only the blobs of the
// platforms it has, so missing blobs are skipped, not errors.
func (a *Archive) ociManifestsByConfig(ctx context.Context) (map[digest.Digest][]ociManifest, error) {
	idx, err := a.readIndexFile()
	if err != nil {
		return nil, err
	}
	found := map[digest.Digest][]ociManifest{}
	var walk func(descs []v1.Descriptor, referrer string, depth int) error
	walk = func(descs []v1.Descriptor, referrer string, depth int) error {
		if depth > maxIndexDepth {
			return a.errorf(referrer, corrupt("indexes nested more than %d deep", maxIndexDepth))
		}
		for _, d := range descs {
			if err := ctx.Err(); err != nil {
				return err
			}
			if !isIndexType(d.MediaType) && !isManifestType(d.MediaType) {
				continue
			}
			b, err := a.readBlob(d, referrer, "index", maxManifestSize)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			name := blobPath(d.Digest)
			if isIndexType(d.MediaType) {
				var sub v1.Index
				if err := decodeJSON(b, &sub); err != nil {
					return a.errorf(name, corrupt("bad JSON in index: %v", err))
				}
				if err := walk(sub.Manifests, name, depth+1); err != nil {
					return err
				}
				continue
			}
			var m v1.Manifest
			if err := decodeJSON(b, &m); err != nil {
				return a.errorf(name, corrupt("bad JSON in manifest: %v", err))
			}
			om := ociManifest{desc: d, bytes: b, referrer: referrer}
			for _, l := range m.Layers {
				om.layers = append(om.layers, blobPath(l.Digest))
			}
			found[m.Config.Digest] = append(found[m.Config.Digest], om)
		}
		return nil
	}
	if err := walk(idx.Manifests, v1.ImageIndexFile, 0); err != nil {
		return nil, err
	}
	return found, nil
}

// digestFromName gives the digest a docker-archive member name implies:
// blobs/ALG/HEX, or HEX.json / HEX.tar as older saves name configs and
// skopeo names layers. "" when the name implies none.
func digestFromName(name string) digest.Digest {
	if d := digestFromBlobPath(name); d != "" {
		return d
	}
	base := path.Base(name)
	ext := path.Ext(base)
	if ext != ".json" {
		return ""
	}
	d := digest.NewDigestFromEncoded(digest.SHA256, strings.TrimSuffix(base, ext))
	if d.Validate() != nil {
		return ""
	}
	return d
}

func (a *Archive) dockerImage(ctx context.Context, e dockerEntry, entry string, byConfig map[digest.Digest][]ociManifest) (Image, error) {
	if e.Config == "" {
		return Image{}, a.errorf(entry, corrupt("no Config"))
	}
	configName, err := cleanMember(e.Config)
	if err != nil {
		return Image{}, a.errorf(entry, err)
	}
	cbytes, err := a.readMember(configName, maxConfigSize)
	if err != nil {
		return Image{}, err
	}
	configDigest := digest.FromBytes(cbytes)
	if named := digestFromName(configName); named != "" {
		if got := named.Algorithm().FromBytes(cbytes); got != named {
			return Image{}, a.errorf(configName, corrupt("content digest %s != name %s", got, named))
		}
		configDigest = named
	}
	var layerNames []string
	for _, l := range e.Layers {
		n, err := cleanMember(l)
		if err != nil {
			return Image{}, a.errorf(entry, err)
		}
		layerNames = append(layerNames, n)
	}
	names := slices.Clone(e.RepoTags)

	for _, om := range byConfig[configDigest] {
		if slices.Equal(om.layers, layerNames) {
			img, err := a.imageFromManifest(om.desc, om.bytes, om.referrer)
			if err != nil {
				return Image{}, err
			}
			img.Names = names
			return img, nil
		}
	}

	// Classic form: synthesize the OCI manifest docker never wrote.
	cfg, err := a.parseConfig(configName, cbytes, len(layerNames))
	if err != nil {
		return Image{}, err
	}
	img := Image{
		Names:        names,
		Config:       cfg,
		ConfigBytes:  cbytes,
		ConfigDigest: configDigest,
		Manifest: v1.Manifest{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: v1.MediaTypeImageManifest,
			Config: v1.Descriptor{
				MediaType: v1.MediaTypeImageConfig,
				Digest:    configDigest,
				Size:      int64(len(cbytes)),
			},
			Layers: []v1.Descriptor{},
		},
	}
	for i, name := range layerNames {
		diffID := cfg.RootFS.DiffIDs[i]
		if src, ok := e.LayerSources[diffID]; ok && (len(src.URLs) > 0 || isForeignLayerType(src.MediaType)) {
			return Image{}, a.errorf(entry, unsupported("layer %d (%s) is a foreign layer (media type %q, URLs %v)", i, diffID, src.MediaType, src.URLs))
		}
		l, err := a.classicLayer(ctx, name, diffID)
		if err != nil {
			return Image{}, err
		}
		img.Layers = append(img.Layers, l)
		img.Manifest.Layers = append(img.Manifest.Layers, v1.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size})
	}
	mb, err := json.Marshal(img.Manifest)
	if err != nil {
		return Image{}, a.errorf(entry, err)
	}
	img.ManifestBytes = mb
	img.ManifestDigest = digest.FromBytes(mb)
	return img, nil
}

// classicLayer describes a layer file named by manifest.json. Its digest is
// the one its name implies, or for a plain tar the diffID (OpenLayer checks
// either as it reads); only a compressed layer.tar with a name that says
// nothing is hashed here.
func (a *Archive) classicLayer(ctx context.Context, name string, diffID digest.Digest) (Layer, error) {
	m, err := a.src.open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Layer{}, a.errorf(name, kindError{kind: ErrCorrupt, msg: "missing layer named by manifest.json"})
		}
		return Layer{}, a.errorf(name, err)
	}
	defer m.close()
	head := make([]byte, 6)
	n, _ := m.r.ReadAt(head, 0)
	compression := sniffCompression(head[:n])
	l := Layer{Size: m.size, DiffID: diffID, member: name}
	switch compression {
	case "":
		l.MediaType = v1.MediaTypeImageLayer
	case "gzip":
		l.MediaType = v1.MediaTypeImageLayerGzip
	case "zstd":
		l.MediaType = v1.MediaTypeImageLayerZstd
	default:
		return Layer{}, a.errorf(name, unsupported("%s-compressed layers are not supported", compression))
	}
	switch {
	case digestFromBlobPath(name) != "":
		l.Digest = digestFromBlobPath(name)
	case compression == "":
		l.Digest = diffID
	default:
		d, err := hashReader(ctx, io.NewSectionReader(m.r, 0, m.size))
		if err != nil {
			return Layer{}, a.errorf(name, err)
		}
		l.Digest = d
	}
	return l, nil
}

// hashReader digests r, stopping early when ctx is done.
func hashReader(ctx context.Context, r io.Reader) (digest.Digest, error) {
	dg := digest.SHA256.Digester()
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := r.Read(buf)
		dg.Hash().Write(buf[:n])
		if err == io.EOF {
			return dg.Digest(), nil
		}
		if err != nil {
			return "", err
		}
	}
}
