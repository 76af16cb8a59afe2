package apply

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/whiteout"
)

// cleanName turns a tar name into the path it names beneath the layer,
// "" for the layer root itself. "./x", "x" and "x/" are the same name.
// It refuses what could leave the layer or confuse a union reader: absolute
// names, ".." anywhere, NUL bytes, empty names, and whiteout-looking names
// used as a directory on the way.
func cleanName(raw string) (string, error) {
	switch {
	case raw == "":
		return "", fmt.Errorf("empty name: %w", ErrUnsafeName)
	case strings.IndexByte(raw, 0) >= 0:
		return "", fmt.Errorf("NUL byte in name: %w", ErrUnsafeName)
	case raw[0] == '/':
		return "", fmt.Errorf("absolute name: %w", ErrUnsafeName)
	}
	// Most names are already clean; check without allocating.
	clean := true
	for i := 0; i < len(raw); {
		j := strings.IndexByte(raw[i:], '/')
		if j < 0 {
			j = len(raw)
		} else {
			j += i
		}
		comp := raw[i:j]
		switch {
		case comp == "..":
			return "", fmt.Errorf("%q component: %w", "..", ErrUnsafeName)
		case comp == "" || comp == ".":
			clean = false
		}
		if j == len(raw)-1 {
			clean = false // trailing slash
		}
		i = j + 1
	}
	name := raw
	if !clean {
		var b strings.Builder
		b.Grow(len(raw))
		for _, c := range strings.Split(raw, "/") {
			if c == "" || c == "." {
				continue
			}
			if b.Len() > 0 {
				b.WriteByte('/')
			}
			b.WriteString(c)
		}
		name = b.String()
	}
	// A directory named like a whiteout would read as one to a union.
	parent, _ := splitName(name)
	if strings.HasPrefix(parent, whiteout.Prefix) || strings.Contains(parent, "/"+whiteout.Prefix) {
		return "", fmt.Errorf("whiteout name used as a directory: %w", ErrUnsafeName)
	}
	return name, nil
}

// splitName splits a cleaned name into its parent ("" for the root) and
// its last component.
func splitName(name string) (parent, base string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}

func joinName(parent, base string) string {
	if parent == "" {
		return base
	}
	return parent + "/" + base
}

// openBeneath opens the directory path under dirfd without following any
// symlink (the final component included) and without leaving dirfd.
func openBeneath(dirfd int, path string) (int, error) {
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for tries := 0; ; tries++ {
		fd, err := unix.Openat2(dirfd, path, &how)
		// EAGAIN: a concurrent rename somewhere on the system made the
		// kernel unsure the walk stayed beneath; retrying is correct.
		if err == unix.EAGAIN && tries < 16 {
			continue
		}
		return fd, err
	}
}

// resolveErr explains the errors openBeneath gives for a hostile layout.
func resolveErr(err error) error {
	switch err {
	case unix.ELOOP:
		return fmt.Errorf("path passes through a symlink: %w", ErrUnsafeName)
	case unix.EXDEV:
		return fmt.Errorf("path leaves the layer: %w", ErrUnsafeName)
	case unix.ENOTDIR:
		return fmt.Errorf("a parent is not a directory: %w", err)
	case unix.ENOSYS:
		return fmt.Errorf("openat2 is missing (needs Linux >= 5.6): %w", err)
	}
	return err
}
