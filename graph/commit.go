package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/changes"
)

// Diff lists what a view changed on top of its layers.
func (s *Store) Diff(ctx context.Context, ref string) (*View, []changes.Change, error) {
	return s.DiffWithOptions(ctx, ref, DiffOptions{})
}

// KernelIndexFunc reads the hardlink index kernel overlayfs (index=on)
// keeps in a view's work dir while it has the view mounted: the view
// paths that only the index serves, the upper having no name there, each
// mapped to the index entry holding the object (changes.WriteOptions'
// IndexedNames). It must not write into the upper or the work dir, which
// belong to the live mount. The graph knows nothing of overlayfs's
// formats: the caller gives it (fusefs.KernelIndexNames).
type KernelIndexFunc func(ctx context.Context, d ViewDirs) (map[string]string, error)

// DiffOptions tune DiffWithOptions.
type DiffOptions struct {
	// KernelIndex, when set, is read for a view the kernel driver has
	// mounted right now, so the diff lists the names its index serves.
	KernelIndex KernelIndexFunc
}

// DiffWithOptions is Diff with options.
func (s *Store) DiffWithOptions(ctx context.Context, ref string, opts DiffOptions) (*View, []changes.Change, error) {
	v, err := s.View(ref)
	if err != nil {
		return nil, nil, err
	}
	d, err := s.Dirs(v)
	if err != nil {
		return nil, nil, err
	}
	names, err := s.kernelIndexNames(ctx, v, d, opts.KernelIndex)
	if err != nil {
		return nil, nil, fmt.Errorf("diff view %s: %w", v.ID, err)
	}
	list, err := changes.DiffWithOptions(ctx, d.Upper, d.Lowers, changes.DiffOptions{IndexedNames: names})
	if err != nil {
		return nil, nil, fmt.Errorf("diff view %s: %w", v.ID, err)
	}
	return v, list, nil
}

// CommitOptions tune Commit.
type CommitOptions struct {
	// Name, when set, records an image NAME:TAG whose top layer is the
	// committed one (its config derived from the view's image, if any).
	Name    string
	Message string
	// Keep leaves the view as it was; otherwise it moves onto the new
	// layer with an empty upper (which needs it unmounted).
	Keep bool
	// KernelIndex, when set, is read for a view the kernel driver has
	// mounted right now (Keep), so the layer holds the names of lower
	// hardlink groups that only the kernel's index serves, with their new
	// data. Without it such names keep the lower's data in the layer.
	KernelIndex KernelIndexFunc
}

// commitAttempts bounds the retries of a commit whose upper kept changing.
const commitAttempts = 3

// Commit writes the view's changes as a layer tar and registers it on top
// of the view's layer. A mounted view may be committed: the upper is read
// in place, and the commit only stands if nothing in the upper changed
// while it was read (every entry's ctime is older than the start); else it
// starts over, up to three times. What is committed is therefore the
// upper as it was at one instant. For a view the kernel driver has
// mounted, opts.KernelIndex adds the names the kernel's index serves; the
// index entries read count as part of the upper in that check. Nothing is
// written into the upper or the work dir.
func (s *Store) Commit(ctx context.Context, ref string, opts CommitOptions) (*Layer, *Image, error) {
	v, err := s.View(ref)
	if err != nil {
		return nil, nil, err
	}
	var name string
	if opts.Name != "" {
		if name, err = NormalizeName(opts.Name); err != nil {
			return nil, nil, err
		}
	}
	mounted, err := s.viewMounted(v.ID)
	if err != nil {
		return nil, nil, err
	}
	if mounted != "" && !opts.Keep {
		return nil, nil, fmt.Errorf("commit view %s: it is mounted at %s: commit --keep, or unmount it so it can move onto the new layer", v.ID[:12], mounted)
	}
	d, err := s.Dirs(v)
	if err != nil {
		return nil, nil, err
	}
	var layer *Layer
	for attempt := 1; ; attempt++ {
		var changed bool
		layer, changed, err = s.commitOnce(ctx, v, d, opts.KernelIndex)
		if err != nil {
			return nil, nil, err
		}
		if !changed {
			break
		}
		if attempt == commitAttempts {
			return nil, nil, fmt.Errorf("commit view %s: the upper kept changing while it was read (%d attempts); stop writing to it or unmount it", v.ID[:12], attempt)
		}
		s.log.Info("upper changed during commit, starting over", "view", v.ID, "attempt", attempt)
	}
	var img *Image
	if name != "" {
		if img, err = s.commitImage(v, layer, name, opts.Message); err != nil {
			return layer, nil, err
		}
	}
	if !opts.Keep {
		if err := s.moveView(v, layer.ChainID); err != nil {
			return layer, img, err
		}
	}
	return layer, img, nil
}

