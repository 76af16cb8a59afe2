package changes

import (
	"archive/tar"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestIndexedNames: the names of a lower hardlink group that only an
// index entry serves (kernel overlayfs index=on) are in the diff and in
// the layer, as hardlinks of the group's first name with the new data,
// with the lower directories leading to them; names the upper holds or
// hides stay as the upper says.
func TestIndexedNames(t *testing.T) {
	lowers, upper := makeStack(t,
		[][]op{{file("a", "old"), hardlink("b", "a"), hardlink("d/c", "a"), hardlink("gone", "a"), hardlink("e/mine", "a"), file("d/other", "o")}},
		[]op{file("e/mine", "upper's own"), whDev("gone")})
	// The index entry: the group's copy, linked into the upper as a.
	index := filepath.Join(filepath.Dir(upper), "work", "index")
	mustMkdirAll(t, index)
	entry := filepath.Join(index, "00fb1d00")
	if err := os.WriteFile(entry, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(entry, filepath.Join(upper, "a")); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{"/b": entry, "/d/c": entry, "/gone": entry, "/e/mine": entry}

	got, err := DiffWithOptions(context.Background(), upper, lowers, DiffOptions{IndexedNames: names})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, c := range got {
		lines = append(lines, c.String())
	}
	want := []string{"C /a", "C /b", "C /d", "C /d/c", "C /e", "C /e/mine", "D /gone"}
	if !slices.Equal(lines, want) {
		t.Errorf("diff:\n got %q\nwant %q", lines, want)
	}
	if plain, err := Diff(context.Background(), upper, lowers); err != nil || len(plain) != 4 {
		t.Errorf("plain diff %v %v: want the upper's 4 changes", plain, err)
	}

	entries := readTar(t, writeLayer(t, upper, lowers, WriteOptions{IndexedNames: names}))
	byName := map[string]tarEntry{}
	var order []string
	for _, e := range entries {
		byName[e.hdr.Name] = e
		order = append(order, e.hdr.Name)
	}
	wantOrder := []string{"a", "b", "d/", "d/c", "e/", "e/mine", ".wh.gone"}
	slices.Sort(wantOrder)
	sorted := slices.Sorted(slices.Values(order))
	if !slices.Equal(sorted, wantOrder) {
		t.Fatalf("layer entries %q, want %q", order, wantOrder)
	}
	if a := byName["a"]; a.hdr.Typeflag != tar.TypeReg || a.body != "new" {
		t.Errorf("a: type %c body %q, want the new data", a.hdr.Typeflag, a.body)
	}
	for _, n := range []string{"b", "d/c"} {
		if e := byName[n]; e.hdr.Typeflag != tar.TypeLink || e.hdr.Linkname != "a" {
			t.Errorf("%s: type %c link %q, want a hardlink to a", n, e.hdr.Typeflag, e.hdr.Linkname)
		}
	}
	if e := byName["e/mine"]; e.hdr.Typeflag != tar.TypeReg || e.body != "upper's own" {
		t.Errorf("e/mine: type %c body %q, want the upper's own file", e.hdr.Typeflag, e.body)
	}
	if d := byName["d/"]; d.hdr.Typeflag != tar.TypeDir {
		t.Errorf("d/: type %c, want the lower directory", d.hdr.Typeflag)
	}
}

// TestIndexedNameFirst: an indexed name that comes before every upper name
// of its object carries the data; the upper name links to it.
func TestIndexedNameFirst(t *testing.T) {
	lowers, upper := makeStack(t, [][]op{{file("z", "old"), hardlink("b", "z")}}, nil)
	entry := filepath.Join(t.TempDir(), "00fb1d00")
	if err := os.WriteFile(entry, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(entry, filepath.Join(upper, "z")); err != nil {
		t.Fatal(err)
	}
	entries := readTar(t, writeLayer(t, upper, lowers, WriteOptions{IndexedNames: map[string]string{"b": entry}}))
	if len(entries) != 2 {
		t.Fatalf("%d entries, want b and z", len(entries))
	}
	b, z := entries[0], entries[1]
	if b.hdr.Name != "b" || b.hdr.Typeflag != tar.TypeReg || b.body != "new" || z.hdr.Name != "z" || z.hdr.Typeflag != tar.TypeLink || z.hdr.Linkname != "b" {
		t.Errorf("got %s %c %q, %s %c %q; want b with the data, z a link to it", b.hdr.Name, b.hdr.Typeflag, b.body, z.hdr.Name, z.hdr.Typeflag, z.hdr.Linkname)
	}
}

func mustMkdirAll(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}
