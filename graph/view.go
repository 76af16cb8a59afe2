package graph

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/ownertable"
)

// View is a writable layer on top of a layer chain: an upper and a work
// directory that a mount stacks over the chain's layer dirs
// (views/<id>/view.json, upper/, work/).
type View struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
	// Parent is the chainID of the layer the view sits on.
	Parent digest.Digest `json:"parent"`
	// Image is the image the view was made from, if any.
	Image   digest.Digest `json:"image,omitempty"`
	Created time.Time     `json:"created"`
	// Temporary views are removed when their mount goes (mount --tmp).
	Temporary bool `json:"temporary,omitempty"`
}

const (
	viewsDir   = "views"
	viewRecord = "view.json"
)

func (s *Store) viewDir(id string) string { return filepath.Join(s.root, viewsDir, id) }

// ViewDirs are the directories a mount of v needs.
type ViewDirs struct {
	Lowers      []string // top first
	Upper, Work string
	// LowerOwnerTables are the special-owners tables of Lowers (same
	// order; a file may be absent: no entries), UpperOwnerTable the
	// upper's (in the work dir, so it goes when the view is reset): see
	// package ownertable and fusefs.Options.
	LowerOwnerTables []string
	UpperOwnerTable  string
}

// Dirs returns the lowers, upper and work dir of v.
func (s *Store) Dirs(v *View) (ViewDirs, error) {
	d := ViewDirs{Upper: filepath.Join(s.viewDir(v.ID), "upper"), Work: filepath.Join(s.viewDir(v.ID), "work")}
	d.UpperOwnerTable = filepath.Join(d.Work, ownertable.FileName)
	if err := s.addChain(&d, v.Parent); err != nil {
		return ViewDirs{}, fmt.Errorf("view %s: %w", v.ID, err)
	}
	return d, nil
}

// LayerDirs returns the lowers of a read-only mount of layer id and its
// ancestors.
func (s *Store) LayerDirs(id digest.Digest) (ViewDirs, error) {
	var d ViewDirs
	if err := s.addChain(&d, id); err != nil {
		return ViewDirs{}, err
	}
	return d, nil
}

// addChain appends the layer dirs (and tables) of id and its ancestors.
func (s *Store) addChain(d *ViewDirs, id digest.Digest) error {
	chain, err := s.Chain(id)
	if err != nil {
		return err
	}
	for _, l := range chain {
		d.Lowers = append(d.Lowers, s.DiffDir(l.ChainID))
		d.LowerOwnerTables = append(d.LowerOwnerTables, s.OwnerTable(l.ChainID))
	}
	return nil
}

// ReadOnly turns a view's dirs into those of a read-only mount: the upper
// becomes the top lower, its table the top lower's.
func (d ViewDirs) ReadOnly() ViewDirs {
	ro := ViewDirs{
		Lowers:           append([]string{d.Upper}, d.Lowers...),
		LowerOwnerTables: append([]string{d.UpperOwnerTable}, d.LowerOwnerTables...),
	}
	return ro
}

// ResolveBase finds what a view can be made from: an image (by name or
// ID) or a layer (by chainID or prefix). Images win on exact names.
func (s *Store) ResolveBase(ref string) (layer digest.Digest, image digest.Digest, err error) {
	img, ierr := s.Image(ref)
	if ierr == nil && img.HasName(ref) {
		return img.Top(), img.ID, nil
	}
	l, lerr := s.Layer(ref)
	switch {
	case ierr == nil && lerr == nil:
		return "", "", fmt.Errorf("%q names both image %s and layer %s; give more of the ID", ref, img.ID, l.ChainID)
	case ierr == nil:
		return img.Top(), img.ID, nil
	case lerr == nil:
		return l.ChainID, "", nil
	case errors.Is(lerr, ErrNotFound) && errors.Is(ierr, ErrNotFound):
		return "", "", fmt.Errorf("%q: no image or layer has that name or ID: %w", ref, ErrNotFound)
	case !errors.Is(lerr, ErrNotFound):
		return "", "", lerr
	}
	return "", "", ierr
}

// CreateViewOptions tune CreateView.
type CreateViewOptions struct {
	Name      string
	Temporary bool
}

