package ociimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// source is where the members of an image live: a directory or a tar file.
// Member names are slash-separated and relative to the root.
type source interface {
	// open returns the member's content. The reader is safe for concurrent
	// ReadAt calls; close releases it.
	open(name string) (content member, err error)
	close() error
}

type member struct {
	r    io.ReaderAt
	size int64
	// closer is nil when the member shares the source's file.
	closer io.Closer
}

func (m member) close() error {
	if m.closer == nil {
		return nil
	}
	return m.closer.Close()
}

// cleanMember turns a name found in an index or manifest.json into a member
// name, refusing names that leave the root.
func cleanMember(name string) (string, error) {
	n := path.Clean(name)
	if name == "" || path.IsAbs(n) || n == "." || n == ".." || strings.HasPrefix(n, "../") {
		return "", corrupt("member name %q is not a plain relative path", name)
	}
	return n, nil
}

// dirSource serves members from a directory through os.Root, so symlinks
// inside the layout cannot lead outside it.
type dirSource struct {
	root *os.Root
}

func openDirSource(dir string) (*dirSource, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &dirSource{root: root}, nil
}

func (d *dirSource) open(name string) (member, error) {
	n, err := cleanMember(name)
	if err != nil {
		return member{}, err
	}
	f, err := d.root.Open(n)
	if err != nil {
		return member{}, unwrapPathError(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return member{}, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return member{}, corrupt("not a regular file (%s)", fi.Mode().Type())
	}
	return member{r: f, size: fi.Size(), closer: f}, nil
}

func (d *dirSource) close() error { return d.root.Close() }

// unwrapPathError drops the *PathError around err: callers name the member
// themselves and the root-relative path would say it twice.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// tarEntry is one member of an indexed tar: either data at an offset or a
// link to another member.
type tarEntry struct {
	offset, size int64
	// symlink is the target of a symlink member, relative to its directory.
	symlink string
	// hardlink is the archive path of the member a hardlink names.
	hardlink string
	isLink   bool
}

// tarSource serves the members of an uncompressed tar file from an index
// built once, through io.SectionReader: nothing is extracted.
type tarSource struct {
	f       *os.File
	entries map[string]tarEntry
}

// maxLinkHops bounds link chains so a cycle of links is an error, not a hang.
const maxLinkHops = 40

func openTarSource(f *os.File) (*tarSource, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var magic [6]byte
	if n, _ := f.ReadAt(magic[:], 0); n >= 2 {
		if c := sniffCompression(magic[:n]); c != "" {
			return nil, unsupported("the archive is %s-compressed; decompress it first", c)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	ts := &tarSource{f: f, entries: map[string]tarEntry{}}
	tr := tar.NewReader(f)
	headers := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if headers == 0 {
				return nil, fmt.Errorf("%w: reading tar: %v", ErrNotImage, err)
			}
			return nil, corrupt("corrupt or truncated tar after %d members: %v", headers, err)
		}
		headers++
		name, err := cleanMember(hdr.Name)
		if err != nil {
			// A member we could never be asked for by a valid name: a
			// directory entry "./" or an odd name; skip it, lookups of
			// names that matter go through cleanMember too.
			continue
		}
		if isPAXSparse(hdr) {
			// archive/tar has read the sparse map out of the data, so the
			// data is not hdr.Size bytes at the current offset.
			ts.entries[name] = tarEntry{size: -1}
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeReg: // archive/tar reports the old TypeRegA as TypeReg
			// archive/tar leaves the file positioned at the member's data:
			// it reads headers block by block and seeks over data.
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				return nil, err
			}
			if off+hdr.Size > fi.Size() {
				return nil, corrupt("%s: truncated tar: member of %d bytes at offset %d, file is %d bytes", name, hdr.Size, off, fi.Size())
			}
			ts.entries[name] = tarEntry{offset: off, size: hdr.Size}
		case tar.TypeSymlink:
			ts.entries[name] = tarEntry{symlink: hdr.Linkname, isLink: true}
		case tar.TypeLink:
			ts.entries[name] = tarEntry{hardlink: hdr.Linkname, isLink: true}
		case tar.TypeGNUSparse:
			ts.entries[name] = tarEntry{size: -1}
		default:
			// Directories and the rest are not content we serve; a later
			// non-file member shadows an earlier file of the same name, as
			// it would on extraction.
			delete(ts.entries, name)
		}
	}
	if len(ts.entries) == 0 {
		return nil, fmt.Errorf("%w: the tar holds no files", ErrNotImage)
	}
	return ts, nil
}

func isPAXSparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// resolve follows symlink and hardlink members (docker save links duplicate
// layers) to the member that holds the data.
func (t *tarSource) resolve(name string) (tarEntry, error) {
	cur := name
	for hop := 0; ; hop++ {
		e, ok := t.entries[cur]
		if !ok {
			if cur != name {
				return tarEntry{}, kindError{kind: ErrCorrupt, cause: fs.ErrNotExist, msg: fmt.Sprintf("link target %s does not exist", cur)}
			}
			return tarEntry{}, fs.ErrNotExist
		}
		if e.size < 0 {
			return tarEntry{}, unsupported("%s is a sparse tar member", cur)
		}
		if !e.isLink {
			return e, nil
		}
		if hop >= maxLinkHops {
			return tarEntry{}, corrupt("too many levels of links")
		}
		var target string
		if e.symlink != "" {
			if path.IsAbs(e.symlink) {
				return tarEntry{}, corrupt("symlink %s -> %s points outside the archive", cur, e.symlink)
			}
			target = path.Join(path.Dir(cur), e.symlink)
		} else {
			if path.IsAbs(e.hardlink) {
				return tarEntry{}, corrupt("hardlink %s -> %s points outside the archive", cur, e.hardlink)
			}
			target = path.Clean(strings.TrimPrefix(e.hardlink, "./"))
		}
		if target == ".." || strings.HasPrefix(target, "../") || target == "." {
			kind := "symlink"
			if e.symlink == "" {
				kind = "hardlink"
			}
			return tarEntry{}, corrupt("%s %s -> %s points outside the archive", kind, cur, e.symlink+e.hardlink)
		}
		cur = target
	}
}

func (t *tarSource) open(name string) (member, error) {
	n, err := cleanMember(name)
	if err != nil {
		return member{}, err
	}
	e, err := t.resolve(n)
	if err != nil {
		return member{}, err
	}
	return member{r: io.NewSectionReader(t.f, e.offset, e.size), size: e.size}, nil
}

func (t *tarSource) has(name string) bool {
	_, err := t.resolve(name)
	return err == nil
}

func (t *tarSource) close() error { return t.f.Close() }

// sniffCompression names the compression of data from its first bytes, ""
// for none recognised.
func sniffCompression(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return "gzip"
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd"
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return "xz"
	case bytes.HasPrefix(head, []byte("BZh")):
		return "bzip2"
	}
	return ""
}
