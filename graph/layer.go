package graph

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/apply"
	"github.com/layerfs/layerfs/compression"
	"github.com/layerfs/layerfs/layertar"
	"github.com/layerfs/layerfs/ownertable"
)

// Layer is a layer's record (layers/<hex>/layer.json).
type Layer struct {
	ChainID digest.Digest `json:"chainID"`
	DiffID  digest.Digest `json:"diffID"`
	// Parent is the chainID of the layer below, empty for a base layer.
	Parent digest.Digest `json:"parent,omitempty"`
	// Size is the apparent size of the layer's regular files.
	Size int64 `json:"size"`
	// TarSize is the size of the uncompressed layer tar.
	TarSize int64 `json:"tarSize"`
	// Entries is the number of tar entries.
	Entries int       `json:"entries"`
	Created time.Time `json:"created"`
	// Compression is what the imported stream was compressed with.
	Compression compression.Format `json:"compression"`
	// XattrNamespace is where the layer's opaque markers live.
	XattrNamespace string `json:"xattrNamespace"`
	// Rootless layers keep ownership in user.containers.override_stat.
	Rootless bool `json:"rootless,omitempty"`
}

// ChainID computes the OCI chainID of diffID on top of parent.
func ChainID(parent, diffID digest.Digest) digest.Digest {
	if parent == "" {
		return diffID
	}
	return digest.FromString(parent.String() + " " + diffID.String())
}

const (
	layerRecord   = "layer.json"
	tarSplitFile  = "tar-split.json.gz"
	layerDiffDir  = "diff"
	layersDir     = "layers"
	stagingPrefix = "stage-"
)

func (s *Store) tmpDir() string { return filepath.Join(s.root, "tmp") }
func (s *Store) layerDir(id digest.Digest) string {
	return filepath.Join(s.root, layersDir, id.Encoded())
}
func (s *Store) recordPath(id digest.Digest) string {
	return filepath.Join(s.layerDir(id), layerRecord)
}
func (s *Store) tarSplitPath(id digest.Digest) string {
	return filepath.Join(s.layerDir(id), tarSplitFile)
}

// DiffDir is the directory holding the layer's files: what a union or
// kernel overlay mount stacks as a lower.
func (s *Store) DiffDir(id digest.Digest) string { return filepath.Join(s.layerDir(id), layerDiffDir) }

// OwnerTable is the layer's special-owners table (package ownertable):
// the owners and modes of a rootless layer's symlinks and FIFOs, which
// cannot carry the override_stat xattr. Absent when there are none.
func (s *Store) OwnerTable(id digest.Digest) string {
	return filepath.Join(s.layerDir(id), ownertable.FileName)
}

// RegisterOptions tune Register.
type RegisterOptions struct {
	// Parent is the ID (or unique prefix) of the layer this one sits on.
	Parent string
	// ExpectDiffID, when set, must equal the applied tar's sha256: an
	// image's config names it, and a mismatch keeps nothing.
	ExpectDiffID digest.Digest
}

// Register applies a layer tar (plain, gzip, zstd, bzip2 or xz, detected
// from its bytes) on top of Parent and adds it to the store. A layer whose
// chain is already stored is not added twice: the existing record is
// returned with existed set. Nothing of a failed registration remains.
func (s *Store) Register(ctx context.Context, r io.Reader, opts RegisterOptions) (l *Layer, existed bool, err error) {
	var parent *Layer
	if opts.Parent != "" {
		if parent, err = s.Layer(opts.Parent); err != nil {
			return nil, false, fmt.Errorf("register layer: parent: %w", err)
		}
	}
	st, err := s.newStaging("layer")
	if err != nil {
		return nil, false, err
	}
	defer st.discard()

	rec, err := s.applyInto(ctx, st.dir, r)
	if err != nil {
		return nil, false, err
	}
	if opts.ExpectDiffID != "" && rec.DiffID != opts.ExpectDiffID {
		return nil, false, fmt.Errorf("register layer: its content hashes to %s, but the image says %s", rec.DiffID, opts.ExpectDiffID)
	}
	if parent != nil {
		rec.Parent = parent.ChainID
	}
	rec.ChainID = ChainID(rec.Parent, rec.DiffID)
	if existing, err := s.readLayer(rec.ChainID); err == nil {
		return existing, true, nil
	}
	if err := s.writeRecordFile(filepath.Join(st.dir, layerRecord), rec); err != nil {
		return nil, false, err
	}
	if err := syncFilesystem(st.dir); err != nil {
		return nil, false, err
	}

	unlock, err := s.lock()
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	if rec.Parent != "" {
		if _, err := s.readLayer(rec.Parent); err != nil {
			return nil, false, fmt.Errorf("register layer: parent %s was removed meanwhile", rec.Parent)
		}
	}
	err = os.Rename(st.dir, s.layerDir(rec.ChainID))
	if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
		// Another process registered the same chain first.
		existing, rerr := s.readLayer(rec.ChainID)
		if rerr != nil {
			return nil, false, fmt.Errorf("register layer %s: %w", rec.ChainID, rerr)
		}
		return existing, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("register layer %s: %w", rec.ChainID, err)
	}
	st.committed()
	if err := syncDir(filepath.Join(s.root, layersDir)); err != nil {
		return nil, false, err
	}
	s.log.Info("registered layer", "chainID", rec.ChainID, "diffID", rec.DiffID, "parent", rec.Parent)
	return rec, false, nil
}

