// Package ownertable reads and writes a special-owners table: the owner,
// group and mode a rootless store keeps for the objects Linux refuses a
// user.* xattr on (symlinks, FIFOs, sockets), so for which the
// user.containers.override_stat record (package statoverride) cannot be
// written on the object itself.
//
// A table is a text file, one entry per line:
//
//	"usr/bin/sh" 0:0:0777:symlink
//	"run/initctl" 0:0:0600:pipe
//
// the object's path relative to the layer root as a Go string literal
// (strconv.Quote, so any byte of a name, newline and invalid UTF-8
// included, round-trips), one space, and its record in the override_stat
// format (statoverride.Format). Lines starting with '#' are comments.
//
// Lines apply in order: a later line for a path replaces an earlier one
// and `"PATH" -` removes it. A layer's table is written compact (sorted by
// path, one line per path; Marshal); the union's table of a view's upper
// is appended to as it changes (AppendSet, AppendRemove) and rewritten
// compact now and then. A last line without its newline is a write that
// a crash cut short: Parse leaves it out and says so (Info.Torn).
package ownertable

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/statoverride"
)

// FileName is the table's name beside a layer's diff directory
// (layers/<hex>/special-owners) and in a view's work directory.
const FileName = "special-owners"

// header opens every compact table, so a reader of the file learns what
// it is.
const header = "# layerfs special owners: \"PATH\" UID:GID:0MODE:TYPE (see package ownertable)\n"

// removed is the record field of a line that removes its path.
const removed = "-"

// Table maps a path relative to the layer root (cleaned, no leading
// slash) to its record.
type Table map[string]statoverride.Stat

// NeedsTable reports whether an object of file type ifmt (S_IFMT bits)
// cannot carry the override_stat xattr and so needs a table entry.
func NeedsTable(ifmt uint32) bool {
	switch ifmt & unix.S_IFMT {
	case unix.S_IFLNK, unix.S_IFIFO, unix.S_IFSOCK:
		return true
	}
	return false
}

// ValidPath reports whether p can be a table key: relative, cleaned,
// not the root, no ".." component, no NUL byte.
func ValidPath(p string) bool {
	if p == "" || p == "." || strings.HasPrefix(p, "/") || strings.IndexByte(p, 0) >= 0 || path.Clean(p) != p {
		return false
	}
	return p != ".." && !strings.HasPrefix(p, "../")
}

// Info describes what Parse read besides the table.
type Info struct {
	// Lines counts the entry lines applied (set and remove); more than
	// len(table) means the file is not compact.
	Lines int
	// Torn: the data ended inside a line, which was left out.
	Torn bool
}

// Parse reads a table. A malformed line is an error naming its number.
func Parse(data []byte) (Table, Info, error) {
	t := Table{}
	var info Info
	for n := 1; len(data) > 0; n++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			info.Torn = true
			break
		}
		line := string(data[:i])
		data = data[i+1:]
		if line == "" || line[0] == '#' {
			continue
		}
		p, rec, err := parseLine(line)
		if err != nil {
			return nil, info, fmt.Errorf("special-owners line %d: %w", n, err)
		}
		info.Lines++
		if rec == nil {
			delete(t, p)
		} else {
			t[p] = *rec
		}
	}
	return t, info, nil
}

func parseLine(line string) (string, *statoverride.Stat, error) {
	quoted, err := strconv.QuotedPrefix(line)
	if err != nil || quoted[0] != '"' {
		return "", nil, fmt.Errorf("%q: want a quoted path first", line)
	}
	p, err := strconv.Unquote(quoted)
	if err != nil {
		return "", nil, fmt.Errorf("%q: %w", line, err)
	}
	if !ValidPath(p) {
		return "", nil, fmt.Errorf("%q: not a clean relative path", p)
	}
	rest, ok := strings.CutPrefix(line[len(quoted):], " ")
	if !ok {
		return "", nil, fmt.Errorf("%q: want one space after the path", line)
	}
	if rest == removed {
		return p, nil, nil
	}
	if strings.ContainsAny(rest, " \t\x00") {
		return "", nil, fmt.Errorf("%q: stray characters after the record", line)
	}
	s, err := statoverride.Parse(rest)
	if err != nil {
		return "", nil, err
	}
	// A mode with bits no type or permission has would not come back
	// from Format: refuse rather than change it silently.
	if back, err := statoverride.Parse(statoverride.Format(s)); err != nil || back != s {
		return "", nil, fmt.Errorf("%q: mode %#o is not a file type and permissions", line, s.Mode)
	}
	return p, &s, nil
}

// Marshal renders t compact: the header, then one line per path, sorted.
// Paths that are not ValidPath are left out (no reader would accept them).
func Marshal(t Table) []byte {
	paths := make([]string, 0, len(t))
	for p := range t {
		if ValidPath(p) {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	b := make([]byte, 0, len(header)+len(paths)*48)
	b = append(b, header...)
	for _, p := range paths {
		b = AppendSet(b, p, t[p])
	}
	return b
}

// AppendSet appends the line that sets p's record.
func AppendSet(b []byte, p string, s statoverride.Stat) []byte {
	b = strconv.AppendQuote(b, p)
	b = append(b, ' ')
	b = append(b, statoverride.Format(s)...)
	return append(b, '\n')
}

// AppendRemove appends the line that removes p.
func AppendRemove(b []byte, p string) []byte {
	b = strconv.AppendQuote(b, p)
	return append(b, " "+removed+"\n"...)
}

// ReadFile reads the table at name; a missing file is an empty table.
func ReadFile(name string) (Table, Info, error) {
	data, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return Table{}, Info{}, nil
	}
	if err != nil {
		return nil, Info{}, fmt.Errorf("read special-owners table: %w", err)
	}
	t, info, err := Parse(data)
	if err != nil {
		return nil, info, fmt.Errorf("%s: %w", name, err)
	}
	return t, info, nil
}

// WriteFile writes t compact to a new file at name (0600). It does not
// sync: it is for a staging directory that the caller syncs and renames
// into place as a whole.
func WriteFile(name string, t Table) error {
	if err := os.WriteFile(name, Marshal(t), 0o600); err != nil {
		return fmt.Errorf("write special-owners table: %w", err)
	}
	return nil
}

// ReplaceFile atomically replaces the table at name with t compact: it
// writes tmp (a free name on name's filesystem), syncs it when sync is
// set, and renames it over name, so a reader or a crash sees the old
// table or the new one, never a mix.
func ReplaceFile(name, tmp string, t Table, sync bool) error {
	err := writeSynced(tmp, Marshal(t), sync)
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace special-owners table %s: %w", name, err)
	}
	if sync {
		if d, err := os.Open(filepath.Dir(name)); err == nil {
			d.Sync()
			d.Close()
		}
	}
	return nil
}

func writeSynced(name string, data []byte, sync bool) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
