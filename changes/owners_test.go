package changes

import (
	"archive/tar"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/ownertable"
	"github.com/layerfs/layerfs/statoverride"
	"github.com/layerfs/layerfs/whiteout"
)

// TestWriteLayerSpecialOwners: symlinks and FIFOs take owner and mode
// from the special-owners tables, the upper's for the upper's objects
// and a lower's for its objects that a redirected directory carries into
// the layer; a record of another type, or none, leaves the disk's.
func TestWriteLayerSpecialOwners(t *testing.T) {
	lowers, upper := makeStack(t,
		[][]op{{symlink("old/l", "t"), fifo("old/p"), symlink("old/plain", "t")}},
		[]op{symlink("bin/sh", "busybox"), fifo("run/initctl"), symlink("bin/odd", "x"), symlink("bin/mine", "y"),
			redirect("new", "/old", whiteout.User), whDev("old")})
	base := filepath.Dir(upper)
	upperTable := filepath.Join(base, "upper."+ownertable.FileName)
	lowerTable := filepath.Join(base, "lower."+ownertable.FileName)
	st := func(uid, gid, mode uint32) statoverride.Stat {
		return statoverride.Stat{UID: uid, GID: gid, Mode: mode}
	}
	if err := ownertable.WriteFile(upperTable, ownertable.Table{
		"bin/sh":      st(0, 0, unix.S_IFLNK|0o644),
		"run/initctl": st(65534, 65534, unix.S_IFIFO|0o2610),
		"bin/odd":     st(5, 5, unix.S_IFIFO|0o600), // not this object's type
		"new/l":       st(9, 9, unix.S_IFLNK|0o777), // the upper has no new/l: the lower's record counts
	}); err != nil {
		t.Fatal(err)
	}
	if err := ownertable.WriteFile(lowerTable, ownertable.Table{
		"old/l": st(1000, 1000, unix.S_IFLNK|0o777),
		"old/p": st(1000, 100, unix.S_IFIFO|0o1640),
	}); err != nil {
		t.Fatal(err)
	}
	me := os.Geteuid()
	type owner struct {
		uid, gid int
		mode     int64
	}
	for _, tc := range []struct {
		name string
		opts WriteOptions
		want map[string]owner
	}{
		{"tables", WriteOptions{UpperOwnerTable: upperTable, LowerOwnerTables: []string{lowerTable}}, map[string]owner{
			"bin/sh": {0, 0, 0o777}, "run/initctl": {65534, 65534, 0o2610}, "bin/odd": {me, me, 0o777}, "bin/mine": {me, me, 0o777},
			"new/l": {1000, 1000, 0o777}, "new/p": {1000, 100, 0o1640}, "new/plain": {me, me, 0o777}}},
		{"no tables", WriteOptions{}, map[string]owner{
			"bin/sh": {me, me, 0o777}, "run/initctl": {me, me, 0o640}, "new/l": {me, me, 0o777}, "new/p": {me, me, 0o640}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]owner{}
			for _, e := range readTar(t, writeLayer(t, upper, lowers, tc.opts)) {
				if e.hdr.Typeflag == tar.TypeSymlink || e.hdr.Typeflag == tar.TypeFifo {
					got[e.hdr.Name] = owner{e.hdr.Uid, e.hdr.Gid, e.hdr.Mode}
				}
			}
			for name, w := range tc.want {
				if g, ok := got[name]; !ok || g != w {
					t.Errorf("%s: %+v (in the tar: %v), want %+v", name, g, ok, w)
				}
			}
		})
	}
	bad := filepath.Join(base, "bad")
	if err := os.WriteFile(bad, []byte("nonsense\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteLayer(t.Context(), new(discard), upper, lowers, WriteOptions{UpperOwnerTable: bad}); err == nil {
		t.Errorf("WriteLayer with an unreadable upper table succeeded")
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
