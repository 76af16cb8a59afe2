// Package changes turns a view's upper directory, given the lower layers
// it sits on, into the list of changes it makes (`layerfs diff`) and into
// an OCI layer tar (`layerfs commit`).
//
// The upper is read as kernel overlayfs and the layerfs union read it:
// whiteouts in every format (0/0 character devices, ".wh.NAME" files,
// xattr whiteouts), opaque directories (the opaque xattr in the trusted or
// user namespace, ".wh..wh..opq" files, and a ".wh.NAME" beside an upper
// directory NAME), redirected directories ({trusted,user}.overlay.redirect,
// absolute or relative, as redirect_dir=on and the union's rename write
// them) and metacopy files (their data is read from the lower they point
// to). The lowers are merged with the same rules. The overlay work dir
// is not read, but for the entries of overlayfs's hardlink index (index=on)
// that the caller names in IndexedNames: the names of a lower hardlink
// group that the kernel serves from its index without a link in the upper.
//
// A layer tar cannot express a move, so a redirected directory is written
// with its whole merged content, as an opaque directory where the lowers
// have something at its new path; its old name is a whiteout in the upper
// already. Whiteouts and opaque markers that hide nothing are left out.
//
// Not read: redirects inside the lowers (the store's layer dirs never
// hold them; the union does not follow them either), and the upper's root
// directory itself, which a layer tar does not carry. An opaque marker on
// the upper's root is honoured.
//
// Nothing follows a symlink: directories are opened with O_NOFOLLOW
// relative to their parent's descriptor, objects are lstat'ed, and xattrs
// are read through /proc/self/fd with the L* calls. Memory grows with the
// largest directory and the tree's depth, not with its size (plus one map
// entry per hardlinked file).
package changes

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Kind is a change's letter, as `docker diff` prints it.
type Kind byte

const (
	// Added: the lowers have nothing at the path.
	Added Kind = 'A'
	// Changed: the lowers have the path and the upper replaces or
	// modifies it (a directory holding changes is changed).
	Changed Kind = 'C'
	// Deleted: the path was in the lowers and is gone from the view.
	Deleted Kind = 'D'
)

func (k Kind) String() string { return string(rune(k)) }

// Change is one changed path of the view.
type Change struct {
	Kind Kind
	Path string // absolute in the view: "/etc/passwd"
}

func (c Change) String() string { return c.Kind.String() + " " + c.Path }

// Diff lists the changes the upper makes to the merged lowers (top
// first), sorted by path like `docker diff`. Every object in the upper is
// A or C; a whiteout that hides something is D; under an opaque or
// redirected directory every name the lowers had there and the view no
// longer shows is D, and a redirected directory's content is listed as
// A (or C where the lowers had the same path).
func Diff(ctx context.Context, upper string, lowers []string) ([]Change, error) {
	return DiffWithOptions(ctx, upper, lowers, DiffOptions{})
}

// DiffOptions configure DiffWithOptions.
type DiffOptions struct {
	// IndexedNames are names the view shows that the upper lacks, as
	// WriteOptions.IndexedNames; each is listed as changed, with the
	// directories leading to it.
	IndexedNames map[string]string
}

// DiffWithOptions is Diff with options.
func DiffWithOptions(ctx context.Context, upper string, lowers []string, opts DiffOptions) ([]Change, error) {
	var out []Change
	err := walkWith(ctx, upper, lowers, newExtraNames(opts.IndexedNames), func(ev event) error {
		switch ev.kind {
		case evEntry:
			out = append(out, Change{Kind: ev.change, Path: ev.path})
		case evWhiteout, evHidden:
			out = append(out, Change{Kind: Deleted, Path: ev.path})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("diff %s: %w", upper, err)
	}
	slices.SortFunc(out, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}