// applyInto decompresses r, applies it into dir/diff and records its
// tar-split metadata into dir, returning the record's content fields.
func (s *Store) applyInto(ctx context.Context, dir string, r io.Reader) (*Layer, error) {
	if err := os.Mkdir(filepath.Join(dir, layerDiffDir), 0o755); err != nil {
		return nil, fmt.Errorf("register layer: %w", err)
	}
	if f, ok := r.(*os.File); ok {
		// Doubles the readahead of a tar file read from disk; ignored for
		// pipes.
		if rc, err := f.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.Fadvise(int(fd), 0, 0, unix.FADV_SEQUENTIAL) })
		}
	}
	plain, format, err := compression.Decompress(r)
	if err != nil {
		return nil, fmt.Errorf("register layer: %w", err)
	}
	defer plain.Close()

	metaFile, err := os.Create(filepath.Join(dir, tarSplitFile))
	if err != nil {
		return nil, fmt.Errorf("register layer: %w", err)
	}
	defer metaFile.Close()
	// The compressor writes a few hundred bytes at a time.
	metaBuf := bufio.NewWriterSize(metaFile, 256<<10)
	// The record is mostly raw headers: the fastest level keeps it small
	// enough, and import is a hot path.
	zw, err := gzip.NewWriterLevel(metaBuf, gzip.BestSpeed)
	if err != nil {
		return nil, fmt.Errorf("register layer: %w", err)
	}
	splitter := layertar.NewSplitter(plain, layertar.NewRecordWriter(zw))
	defer splitter.Close()
	res, err := apply.Apply(ctx, splitter, filepath.Join(dir, layerDiffDir), apply.Options{
		OpaqueNamespace: s.ns,
		Rootless:        s.config.Rootless,
		// Root of a user namespace: real owners where its map allows.
		ChownMapped: s.config.Rootless && os.Geteuid() == 0,
		Logger:      s.log,
		// Register syncs the file system before it publishes the layer.
		StartWriteback: true,
	})
	if err != nil {
		return nil, fmt.Errorf("register layer: %w", err)
	}
	if res.SpecialOwners != nil {
		// Staged with the layer: Register syncs and renames them as one.
		if err := ownertable.WriteFile(filepath.Join(dir, ownertable.FileName), res.SpecialOwners); err != nil {
			return nil, fmt.Errorf("register layer: %w", err)
		}
	}
	// The decompressor may stop at the end of its stream; read the rest
	// of the source so a verifying reader below sees its EOF and checks.
	if _, err := io.Copy(io.Discard, plain); err != nil {
		return nil, fmt.Errorf("register layer: read past the tar: %w", err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("register layer: read past the tar: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("register layer: write %s: %w", tarSplitFile, err)
	}
	if err := metaBuf.Flush(); err != nil {
		return nil, fmt.Errorf("register layer: write %s: %w", tarSplitFile, err)
	}
	if err := metaFile.Close(); err != nil {
		return nil, fmt.Errorf("register layer: write %s: %w", tarSplitFile, err)
	}
	return &Layer{
		DiffID:         splitter.DiffID(),
		Size:           res.Size,
		TarSize:        splitter.Size(),
		Entries:        res.Entries,
		Created:        time.Now().UTC(),
		Compression:    format,
		XattrNamespace: s.ns.String(),
		Rootless:       s.config.Rootless,
	}, nil
}

func (s *Store) writeRecordFile(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// syncFilesystem flushes the whole filesystem holding dir: one syncfs is
// far cheaper than an fsync per applied file, and makes the staged layer
// durable before the rename publishes it.
func syncFilesystem(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// readRecord reads the JSON record at path of the kind and id named; a
// missing one wraps ErrNotFound.
func readRecord[T any](kind, id, path string) (*T, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s %s: %w", kind, id, ErrNotFound)
		}
		return nil, fmt.Errorf("read %s %s: %w", kind, id, err)
	}
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return &v, nil
}

func (s *Store) readLayer(id digest.Digest) (*Layer, error) {
	p := s.recordPath(id)
	l, err := readRecord[Layer]("layer", id.String(), p)
	if err != nil {
		return nil, err
	}
	if l.ChainID != id {
		return nil, fmt.Errorf("read %s: record names %s", p, l.ChainID)
	}
	return l, nil
}

// ErrNotFound is wrapped by lookups of IDs and names that are not stored.
var ErrNotFound = errors.New("not found")

// errNotAnID is wrapped when a reference is not hex: it may still be a name.
var errNotAnID = errors.New("not an ID or ID prefix")

// layerIDs lists the chainIDs of every stored layer, sorted.
func (s *Store) layerIDs() ([]digest.Digest, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, layersDir))
	if err != nil {
		return nil, fmt.Errorf("list layers: %w", err)
	}
	ids := make([]digest.Digest, 0, len(ents))
	for _, e := range ents {
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if d.Validate() == nil {
			ids = append(ids, d)
		}
	}
	return ids, nil
}

