package fusefs

import (
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/whiteout"
)

// Lower hardlink groups. A lower object with st_nlink > 1 has other names;
// the union needs them twice: to count the names the view shows (st_nlink)
// and, at copy-up, to link every visible name to the copy so the upper
// alone describes the view (kernel overlayfs without an index, and a
// commit, read only the upper). A lower layer never changes, so one walk
// per layer finds them all.

// maxGroupNames bounds the names one layer's walk keeps (a layer that
// hardlinks its parent's files has a group per file): past it the layer's
// groups are "unknown" and the union falls back to the lower's st_nlink and
// to its hardlink index.
const maxGroupNames = 1 << 17

// hardlinkGroups maps the inode numbers of a layer's multiply-linked
// non-directories to their paths in the layer.
type hardlinkGroups struct {
	once  sync.Once
	names map[uint64][]string
	ok    bool // false: the walk failed or found too many names
}

// hardlinks returns layer l's groups, walking it on first use.
func (u *union) hardlinks(l *layer) *hardlinkGroups {
	g := &l.groups
	g.once.Do(func() {
		names := map[uint64][]string{}
		total := 0
		err := filepath.WalkDir(l.root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if p != l.root {
					var st unix.Stat_t
					if unix.Lstat(p, &st) == nil && u.isWorkDir(l, st.Ino) {
						return filepath.SkipDir
					}
				}
				return nil
			}
			if whiteout.ClassifyName(d.Name()).Kind != whiteout.None {
				return nil
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil || st.Nlink < 2 || whiteout.IsWhiteoutStat(&st) {
				return nil
			}
			rel, err := filepath.Rel(l.root, p)
			if err != nil {
				return err
			}
			if total++; total > maxGroupNames {
				return errTooManyNames
			}
			names[st.Ino] = append(names[st.Ino], rel)
			return nil
		})
		if err != nil {
			u.log.Warn("hardlink groups of a lower layer unknown", "layer", l.root, "err", err)
			return
		}
		g.names, g.ok = names, true
	})
	return g
}

var errTooManyNames = errors.New("too many hardlinked names")

// visibleGroupNames returns the view paths of the group of lower object
// st (in lower layer li) under which the view shows that same lower object
// (not whited out, not shadowed by the upper or a higher layer): its names
// at their lower paths and under renamed directories. ok says whether the
// group's names are all known (all of them are in layer li).
func (u *union) visibleGroupNames(li int, st *unix.Stat_t) ([]string, bool) {
	g := u.hardlinks(u.lowers[li])
	if !g.ok {
		return nil, false
	}
	names := g.names[st.Ino]
	var vis []string
	var redirects map[string][]string
	for i, p := range names {
		if i == 0 {
			redirects = u.redirectViews()
		}
		// The name at its own path, or under a renamed directory
		// (a directory renamed back redirects to its own path).
		for j, v := range append([]string{p}, redirectedPaths(redirects, p)...) {
			if j > 0 && slices.Contains(vis, v) {
				continue
			}
			f, errno := u.resolvePath(v)
			if errno == 0 && !f.upper && f.lowerLayer == li && f.st.Dev == st.Dev && f.st.Ino == st.Ino {
				vis = append(vis, v)
			}
		}
	}
	return vis, uint64(len(names)) == uint64(st.Nlink)
}

// lowerViewNlink is st_nlink of a lower-only object as the view shows it:
// the lower's count minus the names of its layer the view hides (names in
// other layers cannot be told apart and count as the lower says).
func (u *union) lowerViewNlink(li int, st *unix.Stat_t) uint32 {
	if st.Nlink < 2 {
		return uint32(st.Nlink)
	}
	g := u.hardlinks(u.lowers[li])
	if !g.ok {
		return uint32(st.Nlink)
	}
	vis, _ := u.visibleGroupNames(li, st)
	hidden := uint64(len(g.names[st.Ino]) - len(vis))
	if hidden >= uint64(st.Nlink) {
		return 1
	}
	return uint32(uint64(st.Nlink) - hidden)
}