// commitOnce registers the upper's tar and reports whether the upper
// changed meanwhile (the layer is then a candidate only: registering it is
// harmless, it is content-addressed and the next attempt may reuse it).
func (s *Store) commitOnce(ctx context.Context, v *View, d ViewDirs, kernelIndex KernelIndexFunc) (*Layer, bool, error) {
	start, err := fsNow(filepath.Dir(d.Upper))
	if err != nil {
		return nil, false, err
	}
	// Read after the start: a kernel change to the index meanwhile
	// changes the upper too (a name linked or whited out, or the data of
	// the upper copy), which the check below sees.
	names, err := s.kernelIndexNames(ctx, v, d, kernelIndex)
	if err != nil {
		return nil, false, fmt.Errorf("commit view %s: %w", v.ID[:12], err)
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(changes.WriteLayer(ctx, pw, d.Upper, d.Lowers, changes.WriteOptions{Logger: s.log,
			UpperOwnerTable: d.UpperOwnerTable, LowerOwnerTables: d.LowerOwnerTables, IndexedNames: names}))
	}()
	layer, existed, err := s.Register(ctx, pr, RegisterOptions{Parent: v.Parent.String()})
	pr.CloseWithError(errors.New("commit ended"))
	if err != nil {
		return nil, false, fmt.Errorf("commit view %s: %w", v.ID[:12], err)
	}
	changed, err := changedSince(d.Upper, start)
	if err != nil {
		return nil, false, err
	}
	// An index entry with no upper name left is not in that walk.
	changed = changed || entriesChangedSince(names, start)
	var tst unix.Stat_t
	if unix.Stat(d.UpperOwnerTable, &tst) == nil && !changed {
		// A chown recorded in the table changes nothing in the upper.
		changed = tst.Ctim.Sec > start.Sec || tst.Ctim.Sec == start.Sec && tst.Ctim.Nsec >= start.Nsec
	}
	if changed && !existed {
		// A torn candidate: nobody may use it.
		if _, err := s.DeleteLayer(ctx, layer.ChainID.String()); err != nil {
			s.log.Warn("cannot remove a discarded commit candidate", "layer", layer.ChainID, "err", err)
		}
	}
	return layer, changed, nil
}

// fsNow reads the filesystem's clock: the ctime of a file made now. File
// times come from the kernel's coarse clock, which can lag time.Now.
func fsNow(dir string) (unix.Timespec, error) {
	f, err := os.CreateTemp(dir, ".commit-clock-")
	if err != nil {
		return unix.Timespec{}, fmt.Errorf("commit: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return unix.Timespec{}, fmt.Errorf("commit: %w", err)
	}
	return st.Ctim, nil
}

// changedSince reports whether anything in dir has a ctime at or after t.
func changedSince(dir string, t unix.Timespec) (bool, error) {
	changed := false
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				changed = true
				return filepath.SkipAll
			}
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			changed = true
			return filepath.SkipAll
		}
		if st.Ctim.Sec > t.Sec || st.Ctim.Sec == t.Sec && st.Ctim.Nsec >= t.Nsec {
			changed = true
			return filepath.SkipAll
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("commit: check the upper: %w", err)
	}
	return changed, nil
}

// kernelIndexNames runs read when the kernel driver has v mounted (with an
// upper) right now; otherwise the upper describes the view alone, or the
// caller linked the index's names into it (fusefs.AdoptKernelIndex).
func (s *Store) kernelIndexNames(ctx context.Context, v *View, d ViewDirs, read KernelIndexFunc) (map[string]string, error) {
	if read == nil {
		return nil, nil
	}
	mounts, err := s.Mounts()
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		if m.View == v.ID && m.Driver == "kernel" && !m.ReadOnly && m.State == StateMounted {
			return read(ctx, d)
		}
	}
	return nil, nil
}