// Layer finds a layer by chainID or any unique prefix of it (with or
// without "sha256:").
func (s *Store) Layer(ref string) (*Layer, error) {
	ids, err := s.layerIDs()
	if err != nil {
		return nil, err
	}
	id, err := resolvePrefix("layer", ref, ids)
	if err != nil {
		return nil, err
	}
	return s.readLayer(id)
}

// resolvePrefix picks the one id that ref names.
func resolvePrefix(kind, ref string, ids []digest.Digest) (digest.Digest, error) {
	hex := strings.TrimPrefix(ref, "sha256:")
	if hex == "" || strings.Trim(strings.ToLower(hex), "0123456789abcdef") != "" {
		return "", fmt.Errorf("%s %q: %w", kind, ref, errNotAnID)
	}
	hex = strings.ToLower(hex)
	var matches []digest.Digest
	for _, id := range ids {
		if strings.HasPrefix(id.Encoded(), hex) {
			matches = append(matches, id)
		}
	}
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("%s %q: %w", kind, ref, ErrNotFound)
	case 1:
		return matches[0], nil
	}
	var names []string
	for _, m := range matches {
		names = append(names, m.String())
	}
	return "", fmt.Errorf("%s %q is ambiguous: it prefixes %d IDs:\n  %s", kind, ref, len(matches), strings.Join(names, "\n  "))
}

// Layers returns every layer record, sorted by chainID. Directories that
// hold no valid record are skipped here and reported by Check.
func (s *Store) Layers() ([]*Layer, error) {
	ids, err := s.layerIDs()
	if err != nil {
		return nil, err
	}
	out := make([]*Layer, 0, len(ids))
	for _, id := range ids {
		l, err := s.readLayer(id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			s.log.Warn("unreadable layer record", "layer", id, "err", err)
			continue
		}
		out = append(out, l)
	}
	return out, nil
}

// Children returns the layers whose parent is id.
func (s *Store) Children(id digest.Digest) ([]*Layer, error) {
	all, err := s.Layers()
	if err != nil {
		return nil, err
	}
	var out []*Layer
	for _, l := range all {
		if l.Parent == id {
			out = append(out, l)
		}
	}
	return out, nil
}

// Heads returns the layers no other layer sits on.
func (s *Store) Heads() ([]*Layer, error) {
	all, err := s.Layers()
	if err != nil {
		return nil, err
	}
	hasChild := map[digest.Digest]bool{}
	for _, l := range all {
		hasChild[l.Parent] = true
	}
	var out []*Layer
	for _, l := range all {
		if !hasChild[l.ChainID] {
			out = append(out, l)
		}
	}
	return out, nil
}

// Chain returns id and its ancestors, top first: the lower dirs of a mount.
func (s *Store) Chain(id digest.Digest) ([]*Layer, error) {
	var out []*Layer
	seen := map[digest.Digest]bool{}
	for id != "" {
		if seen[id] {
			return nil, fmt.Errorf("layer %s: parent chain loops", id)
		}
		seen[id] = true
		l, err := s.readLayer(id)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
		id = l.Parent
	}
	return out, nil
}

// DiskUsage is the space the layer's files take (st_blocks), plus its
// records.
func (s *Store) DiskUsage(id digest.Digest) (int64, error) {
	var total int64
	seen := map[[2]uint64]bool{}
	err := filepath.WalkDir(s.layerDir(id), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		key := [2]uint64{st.Dev, st.Ino}
		if !seen[key] {
			seen[key] = true
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure layer %s: %w", id, err)
	}
	return total, nil
}

// Users lists what keeps a layer alive: child layers, images, views and
// mounts. Delete refuses while the list is not empty.
func (s *Store) Users(id digest.Digest) ([]string, error) {
	var users []string
	children, err := s.Children(id)
	if err != nil {
		return nil, err
	}
	for _, c := range children {
		users = append(users, "layer "+c.ChainID.String())
	}
	images, err := s.Images()
	if err != nil {
		return nil, err
	}
	for _, img := range images {
		for _, l := range img.Layers {
			if l == id {
				users = append(users, "image "+img.displayName())
				break
			}
		}
	}
	views, err := s.viewUsers(id)
	if err != nil {
		return nil, err
	}
	users = append(users, views...)
	mounts, err := s.Mounts()
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		if m.View == "" && m.Layer == id {
			users = append(users, "mount "+m.Target)
		}
	}
	sort.Strings(users)
	return users, nil
}

