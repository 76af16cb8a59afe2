package changes

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/whiteout"
)

// lowerDir is one lower layer's directory taking part in a merged directory.
type lowerDir struct {
	layer int
	fd    int // O_RDONLY|O_DIRECTORY, opened without following symlinks
}

// fdSet closes the descriptors a directory node opened, once it is done.
type fdSet []int

func (s *fdSet) add(fd int) { *s = append(*s, fd) }

func (s *fdSet) closeAll() {
	for _, fd := range *s {
		unix.Close(fd)
	}
	*s = nil
}

const dirOpenFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC

func openDirAt(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, dirOpenFlags, 0)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

func lstatAt(dirfd int, name string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, unix.AT_SYMLINK_NOFOLLOW)
		if err == unix.EINTR {
			continue
		}
		return err
	}
}

// procPath names an entry of an open directory for the calls that have no
// *at form (xattrs). The directory was opened without following symlinks
// and the L* calls do not follow name itself.
func procPath(dirfd int, name string) string {
	return fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name)
}

// lowerHit is what the merged lowers hold at one name.
type lowerHit struct {
	exists bool
	// topFd and top are the parent directory and stat of the topmost
	// object, when it exists.
	topFd   int
	topName string
	top     unix.Stat_t
	// dirs are the lower directories merged at the name, top first, when
	// the topmost object is a directory and they were asked for.
	dirs []lowerDir
}

// lookupChild resolves name in the merged lower directory dirs with
// overlayfs's rules: the topmost object wins; a whiteout (in any format),
// a non-directory below a directory, or an opaque directory ends the
// merge. With openDirs, the directories merged at name are opened and
// their descriptors added to owned.
func lookupChild(dirs []lowerDir, name string, openDirs bool, owned *fdSet) (lowerHit, error) {
	var hit lowerHit
	for _, d := range dirs {
		var st unix.Stat_t
		err := lstatAt(d.fd, name, &st)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			if hasEntry(d.fd, whiteout.Prefix+name) {
				break
			}
			continue
		}
		if err != nil {
			return hit, fmt.Errorf("lstat lower %d %s: %w", d.layer, name, err)
		}
		if whiteout.Classify(d.fd, name, &st).Kind == whiteout.Whiteout {
			break
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if !hit.exists {
			hit.exists, hit.topFd, hit.topName, hit.top = true, d.fd, name, st
			if !isDir || !openDirs {
				break
			}
		} else if !isDir {
			break
		}
		fd, err := openDirAt(d.fd, name)
		if err != nil {
			return hit, fmt.Errorf("open lower %d dir %s: %w", d.layer, name, err)
		}
		owned.add(fd)
		hit.dirs = append(hit.dirs, lowerDir{layer: d.layer, fd: fd})
		opaque, err := isOpaqueDir(fd)
		if err != nil {
			return hit, fmt.Errorf("lower %d dir %s: %w", d.layer, name, err)
		}
		if opaque {
			break
		}
	}
	return hit, nil
}

// lookupPath resolves a slash-separated path below the merged directory
// dirs, component by component. Only the directories of the last component
// are returned (opened into owned); intermediate ones are closed.
func lookupPath(dirs []lowerDir, p string, owned *fdSet) ([]lowerDir, error) {
	cur := dirs
	var tmp fdSet
	defer func() { tmp.closeAll() }()
	for _, comp := range strings.Split(path.Clean("/" + p)[1:], "/") {
		if comp == "" {
			continue
		}
		var next fdSet
		hit, err := lookupChild(cur, comp, true, &next)
		tmp.closeAll()
		tmp = next
		if err != nil {
			return nil, err
		}
		if !hit.exists || len(hit.dirs) == 0 {
			return nil, nil
		}
		cur = hit.dirs
	}
	if len(tmp) == 0 {
		// The path named the root itself: hand out fresh descriptors.
		out := make([]lowerDir, 0, len(cur))
		for _, d := range cur {
			fd, err := openDirAt(d.fd, ".")
			if err != nil {
				return nil, fmt.Errorf("reopen lower %d root: %w", d.layer, err)
			}
			owned.add(fd)
			out = append(out, lowerDir{layer: d.layer, fd: fd})
		}
		return out, nil
	}
	*owned = append(*owned, tmp...)
	tmp = nil
	return cur, nil
}

