package graph

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/ownertable"
	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// Problem is one thing Check found wrong.
type Problem struct {
	// ID is the layer or image concerned, or a path for leftovers.
	ID     string `json:"id"`
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

func (p Problem) String() string { return fmt.Sprintf("%s %s: %s", p.Kind, p.ID, p.Detail) }

// Problem kinds.
const (
	ProblemLeftover      = "leftover"       // in tmp/, from a dead process
	ProblemOrphan        = "orphan"         // a layer or image dir without a valid record
	ProblemMissingParent = "missing-parent" // a layer whose parent is gone
	ProblemBadChain      = "bad-chain"      // chainID does not derive from parent and diffID
	ProblemCorrupt       = "corrupt"        // export does not reproduce the diffID
	ProblemUnrecorded    = "unrecorded"     // a file in the layer that its tar never had
	ProblemMissingLayer  = "missing-layer"  // an image names a layer that is gone
	// ProblemOwnerTable: the layer's special-owners table is unreadable,
	// or names a path the layer lacks or holds as another type.
	ProblemOwnerTable = "owner-table"
)

// CheckProgress is told about each layer as Check verifies it.
type CheckProgress func(l *Layer, index, total int)

// Check re-verifies the whole store: every layer reassembles to its diffID
// and holds nothing its tar did not, chains and parents are consistent,
// images name existing layers, and no leftovers remain.
func (s *Store) Check(ctx context.Context, progress CheckProgress) ([]Problem, error) {
	var problems []Problem
	left, err := s.leftovers()
	if err != nil {
		return nil, err
	}
	for _, p := range left {
		problems = append(problems, Problem{ID: p, Kind: ProblemLeftover, Detail: "left by a process that died; gc removes it"})
	}
	orphans, err := s.orphanDirs()
	if err != nil {
		return nil, err
	}
	problems = append(problems, orphans...)

	layers, err := s.Layers()
	if err != nil {
		return nil, err
	}
	known := map[digest.Digest]bool{}
	for _, l := range layers {
		known[l.ChainID] = true
	}
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if progress != nil {
			progress(l, i, len(layers))
		}
		id := l.ChainID.String()
		if l.Parent != "" && !known[l.Parent] {
			problems = append(problems, Problem{id, ProblemMissingParent, "parent " + l.Parent.String() + " is not in the store"})
		}
		if want := ChainID(l.Parent, l.DiffID); want != l.ChainID {
			problems = append(problems, Problem{id, ProblemBadChain, "parent and diffID give chainID " + want.String()})
		}
		got, err := s.assemble(ctx, l, io.Discard, true)
		switch {
		case err != nil:
			problems = append(problems, Problem{id, ProblemCorrupt, err.Error()})
		case got != l.DiffID:
			problems = append(problems, Problem{id, ProblemCorrupt, fmt.Sprintf("export hashes to %s, not the diffID %s", got, l.DiffID)})
		}
		extra, err := s.unrecordedFiles(l)
		if err != nil {
			problems = append(problems, Problem{id, ProblemCorrupt, err.Error()})
		}
		for _, e := range extra {
			problems = append(problems, Problem{id, ProblemUnrecorded, e + " is not in the layer's tar"})
		}
		for _, d := range s.checkOwnerTable(l) {
			problems = append(problems, Problem{id, ProblemOwnerTable, d})
		}
	}
	images, err := s.Images()
	if err != nil {
		return nil, err
	}
	for _, img := range images {
		for _, l := range img.Layers {
			if !known[l] {
				problems = append(problems, Problem{img.ID.String(), ProblemMissingLayer, "layer " + l.String() + " is not in the store"})
			}
		}
		if cfg, err := s.ImageConfig(img.ID); err != nil {
			problems = append(problems, Problem{img.ID.String(), ProblemCorrupt, "config: " + err.Error()})
		} else if digest.FromBytes(cfg) != img.ID {
			problems = append(problems, Problem{img.ID.String(), ProblemCorrupt, "config does not hash to the image ID"})
		}
	}
	return problems, nil
}

