package changes

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/whiteout"
)

// eventKind is what the walker reports.
type eventKind int

const (
	// evEntry: an object of the merged view that the layer must carry.
	evEntry eventKind = iota
	// evWhiteout: the layer hides a name the lowers hold (".wh.NAME").
	evWhiteout
	// evOpaque: the directory hides everything the lowers hold in it.
	evOpaque
	// evHidden: a name the lowers hold that an opaque or redirected
	// directory above it hides; the tar needs nothing for it.
	evHidden
)

type event struct {
	kind eventKind
	path string // "/a/b"; for evOpaque the directory
	// evEntry only:
	change Kind
	dirfd  int // the directory holding the object (upper or lower)
	name   string
	st     *unix.Stat_t
	// metacopy, for an upper file whose data overlayfs (metacopy=on)
	// left in a lower: that lower file.
	metacopy *lowerHit
	// indexed: a name the upper lacks, shown from an index entry
	// (WriteOptions.IndexedNames); dirfd and name are the entry's.
	indexed bool
}

// dirNode is one directory of the merged view being walked.
type dirNode struct {
	path    string // "/" for the root
	upperFd int    // -1: the directory has no upper object
	// atPath: the merged lower directories at this same path, for the
	// A/C/D decisions (what did the lowers show here?).
	atPath []lowerDir
	// content: the merged lower directories whose entries show through
	// this directory in the view (differs from atPath under a redirect,
	// and is empty under an opaque directory).
	content []lowerDir
	// covered: the layer tar hides the lowers at this path (this or an
	// ancestor directory is written opaque), so the tar must carry the
	// full merged content and no whiteouts are needed.
	covered bool
	// owned are the descriptors opened for this directory.
	owned fdSet
}

func (n *dirNode) child(name string) string {
	if n.path == "/" {
		return "/" + name
	}
	return n.path + "/" + name
}

// walker reports the changes of an upper over its lowers, in a
// deterministic order: within a directory, the opaque marker, then the
// whiteouts and hidden names, then the entries by name, each directory
// followed at once by its contents.
type walker struct {
	ctx   context.Context
	roots []lowerDir // every lower layer's root, top first
	emit  func(event) error
	extra *extraNames // names the upper lacks (indexed.go); nil: none
}

func walk(ctx context.Context, upper string, lowers []string, emit func(event) error) error {
	return walkWith(ctx, upper, lowers, nil, emit)
}

func walkWith(ctx context.Context, upper string, lowers []string, extra *extraNames, emit func(event) error) error {
	w := &walker{ctx: ctx, emit: emit, extra: extra}
	var rootFds fdSet
	defer rootFds.closeAll()
	for i, l := range lowers {
		fd, err := unix.Open(l, dirOpenFlags, 0)
		if err != nil {
			return fmt.Errorf("open lower %s: %w", l, err)
		}
		rootFds.add(fd)
		w.roots = append(w.roots, lowerDir{layer: i, fd: fd})
	}
	ufd, err := unix.Open(upper, dirOpenFlags, 0)
	if err != nil {
		return fmt.Errorf("open upper %s: %w", upper, err)
	}
	root := &dirNode{path: "/", upperFd: ufd, atPath: w.roots, content: w.roots}
	root.owned.add(ufd)
	defer root.owned.closeAll()
	// Neither overlayfs nor the union makes the root opaque, but a
	// directory prepared by another tool may carry the marker.
	opaque, err := isOpaqueDir(ufd)
	if err != nil {
		return fmt.Errorf("upper %s: %w", upper, err)
	}
	if opaque {
		root.content, root.covered = nil, true
		if len(lowers) > 0 {
			if err := emit(event{kind: evOpaque, path: "/"}); err != nil {
				return err
			}
		}
	}
	return w.dir(root)
}

// dir reports everything below n (n itself was reported by its parent).
func (w *walker) dir(n *dirNode) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	var entries []dirEntry
	whiteouts := map[string]bool{}
	present := map[string]bool{}
	if n.upperFd >= 0 {
		l, err := listLayerDir(n.upperFd, true)
		if err != nil {
			return fmt.Errorf("list upper %s: %w", n.path, err)
		}
		entries, whiteouts = l.data, l.whiteouts
		for _, e := range entries {
			present[e.name] = true
		}
	}
	if n.covered && len(n.content) > 0 {
		lower, err := mergedLowerListing(n.content, func(name string) bool { return present[name] || whiteouts[name] })
		if err != nil {
			return fmt.Errorf("list lowers of %s: %w", n.path, err)
		}
		for _, e := range lower {
			present[e.name] = true
		}
		entries = append(entries, lower...)
	}
	if w.extra != nil {
		var err error
		if entries, err = w.extra.add(n, entries, whiteouts); err != nil {
			return fmt.Errorf("%s: %w", n.path, err)
		}
	}
	slices.SortFunc(entries, func(a, b dirEntry) int { return strings.Compare(a.name, b.name) })

	if n.covered {
		if len(n.atPath) > 0 {
			hidden, err := mergedLowerListing(n.atPath, func(name string) bool { return present[name] })
			if err != nil {
				return fmt.Errorf("list lowers of %s: %w", n.path, err)
			}
			slices.SortFunc(hidden, func(a, b dirEntry) int { return strings.Compare(a.name, b.name) })
			for _, h := range hidden {
				if err := w.emit(event{kind: evHidden, path: n.child(h.name)}); err != nil {
					return err
				}
			}
		}
	} else {
		names := make([]string, 0, len(whiteouts))
		for name := range whiteouts {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if present[name] {
				continue
			}
			hit, err := lookupChild(n.content, name, false, nil)
			if err != nil {
				return fmt.Errorf("%s: %w", n.child(name), err)
			}
			// A whiteout hiding nothing is no change.
			if !hit.exists {
				continue
			}
			if err := w.emit(event{kind: evWhiteout, path: n.child(name)}); err != nil {
				return err
			}
		}
	}

	for i := range entries {
		if err := w.entry(n, &entries[i], whiteouts[entries[i].name]); err != nil {
			return err
		}
	}
	return nil
}