// viewNlink is lowerViewNlink for node n, remembered until the view's
// names change.
func (n *node) viewNlink(li int, st *unix.Stat_t) uint32 {
	if st.Nlink < 2 {
		return uint32(st.Nlink)
	}
	gen := n.u.viewGen.Load()
	n.mu.Lock()
	if n.x != nil && n.x.nlinkGen == gen+1 {
		v := n.x.nlinkView
		n.mu.Unlock()
		return v
	}
	n.mu.Unlock()
	v := n.u.lowerViewNlink(li, st)
	n.mu.Lock()
	x := n.more()
	x.nlinkGen, x.nlinkView = gen+1, v
	n.mu.Unlock()
	return v
}

// ensureUpperDir makes the view directory rel exist in the upper, copying
// up its missing ancestors and itself with their own metadata, for a copy-up
// that needs it without a node (another name of a hardlink group). It
// returns the directories it created.
func (u *union) ensureUpperDir(rel string, created []string) ([]string, error) {
	if rel == "." || rel == "" {
		return created, nil
	}
	var st unix.Stat_t
	if err := u.upper.lstat(rel, &st); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return created, unix.ENOTDIR
		}
		return created, nil
	}
	parent, _ := splitRel(rel)
	created, err := u.ensureUpperDir(parent, created)
	if err != nil {
		return created, err
	}
	f, errno := u.resolvePath(rel)
	if errno != 0 {
		return created, errno
	}
	if f.st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return created, unix.ENOTDIR
	}
	if f.upper {
		return created, nil
	}
	if len(f.lowerDirs) == 0 {
		return created, unix.EIO
	}
	src := u.lowers[f.lowerDirs[0].layer]
	if err := src.lstat(f.lowerRel, &st); err != nil {
		return created, err
	}
	tmp := u.tmpName()
	if err := unix.Mkdirat(u.workFd, tmp, 0o700); err != nil {
		return created, err
	}
	if err := u.copyMeta(pathRef(src.path(f.lowerRel)), pathRef(u.workPath+"/"+tmp), &st, f.lowerIno); err != nil {
		unix.Unlinkat(u.workFd, tmp, unix.AT_REMOVEDIR)
		return created, err
	}
	if err := unix.Renameat(u.workFd, tmp, u.upper.fd, rel); err != nil {
		unix.Unlinkat(u.workFd, tmp, unix.AT_REMOVEDIR)
		if u.upper.lstat(rel, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return created, nil // made meanwhile through its node
		}
		return created, err
	}
	u.debugf("copy-up dir", "path", rel, "for", "hardlink group")
	return append(created, rel), nil
}

// markUpperDirs tells the nodes of directories copied up by path (if they
// were looked up) that they now have an upper.
func (u *union) markUpperDirs(rels []string) {
	for _, rel := range rels {
		d := u.treeNode(rel)
		if d == nil {
			continue
		}
		d.mu.Lock()
		d.hasUpper = true
		d.mu.Unlock()
		u.notifyAttrs(d)
	}
}

// treeNode returns the node the kernel knows at view path rel, or nil.
func (u *union) treeNode(rel string) *node {
	f, errno := u.resolvePath(rel)
	if errno != 0 {
		return nil
	}
	// The path resolves past a directory the kernel may hold: it
	// stands for the same object (its view inode number) whatever its
	// state says.
	return u.tree.find(u.viewIno(f, rel))
}

// redirectViews maps each lower directory that a redirected upper
// directory shows (overlay.redirect, written by this or an earlier mount,
// or by kernel overlayfs) to the view paths it shows under, so the names
// of a lower hardlink group under renamed directories are found by their
// lower paths. It reads every directory of the upper (upperRedirects), once,
// and again after a directory moves.
func (u *union) redirectViews() map[string][]string {
	if u.upper == nil {
		return nil
	}
	u.redirectMu.Lock()
	defer u.redirectMu.Unlock()
	if !u.redirectsKnown {
		u.redirects = u.upperRedirects()
		u.redirectsKnown = true
	}
	return u.redirects
}

// forgetRedirects drops redirectViews' map: a directory moved, which may
// have added a redirect or moved redirected directories.
func (u *union) forgetRedirects() {
	u.redirectMu.Lock()
	u.redirects, u.redirectsKnown = nil, false
	u.redirectMu.Unlock()
}
