package changes

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// extraNames are the names of WriteOptions.IndexedNames arranged for the
// walk: which names to add to which directory, and which directories the
// walk must enter (from the lowers, when the upper lacks them) to reach
// them.
type extraNames struct {
	files map[string]map[string]string // dir -> name -> index entry
	dirs  map[string]map[string]bool   // dir -> child dirs leading to files
}

func newExtraNames(names map[string]string) *extraNames {
	if len(names) == 0 {
		return nil
	}
	x := &extraNames{files: map[string]map[string]string{}, dirs: map[string]map[string]bool{}}
	for p, target := range names {
		p = path.Clean("/" + p)
		if p == "/" {
			continue
		}
		dir, name := path.Split(p)
		dir = path.Clean(dir)
		if x.files[dir] == nil {
			x.files[dir] = map[string]string{}
		}
		x.files[dir][name] = target
		for d := dir; d != "/"; d = path.Dir(d) {
			parent, child := path.Dir(d), path.Base(d)
			if x.dirs[parent] == nil {
				x.dirs[parent] = map[string]bool{}
			}
			x.dirs[parent][child] = true
		}
	}
	return x
}

// add adds to entries, the listing of directory n, the indexed names in
// it and the lower directories leading to others. A name the upper holds
// or whites out stays as it is; a lower object listed under the name (in
// a directory written whole) is replaced by the index entry.
func (x *extraNames) add(n *dirNode, entries []dirEntry, whiteouts map[string]bool) ([]dirEntry, error) {
	at := map[string]int{}
	for i, e := range entries {
		at[e.name] = i
	}
	for name, target := range x.files[n.path] {
		i, listed := at[name]
		if whiteouts[name] || listed && entries[i].upper {
			continue
		}
		fd, err := openDirAt(unix.AT_FDCWD, filepath.Dir(target))
		if err != nil {
			return nil, fmt.Errorf("open the index of %s: %w", n.child(name), err)
		}
		n.owned.add(fd)
		e := dirEntry{name: name, dirfd: fd, file: filepath.Base(target), upper: true, indexed: true}
		if err := lstatAt(fd, e.file, &e.st); err != nil {
			return nil, fmt.Errorf("index entry of %s: %w", n.child(name), err)
		}
		if e.st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil, fmt.Errorf("index entry of %s is a directory", n.child(name))
		}
		if listed {
			entries[i] = e
		} else {
			entries = append(entries, e)
		}
	}
	for name := range x.dirs[n.path] {
		if _, listed := at[name]; listed || whiteouts[name] {
			continue
		}
		hit, err := lookupChild(n.content, name, false, nil)
		if err != nil {
			return nil, err
		}
		if !hit.exists || hit.top.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil, errors.New("an indexed name's directory is in no lower layer: " + n.child(name))
		}
		entries = append(entries, dirEntry{name: name, dirfd: hit.topFd, st: hit.top})
	}
	return entries, nil
}
