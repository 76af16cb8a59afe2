package apply

import (
	"archive/tar"
	"path/filepath"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// TestChownMapped: with ChownMapped a rootless apply gives entries their
// owners on disk (root maps every ID), symlinks included, and still
// writes the record and rootless disk modes.
func TestChownMapped(t *testing.T) {
	testutil.NeedRoot(t)
	link := tar.Header{Typeflag: tar.TypeSymlink, Name: "d/l", Linkname: "f", Uid: 7, Gid: 8}
	ents := []ent{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o555, Uid: 1000, Gid: 1000}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/f", Mode: 0o4711, Uid: 65534, Gid: 42}, body: "x"},
		{hdr: link},
	}
	s := newSandbox(t)
	if _, err := applyBytes(t, buildTar(t, ents...), s.layer, Options{Rootless: true, ChownMapped: true, OpaqueNamespace: whiteout.User}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path     string
		uid, gid uint32
		perm     uint32 // on disk
		record   string
	}{
		{"d", 1000, 1000, 0o755, "1000:1000:0555:dir"},
		{"d/f", 65534, 42, 0o711, "65534:42:04711:file"},
		{"d/l", 7, 8, 0o777, ""},
	} {
		p := filepath.Join(s.layer, tc.path)
		st := lstat(t, p)
		if st.Uid != tc.uid || st.Gid != tc.gid || st.Mode&0o7777 != tc.perm {
			t.Errorf("%s on disk: %d:%d %04o, want %d:%d %04o", tc.path, st.Uid, st.Gid, st.Mode&0o7777, tc.uid, tc.gid, tc.perm)
		}
		if tc.record == "" {
			continue
		}
		v, ok := getxattr(t, p, statoverride.Xattr)
		got, err := statoverride.Parse(v)
		want, _ := statoverride.Parse(tc.record)
		if !ok || err != nil || got != want {
			t.Errorf("%s: record %q, want %q", tc.path, v, tc.record)
		}
	}
	s.checkOutside(t)
}