// CreateView makes an empty writable view on top of an image or layer.
func (s *Store) CreateView(ctx context.Context, ref string, opts CreateViewOptions) (*View, error) {
	layer, image, err := s.ResolveBase(ref)
	if err != nil {
		return nil, fmt.Errorf("create view: %w", err)
	}
	if layer == "" {
		return nil, fmt.Errorf("create view: image %s has no layers", image)
	}
	if opts.Name != "" {
		if strings.ContainsAny(opts.Name, "/ \t\n\x00") {
			return nil, fmt.Errorf("create view: name %q has a slash or white space", opts.Name)
		}
	}
	var rnd [32]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("create view: %w", err)
	}
	v := &View{ID: hex.EncodeToString(rnd[:]), Name: opts.Name, Parent: layer, Image: image,
		Created: time.Now().UTC(), Temporary: opts.Temporary}

	st, err := s.newStaging("view")
	if err != nil {
		return nil, err
	}
	defer st.discard()
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(st.dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("create view: %w", err)
		}
	}
	if err := s.writeRecordFile(filepath.Join(st.dir, viewRecord), v); err != nil {
		return nil, err
	}
	if err := syncDir(st.dir); err != nil {
		return nil, err
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := s.readLayer(layer); err != nil {
		return nil, fmt.Errorf("create view: layer %s was removed meanwhile", layer)
	}
	if opts.Name != "" {
		if other, err := s.viewByName(opts.Name); err == nil {
			return nil, fmt.Errorf("create view: the name %q is taken by view %s", opts.Name, other.ID)
		}
	}
	if err := os.MkdirAll(filepath.Join(s.root, viewsDir), 0o700); err != nil {
		return nil, fmt.Errorf("create view: %w", err)
	}
	if err := os.Rename(st.dir, s.viewDir(v.ID)); err != nil {
		return nil, fmt.Errorf("create view: %w", err)
	}
	st.committed()
	s.log.Info("created view", "id", v.ID, "parent", layer)
	return v, syncDir(filepath.Join(s.root, viewsDir))
}

func (s *Store) readView(id string) (*View, error) {
	return readRecord[View]("view", id, filepath.Join(s.viewDir(id), viewRecord))
}

// Views returns every view, oldest first.
func (s *Store) Views() ([]*View, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, viewsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list views: %w", err)
	}
	var out []*View
	for _, e := range ents {
		v, err := s.readView(e.Name())
		if err != nil {
			continue
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

func (s *Store) viewByName(name string) (*View, error) {
	views, err := s.Views()
	if err != nil {
		return nil, err
	}
	for _, v := range views {
		if v.Name == name {
			return v, nil
		}
	}
	return nil, fmt.Errorf("view %q: %w", name, ErrNotFound)
}

// View finds a view by name, ID or unique ID prefix.
func (s *Store) View(ref string) (*View, error) {
	if v, err := s.viewByName(ref); err == nil {
		return v, nil
	}
	views, err := s.Views()
	if err != nil {
		return nil, err
	}
	ids := make([]digest.Digest, len(views))
	for i, v := range views {
		ids[i] = digest.NewDigestFromEncoded(digest.SHA256, v.ID)
	}
	id, err := resolvePrefix("view", ref, ids)
	if err != nil {
		return nil, err
	}
	return s.readView(id.Encoded())
}

// DeleteView removes a view and its upper, unless it is mounted.
func (s *Store) DeleteView(ctx context.Context, ref string) (*View, error) {
	v, err := s.View(ref)
	if err != nil {
		return nil, err
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	mounts, err := s.Mounts()
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		if m.View == v.ID {
			return nil, fmt.Errorf("view %s is mounted at %s; unmount it first (layerfs umount %s)", v.ID[:12], m.Target, m.Target)
		}
	}
	if err := s.removeDirLocked(s.viewDir(v.ID)); err != nil {
		return nil, fmt.Errorf("remove view %s: %w", v.ID, err)
	}
	s.log.Info("removed view", "id", v.ID)
	return v, nil
}

// removeDirLocked renames dir into tmp/ (it vanishes in one step) and
// deletes it there. Callers hold the store lock.
func (s *Store) removeDirLocked(dir string) error {
	trash, err := os.MkdirTemp(s.tmpDir(), "trash-")
	if err != nil {
		return err
	}
	if err := os.Rename(dir, filepath.Join(trash, "x")); err != nil {
		os.Remove(trash)
		return err
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	return os.RemoveAll(trash)
}

// viewUsers lists the views that sit on layer id.
func (s *Store) viewUsers(id digest.Digest) ([]string, error) {
	views, err := s.Views()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, v := range views {
		if v.Parent == id {
			name := v.ID[:12]
			if v.Name != "" {
				name = v.Name
			}
			out = append(out, "view "+name)
		}
	}
	return out, nil
}
