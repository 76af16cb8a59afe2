package changes

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/ownertable"
	"github.com/layerfs/layerfs/statoverride"
)

// specialOwners finds the records of symlinks, FIFOs and sockets in the
// special-owners tables of the upper and the lowers (WriteOptions). The
// walker hands out an object as a name in an open directory of one layer;
// which layer, and the path there, come from the directory's path
// (/proc/self/fd), asked only for those objects.
type specialOwners struct {
	upperDir string // canonical path
	upper    ownertable.Table
	lowers   []lowerOwners
}

type lowerOwners struct {
	dir, table string // canonical layer path; table file ("" none)
	t          ownertable.Table
	loaded     bool
}

// newSpecialOwners reads the upper's table; the lowers' are read when an
// object of theirs needs them. nil when no table is given.
func newSpecialOwners(upper string, lowers []string, opts WriteOptions) (*specialOwners, error) {
	if opts.UpperOwnerTable == "" && len(opts.LowerOwnerTables) == 0 {
		return nil, nil
	}
	if len(opts.LowerOwnerTables) > len(lowers) {
		return nil, fmt.Errorf("%d lower owner tables for %d lowers", len(opts.LowerOwnerTables), len(lowers))
	}
	s := &specialOwners{}
	var err error
	if s.upperDir, err = canonical(upper); err != nil {
		return nil, err
	}
	if opts.UpperOwnerTable != "" {
		// The union appends to it: a torn last line is a change still
		// being written, left out like the rest of a moving upper.
		if s.upper, _, err = ownertable.ReadFile(opts.UpperOwnerTable); err != nil {
			return nil, err
		}
	}
	for i, table := range opts.LowerOwnerTables {
		if table == "" {
			continue
		}
		dir, err := canonical(lowers[i])
		if err != nil {
			return nil, err
		}
		s.lowers = append(s.lowers, lowerOwners{dir: dir, table: table})
	}
	return s, nil
}

func canonical(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", fmt.Errorf("special owners: %w", err)
	}
	return abs, nil
}

// record returns the record of the object name in directory dirfd, of
// file type ifmt, if a table has one for an object of that type.
func (s *specialOwners) record(dirfd int, name string, ifmt uint32) (statoverride.Stat, bool, error) {
	if s == nil || !ownertable.NeedsTable(ifmt) {
		return statoverride.Stat{}, false, nil
	}
	dir, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(dirfd))
	if err != nil {
		return statoverride.Stat{}, false, fmt.Errorf("special owners: %w", err)
	}
	var rec statoverride.Stat
	var ok bool
	if rel, in := beneath(dir, s.upperDir); in {
		rec, ok = s.upper[joinRel(rel, name)]
	} else {
		for i := range s.lowers {
			l := &s.lowers[i]
			rel, in := beneath(dir, l.dir)
			if !in {
				continue
			}
			if !l.loaded {
				if l.t, _, err = ownertable.ReadFile(l.table); err != nil {
					return statoverride.Stat{}, false, err
				}
				l.loaded = true
			}
			rec, ok = l.t[joinRel(rel, name)]
			break
		}
	}
	if !ok || rec.HasType() && rec.Mode&unix.S_IFMT != ifmt {
		return statoverride.Stat{}, false, nil
	}
	return rec, true, nil
}

// beneath returns p's path relative to dir ("" for dir itself).
func beneath(p, dir string) (string, bool) {
	if p == dir {
		return "", true
	}
	rel, ok := strings.CutPrefix(p, dir+"/")
	return rel, ok
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