// DeleteLayer removes a layer that nothing uses.
func (s *Store) DeleteLayer(ctx context.Context, ref string) (digest.Digest, error) {
	l, err := s.Layer(ref)
	if err != nil {
		return "", err
	}
	unlock, err := s.lock()
	if err != nil {
		return "", err
	}
	users, err := s.Users(l.ChainID)
	if err == nil && len(users) > 0 {
		err = fmt.Errorf("layer %s is in use by %s", l.ChainID, strings.Join(users, ", "))
	}
	if err == nil {
		err = s.removeLayerLocked(l.ChainID)
	}
	unlock()
	if err != nil {
		return "", err
	}
	s.log.Info("removed layer", "chainID", l.ChainID)
	return l.ChainID, nil
}

// removeLayerLocked removes a layer dir in one rename. Callers hold the
// lock.
func (s *Store) removeLayerLocked(id digest.Digest) error {
	if err := s.removeDirLocked(s.layerDir(id)); err != nil {
		return fmt.Errorf("remove layer %s: %w", id, err)
	}
	return nil
}

// Export writes the layer's original tar to w, compressed as asked. The
// uncompressed stream is checked against the diffID while it is written;
// a mismatch is an error (w has then received a bad stream: callers that
// write files write to a temp file and rename on success).
func (s *Store) Export(ctx context.Context, ref string, w io.Writer, format compression.Format) (*Layer, error) {
	l, err := s.Layer(ref)
	if err != nil {
		return nil, err
	}
	// The assembler's chunks (asynchash.ChunkSize) pass through; a
	// compressor's many small writes are gathered.
	bw := bufio.NewWriterSize(w, 256<<10)
	cw, err := compression.Compress(bw, format)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", l.ChainID, err)
	}
	got, err := s.assemble(ctx, l, cw, false)
	if err != nil {
		return nil, err
	}
	if err := cw.Close(); err != nil {
		return nil, fmt.Errorf("export %s: %w", l.ChainID, err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("export %s: %w", l.ChainID, err)
	}
	if got != l.DiffID {
		// Find the file to blame: the per-file checksums name it.
		if _, verr := s.assemble(ctx, l, io.Discard, true); verr != nil {
			return nil, fmt.Errorf("%w (the reassembled tar does not match its diffID; run layerfs check)", verr)
		}
		return nil, fmt.Errorf("export %s: reassembled tar hashes to %s, not its diffID %s: the layer's files were changed behind the store's back (run layerfs check)", l.ChainID, got, l.DiffID)
	}
	return l, nil
}

// assemble reassembles l's tar into w and returns its digest. verify
// also checks each file against its crc64 (slower; names the culprit).
func (s *Store) assemble(ctx context.Context, l *Layer, w io.Writer, verify bool) (digest.Digest, error) {
	f, err := os.Open(s.tarSplitPath(l.ChainID))
	if err != nil {
		return "", fmt.Errorf("export %s: %w", l.ChainID, err)
	}
	defer f.Close()
	// The decompressor reads 4 KiB at a time from what is not buffered.
	zr, err := gzip.NewReader(bufio.NewReaderSize(f, 256<<10))
	if err != nil {
		return "", fmt.Errorf("export %s: read %s: %w", l.ChainID, tarSplitFile, err)
	}
	diff, err := os.Open(s.DiffDir(l.ChainID))
	if err != nil {
		return "", fmt.Errorf("export %s: %w", l.ChainID, err)
	}
	defer diff.Close()
	dirFd := int(diff.Fd())
	open := func(name string) (int, error) { return openBeneath(dirFd, name) }
	sum, err := layertar.Assemble(ctx, layertar.NewRecordReader(zr), open, w, layertar.AssembleOptions{VerifyPayloads: verify})
	if err != nil {
		return "", fmt.Errorf("export %s: %w", l.ChainID, err)
	}
	return sum, nil
}

// openBeneath opens a tar entry's file inside the layer dir, refusing to
// follow any symlink on the way: the file must be the one the tar wrote.
// O_NONBLOCK: a FIFO put in a file's place makes the read fail rather
// than the export hang; regular files ignore it.
func openBeneath(dirFd int, name string) (int, error) {
	clean := filepath.Clean("/" + name)[1:]
	if clean == "" {
		return -1, fmt.Errorf("open %q: not a file", name)
	}
	fd, err := unix.Openat2(dirFd, clean, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", clean, err)
	}
	return fd, nil
}