// entry reports one object of directory n and, for a directory, its
// contents.
func (w *walker) entry(n *dirNode, e *dirEntry, upperWhiteout bool) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	p := n.child(e.name)
	isDir := e.st.Mode&unix.S_IFMT == unix.S_IFDIR
	var child dirNode
	defer child.owned.closeAll()
	at, err := lookupChild(n.atPath, e.name, isDir, &child.owned)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	ev := event{kind: evEntry, path: p, change: Added, dirfd: e.dirfd, name: e.object(), st: &e.st, indexed: e.indexed}
	if at.exists {
		ev.change = Changed
	}
	if e.upper && e.st.Mode&unix.S_IFMT == unix.S_IFREG && hasOverlayXattr(procPath(e.dirfd, e.object()), "metacopy") {
		src, err := w.metacopySource(n, e, &child.owned)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		ev.metacopy = src
	}
	if !isDir {
		return w.emit(ev)
	}

	child.path, child.upperFd, child.atPath = p, -1, at.dirs
	child.covered = n.covered
	opaque, redirected, redirect := false, false, ""
	if e.upper {
		fd, err := openDirAt(e.dirfd, e.name)
		if err != nil {
			return fmt.Errorf("open upper dir %s: %w", p, err)
		}
		child.owned.add(fd)
		child.upperFd = fd
		if opaque, err = isOpaqueDir(fd); err != nil {
			return fmt.Errorf("upper dir %s: %w", p, err)
		}
		// ".wh.NAME" beside an upper directory NAME: it replaced the
		// lowers' NAME rather than merging with it.
		opaque = opaque || upperWhiteout
		if !opaque {
			redirect, redirected = overlayXattr(procPath(e.dirfd, e.name), "redirect")
			redirected = redirected && redirect != ""
		}
		child.covered = n.covered || opaque || redirected
	}
	switch {
	case opaque:
	case redirected:
		base := n.content
		if strings.HasPrefix(redirect, "/") {
			base = w.roots
		}
		if child.content, err = lookupPath(base, redirect, &child.owned); err != nil {
			return fmt.Errorf("%s: follow redirect %q: %w", p, redirect, err)
		}
	case !n.covered:
		// Not covered: the content at this path is what the lowers show.
		child.content = child.atPath
	default:
		hit, err := lookupChild(n.content, e.name, true, &child.owned)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		child.content = hit.dirs
	}
	if err := w.emit(ev); err != nil {
		return err
	}
	if (opaque || redirected) && !n.covered && len(child.atPath) > 0 {
		if err := w.emit(event{kind: evOpaque, path: p}); err != nil {
			return err
		}
	}
	return w.dir(&child)
}

// metacopySource finds where a metacopy upper file (overlayfs metacopy=on:
// only its metadata was copied up) keeps its data: the absolute path in
// its redirect xattr, or the same name in the lowers.
func (w *walker) metacopySource(n *dirNode, e *dirEntry, owned *fdSet) (*lowerHit, error) {
	dirs, name := n.content, e.name
	if r, ok := overlayXattr(procPath(e.dirfd, e.name), "redirect"); ok && r != "" {
		base := n.content
		if strings.HasPrefix(r, "/") {
			base = w.roots
		}
		parent, last := "", r
		if i := strings.LastIndexByte(r, '/'); i >= 0 {
			parent, last = r[:i], r[i+1:]
		}
		var err error
		if dirs, err = lookupPath(base, parent, owned); err != nil {
			return nil, err
		}
		name = last
	}
	hit, err := lookupChild(dirs, name, false, nil)
	if err != nil {
		return nil, err
	}
	if !hit.exists || hit.top.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, errors.New("metacopy file whose data is in no lower layer")
	}
	return &hit, nil
}

// overlayXattr reads overlay.SUFFIX from the trusted namespace, then the
// user one, without following a symlink at p.
func overlayXattr(p, suffix string) (string, bool) {
	for _, ns := range whiteout.Namespaces() {
		if v, err := getXattr(p, ns.OverlayPrefix()+suffix); err == nil {
			return string(v), true
		}
	}
	return "", false
}

func hasOverlayXattr(p, suffix string) bool {
	_, ok := overlayXattr(p, suffix)
	return ok
}
