package fusefs

import (
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

func TestInoMapper(t *testing.T) {
	single := newInoMapper([]uint64{7, 7, 7})
	if got := single.ino(7, 1234); got != 1234 {
		t.Errorf("one device: ino %d, want the real 1234", got)
	}
	multi := newInoMapper([]uint64{7, 9})
	a, b := multi.ino(7, 1234), multi.ino(9, 1234)
	if a == b {
		t.Errorf("same ino on two devices maps to one number %d", a)
	}
	if again := newInoMapper([]uint64{7, 9}).ino(9, 1234); again != b {
		t.Errorf("not stable across mappers: %d vs %d", again, b)
	}
	if big := multi.ino(9, 1<<60); big>>inoDevShift != 1 {
		t.Errorf("large ino lost its device index: %x", big)
	}
}

func TestParseRedirect(t *testing.T) {
	tests := []struct {
		in      string
		target  string
		abs, ok bool
	}{
		{"/a/b", "a/b", true, true},
		{"/a/../b", "b", true, true},
		{"/", ".", true, true},
		{"/../../etc", "etc", true, true},
		{"name", "name", false, true},
		{"a/b", "", false, false},
		{"..", "", false, false},
		{"", "", false, false},
	}
	for _, tc := range tests {
		target, abs, ok := parseRedirect(tc.in)
		if target != tc.target || abs != tc.abs || ok != tc.ok {
			t.Errorf("parseRedirect(%q) = %q %v %v, want %q %v %v", tc.in, target, abs, ok, tc.target, tc.abs, tc.ok)
		}
	}
}

func TestIDMapper(t *testing.T) {
	m := idMapper{m: []IDMap{{ContainerID: 0, HostID: 100000, Size: 1000}, {ContainerID: 5000, HostID: 5000, Size: 1}}}
	tests := []struct {
		disk, view uint32
	}{
		{100000, 0}, {100999, 999}, {5000, 5000}, {101000, OverflowID}, {0, OverflowID},
	}
	for _, tc := range tests {
		if got := m.toView(tc.disk); got != tc.view {
			t.Errorf("toView(%d) = %d, want %d", tc.disk, got, tc.view)
		}
	}
	if d, ok := m.toDisk(999); !ok || d != 100999 {
		t.Errorf("toDisk(999) = %d %v", d, ok)
	}
	if _, ok := m.toDisk(1000); ok {
		t.Error("toDisk(1000) mapped an unmapped id")
	}
	zero := uint32(0)
	if got := (idMapper{m: m.m, squash: &zero}).toView(100999); got != 0 {
		t.Errorf("squash: %d", got)
	}
}

func TestSplitMountFlags(t *testing.T) {
	rest, flags := splitMountFlags([]string{"default_permissions", "noatime", "nodev", "rw", "relatime", "ro"})
	if want := []string{"default_permissions", "nodev", "ro"}; !reflect.DeepEqual(rest, want) {
		t.Errorf("rest %v, want %v", rest, want)
	}
	if flags != unix.MS_NOATIME|unix.MS_RELATIME {
		t.Errorf("flags %#x", flags)
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		ok   bool
	}{
		{"lowers only", Options{Lowers: []string{"/a"}}, true},
		{"upper without work", Options{Lowers: []string{"/a"}, Upper: "/u"}, false},
		{"nothing", Options{}, false},
		{"upper only", Options{Upper: "/u", Work: "/w"}, true},
		{"work inside upper", Options{Upper: "/u", Work: "/u/w"}, false},
		{"upper inside work", Options{Upper: "/w/u", Work: "/w"}, false},
		{"empty id range", Options{Lowers: []string{"/a"}, UIDMap: []IDMap{{0, 1, 0}}}, false},
	}
	for _, tc := range tests {
		if err := tc.o.validate(); (err == nil) != tc.ok {
			t.Errorf("%s: validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestMergeWithoutMount drives lookup and the readdir merge directly on
// the node tree (no FUSE mount, no root needed): every format hides what
// overlayfs hides and readdir's inode numbers are lookup's.
func TestMergeWithoutMount(t *testing.T) {
	lowers, upper, work := layerDirs(t, 2)
	top, bottom := lowers[0], lowers[1]
	mustWrite(t, bottom+"/keep", "k")
	mustWrite(t, bottom+"/gone-dev", "x")
	mustWrite(t, bottom+"/gone-oci", "x")
	mustWrite(t, bottom+"/d/below", "x")
	mustWrite(t, bottom+"/o/below", "x")
	mustWrite(t, top+"/d/above", "x")
	mustWrite(t, top+"/o/above", "x")
	mustWrite(t, top+"/.wh.gone-oci", "")
	if err := unix.Mknod(top+"/gone-dev", unix.S_IFCHR, 0); err != nil {
		t.Skipf("cannot make a 0/0 whiteout here: %v", err)
	}
	setX(t, top+"/o", "user.overlay.opaque", "y")
	mustWrite(t, upper+"/new", "n")
	opts := Options{Lowers: lowers, Upper: upper, Work: work}
	u, err := newUnion(opts.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()
	if err := u.rootNode(); err != nil {
		t.Fatal(err)
	}
	root := u.root

	listing := func(n *node) map[string]uint64 {
		ents, errno := u.list(n)
		if errno != 0 {
			t.Fatalf("list: %v", errno)
		}
		m := map[string]uint64{}
		for i := 0; i < ents.len(); i++ {
			if e := ents.entry(i); e.Name != "." && e.Name != ".." {
				m[e.Name] = e.Ino
			}
		}
		return m
	}
	got := listing(root)
	want := []string{"d", "keep", "new", "o"}
	var names []string
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	if !reflect.DeepEqual(names, want) {
		t.Errorf("root lists %v, want %v", names, want)
	}
	for name, ino := range got {
		var out fuse.EntryOut
		ch, errno := root.lookup(name, &out)
		if errno != 0 {
			t.Fatalf("lookup %s: %v", name, errno)
		}
		if out.Attr.Ino != ino || ch.ino != ino || out.NodeId != u.tree.id(ch) {
			t.Errorf("%s: readdir ino %d, lookup %d/%d (node ID %d, reply %d)", name, ino, out.Attr.Ino, ch.ino, u.tree.id(ch), out.NodeId)
		}
	}
	for _, name := range []string{"gone-dev", "gone-oci", ".wh.gone-oci"} {
		var out fuse.EntryOut
		if _, errno := root.lookup(name, &out); errno != syscall.ENOENT {
			t.Errorf("lookup %s: %v, want ENOENT", name, errno)
		}
	}
	for dir, want := range map[string]string{"d": "above below", "o": "above"} {
		var out fuse.EntryOut
		ch, errno := root.lookup(dir, &out)
		if errno != 0 {
			t.Fatal(errno)
		}
		m := listing(ch)
		var n []string
		for k := range m {
			n = append(n, k)
		}
		sort.Strings(n)
		if strings.Join(n, " ") != want {
			t.Errorf("%s lists %v, want %s", dir, n, want)
		}
	}
}

// TestVolatileAndNoXattrs: Volatile turns fsync and fsyncdir into no-ops
// (a handle whose fd is invalid shows whether a sync was attempted);
// NoXattrs answers every xattr call with ENOTSUP before looking at the
// object.
func TestVolatileAndNoXattrs(t *testing.T) {
	for _, tc := range []struct {
		name            string
		opts            Options
		syncs, noXattrs bool
	}{
		{"default", Options{}, true, false},
		{"volatile", Options{Volatile: true}, false, false},
		{"noxattrs", Options{NoXattrs: true}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &union{opts: tc.opts, workFd: -1}
			n := &node{u: u, lowerLayer: -1}
			fh := &fileHandle{fd: -1, n: n}
			if errno := fh.fsync(0); (errno != 0) != tc.syncs {
				t.Errorf("fsync: %v, want a sync attempted = %v", errno, tc.syncs)
			}
			if errno := fh.fsync(1); (errno != 0) != tc.syncs {
				t.Errorf("fdatasync: %v, want a sync attempted = %v", errno, tc.syncs)
			}
			// A dir located (through the index path) in a work dir
			// that is not open: a sync fails to open it.
			u.indexRel = "index"
			d := &node{u: u, isDir: true, lowerLayer: -1, x: &nodeExtra{indexed: true}}
			if errno := d.fsyncdir(); (errno != 0) != tc.syncs {
				t.Errorf("fsyncdir: %v, want a sync attempted = %v", errno, tc.syncs)
			}
			checks := map[string]syscall.Errno{}
			_, checks["getxattr"] = n.getxattr("user.x", make([]byte, 64))
			_, checks["listxattr"] = n.listxattr(make([]byte, 64))
			checks["setxattr"] = n.setxattr("user.x", []byte("1"), 0)
			checks["removexattr"] = n.removexattr("user.x")
			for op, errno := range checks {
				if (errno == syscall.ENOTSUP) != tc.noXattrs {
					t.Errorf("%s: %v, want ENOTSUP = %v", op, errno, tc.noXattrs)
				}
			}
		})
	}
}