// orphanDirs finds layer and image directories without a valid record.
func (s *Store) orphanDirs() ([]Problem, error) {
	var out []Problem
	for _, kind := range []struct {
		dir, record string
	}{{layersDir, layerRecord}, {imagesDir, imageRecord}} {
		ents, err := os.ReadDir(filepath.Join(s.root, kind.dir))
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", kind.dir, err)
		}
		for _, e := range ents {
			p := filepath.Join(s.root, kind.dir, e.Name())
			id := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
			var why string
			data, err := os.ReadFile(filepath.Join(p, kind.record))
			var probe struct {
				ChainID digest.Digest `json:"chainID"`
				ID      digest.Digest `json:"id"`
			}
			switch {
			case id.Validate() != nil:
				why = "name is not a digest"
			case err != nil:
				why = "no readable " + kind.record
			case json.Unmarshal(data, &probe) != nil:
				why = kind.record + " is not valid JSON"
			case probe.ChainID != id && probe.ID != id:
				why = kind.record + " names another ID"
			}
			if why != "" {
				out = append(out, Problem{ID: p, Kind: ProblemOrphan, Detail: why + "; gc removes it"})
			}
		}
	}
	return out, nil
}

// unrecordedFiles lists paths in the layer dir that its tar-split record
// does not account for (added behind the store's back).
func (s *Store) unrecordedFiles(l *Layer) ([]string, error) {
	f, err := os.Open(s.tarSplitPath(l.ChainID))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", tarSplitFile, err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", tarSplitFile, err)
	}
	recorded := map[string]bool{".": true}
	up := storage.NewJSONUnpacker(zr)
	for {
		e, err := up.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", tarSplitFile, err)
		}
		if e.Type != storage.FileType {
			continue
		}
		name := path.Clean("/" + e.GetName())[1:]
		dir, base := path.Split(name)
		switch w := whiteout.ClassifyName(base); w.Kind {
		case whiteout.Whiteout:
			name = path.Join(dir, w.Target)
		case whiteout.Opaque, whiteout.Meta:
			name = path.Clean(dir)
		}
		for p := name; p != "." && p != "/" && p != ""; p = path.Dir(p) {
			recorded[p] = true
		}
	}
	var extra []string
	root := s.DiffDir(l.ChainID)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if !recorded[rel] {
			extra = append(extra, rel)
			if d.IsDir() {
				return filepath.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		return extra, fmt.Errorf("walk layer: %w", err)
	}
	return extra, nil
}

// GC removes leftovers of dead processes and directories without a valid
// record, and returns what it removed. Layers nothing uses are kept: they
// may be wanted (rm removes them).
func (s *Store) GC(ctx context.Context) ([]string, error) {
	left, err := s.leftovers()
	if err != nil {
		return nil, err
	}
	if err := s.recover(ctx); err != nil {
		return nil, err
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	orphans, err := s.orphanDirs()
	if err != nil {
		return nil, err
	}
	removed := left
	for _, o := range orphans {
		if !strings.HasPrefix(o.ID, s.root) {
			continue
		}
		if err := os.RemoveAll(o.ID); err != nil {
			return removed, fmt.Errorf("gc: remove %s: %w", o.ID, err)
		}
		removed = append(removed, o.ID)
	}
	return removed, nil
}

// checkOwnerTable checks that every entry of the layer's special-owners
// table names an object of the layer of the type it records.
func (s *Store) checkOwnerTable(l *Layer) []string {
	t, info, err := ownertable.ReadFile(s.OwnerTable(l.ChainID))
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	if info.Torn {
		out = append(out, ownertable.FileName+" ends inside a line")
	}
	diff, err := os.Open(s.DiffDir(l.ChainID))
	if err != nil {
		return append(out, err.Error())
	}
	defer diff.Close()
	paths := make([]string, 0, len(t))
	for p := range t {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		rec := t[p]
		var st unix.Stat_t
		switch err := lstatBeneath(int(diff.Fd()), p, &st); {
		case err != nil:
			out = append(out, fmt.Sprintf("%s names %q, which the layer lacks (%v)", ownertable.FileName, p, err))
		case !ownertable.NeedsTable(st.Mode):
			out = append(out, fmt.Sprintf("%s names %q, which is not a symlink, FIFO or socket in the layer (mode %#o)", ownertable.FileName, p, st.Mode))
		case rec.HasType() && rec.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT:
			out = append(out, fmt.Sprintf("%s records %q as %s, the layer holds mode %#o", ownertable.FileName, p, statoverride.Format(rec), st.Mode))
		}
	}
	return out
}

// lstatBeneath is lstat of name inside the directory dirFd, following no
// symlink on the way.
func lstatBeneath(dirFd int, name string, st *unix.Stat_t) error {
	dir, base := path.Split(name)
	fd := dirFd
	if dir != "" {
		var err error
		fd, err = unix.Openat2(dirFd, dir, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			return err
		}
		defer unix.Close(fd)
	}
	return unix.Fstatat(fd, base, st, unix.AT_SYMLINK_NOFOLLOW)
}