// entriesChangedSince reports whether a file names maps to has a ctime
// at or after t, or is gone.
func entriesChangedSince(names map[string]string, t unix.Timespec) bool {
	seen := map[string]bool{}
	for _, p := range names {
		if seen[p] {
			continue
		}
		seen[p] = true
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return true
		}
		if st.Ctim.Sec > t.Sec || st.Ctim.Sec == t.Sec && st.Ctim.Nsec >= t.Nsec {
			return true
		}
	}
	return false
}

func goarch() string { return runtime.GOARCH }

func (s *Store) viewMounted(id string) (string, error) {
	mounts, err := s.Mounts()
	if err != nil {
		return "", err
	}
	for _, m := range mounts {
		if m.View == id && m.State != StateUnmounted {
			return m.Target, nil
		}
	}
	return "", nil
}

// moveView puts the view on layer with an empty upper and work dir.
func (s *Store) moveView(v *View, layer digest.Digest) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if m, err := s.viewMounted(v.ID); err != nil || m != "" {
		return fmt.Errorf("commit: view %s was mounted meanwhile; it stays on its old layer", v.ID[:12])
	}
	dir := s.viewDir(v.ID)
	for _, sub := range []string{"upper", "work"} {
		fresh := filepath.Join(dir, sub+".new")
		os.RemoveAll(fresh)
		if err := os.Mkdir(fresh, 0o755); err != nil {
			return fmt.Errorf("commit: reset view: %w", err)
		}
		if err := s.removeDirLocked(filepath.Join(dir, sub)); err != nil {
			return fmt.Errorf("commit: reset view: %w", err)
		}
		if err := os.Rename(fresh, filepath.Join(dir, sub)); err != nil {
			return fmt.Errorf("commit: reset view: %w", err)
		}
	}
	moved := *v
	moved.Parent = layer
	return s.writeJSONAtomic(filepath.Join(dir, viewRecord), &moved)
}

// commitImage records an image whose top layer is the committed one: the
// view's image config with the new diffID and a history entry appended,
// and a manifest naming the layers by their uncompressed digests (export
// compresses them and writes a fresh manifest).
func (s *Store) commitImage(v *View, layer *Layer, name, message string) (*Image, error) {
	chain, err := s.Chain(layer.ChainID)
	if err != nil {
		return nil, err
	}
	var cfg v1.Image
	if v.Image != "" {
		data, err := s.ImageConfig(v.Image)
		if err != nil {
			return nil, fmt.Errorf("commit: base image config: %w", err)
		}
		if err := json.Unmarshal(data, &cfg); err != nil {
			return nil, fmt.Errorf("commit: base image config: %w", err)
		}
	} else {
		cfg.Platform = v1.Platform{OS: "linux", Architecture: goarch()}
	}
	now := time.Now().UTC()
	cfg.Created = &now
	cfg.RootFS = v1.RootFS{Type: "layers"}
	for i := len(chain) - 1; i >= 0; i-- {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, chain[i].DiffID)
	}
	// History must have one non-empty entry per layer; pad what a base
	// without history lacks.
	nonEmpty := 0
	for _, h := range cfg.History {
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	for nonEmpty < len(chain)-1 {
		cfg.History = append(cfg.History, v1.History{Created: &now, CreatedBy: "layerfs import"})
		nonEmpty++
	}
	cfg.History = append(cfg.History, v1.History{Created: &now, CreatedBy: "layerfs commit", Comment: message})
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	manifest := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		Config: v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromBytes(cfgBytes), Size: int64(len(cfgBytes))}}
	rec := &Image{ID: digest.FromBytes(cfgBytes), Names: []string{name}, Created: now, Source: "commit"}
	for i := len(chain) - 1; i >= 0; i-- {
		l := chain[i]
		desc := v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: l.DiffID, Size: l.TarSize}
		manifest.Layers = append(manifest.Layers, desc)
		rec.Layers = append(rec.Layers, l.ChainID)
		rec.Blobs = append(rec.Blobs, Blob{Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size})
	}
	mBytes, err := json.Marshal(manifest)
	if err != nil {
		return nil, err
	}
	rec.ManifestDigest = digest.FromBytes(mBytes)
	return s.saveImageRecord(rec, mBytes, cfgBytes)
}