// hasEntry reports whether name exists in the directory dirfd.
func hasEntry(dirfd int, name string) bool {
	var st unix.Stat_t
	return lstatAt(dirfd, name, &st) == nil
}

// isOpaqueDir reports whether an open directory is opaque in any format:
// the opaque xattr of either namespace, or the OCI marker file inside it.
func isOpaqueDir(fd int) (bool, error) {
	ok, err := whiteout.IsOpaqueFd(fd)
	if err != nil || ok {
		return ok, err
	}
	return hasEntry(fd, whiteout.OpaqueMarker), nil
}

// readNames lists an open directory without disturbing fd's offset.
func readNames(fd int) ([]string, error) {
	dup, err := openDirAt(fd, ".")
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), ".")
	defer f.Close()
	return f.Readdirnames(-1)
}

// dirEntry is one name of a directory as a layer holds it.
type dirEntry struct {
	name  string
	dirfd int // the directory holding it (an upper or lower dir)
	st    unix.Stat_t
	upper bool
	// indexed: an index entry shown under this name (extraNames), file
	// its name in dirfd.
	indexed bool
	file    string
}

// object is the entry's name in dirfd.
func (e *dirEntry) object() string {
	if e.file != "" {
		return e.file
	}
	return e.name
}

// layerListing is one directory of one layer, split by meaning.
type layerListing struct {
	data []dirEntry
	// whiteouts are the names hidden from the layers below. A name may
	// be in data too: the object wins in its own layer (OCI whiteouts
	// only hide what is below) but does not merge with the lowers.
	whiteouts map[string]bool
}

// listLayerDir reads a directory of one layer and classifies every entry
// with whiteout.Classify.
func listLayerDir(fd int, upper bool) (layerListing, error) {
	names, err := readNames(fd)
	if err != nil {
		return layerListing{}, err
	}
	l := layerListing{whiteouts: map[string]bool{}}
	for _, name := range names {
		switch e := whiteout.ClassifyName(name); e.Kind {
		case whiteout.Whiteout:
			l.whiteouts[e.Target] = true
			continue
		case whiteout.Opaque, whiteout.Meta:
			// The marker is read by isOpaqueDir; Meta is bookkeeping.
			continue
		}
		var st unix.Stat_t
		if err := lstatAt(fd, name, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed while listing
			}
			return layerListing{}, fmt.Errorf("lstat %s: %w", name, err)
		}
		if whiteout.Classify(fd, name, &st).Kind == whiteout.Whiteout {
			l.whiteouts[name] = true
			continue
		}
		l.data = append(l.data, dirEntry{name: name, dirfd: fd, st: st, upper: upper})
	}
	return l, nil
}

// mergedLowerListing lists what the merged lower directory dirs shows: the
// topmost object of every name not hidden by a whiteout above it. skip
// names are left out (they are covered by the upper).
func mergedLowerListing(dirs []lowerDir, skip func(string) bool) ([]dirEntry, error) {
	decided := map[string]bool{}
	var out []dirEntry
	for _, d := range dirs {
		l, err := listLayerDir(d.fd, false)
		if err != nil {
			return nil, fmt.Errorf("list lower %d: %w", d.layer, err)
		}
		for _, e := range l.data {
			if decided[e.name] {
				continue
			}
			decided[e.name] = true
			if !skip(e.name) {
				out = append(out, e)
			}
		}
		for name := range l.whiteouts {
			decided[name] = true
		}
	}
	return out, nil
}
