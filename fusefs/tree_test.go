package fusefs

import (
	"testing"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// newTestTree is a tree with a root of inode number 2 and no union behind
// it: the tree's bookkeeping alone.
func newTestTree() (*tree, *node) {
	u := &union{}
	root := &node{u: u, isDir: true, ino: 2}
	u.root = root
	u.tree = newTree(root)
	return u.tree, root
}

func (t *tree) testNode(parent *node, name string, ino uint64, dir bool) *node {
	return t.lookup(parent, name, ino, func() *node { return &node{u: parent.u, isDir: dir} })
}

func TestTreeLookupAndForget(t *testing.T) {
	tr, root := newTestTree()
	d := tr.testNode(root, "d", 10, true)
	f := tr.testNode(d, "f", 11, false)
	if got := tr.id(f); got != 11 {
		t.Errorf("node ID %d, want the inode number 11", got)
	}
	if again := tr.testNode(d, "f", 11, false); again != f || f.lookups != 2 {
		t.Errorf("a second lookup made another node or did not count (%d lookups)", f.lookups)
	}
	if rel, ok := f.upperRel(); !ok || rel != "d/f" {
		t.Errorf("path %q %v, want d/f", rel, ok)
	}
	// The kernel forgets the directory first: it stays while f is
	// known under it, so f's path holds.
	tr.forget(10, 1)
	if tr.get(10) != d {
		t.Fatal("a directory with a known child left the table")
	}
	tr.forget(11, 2)
	if tr.get(11) != nil || tr.get(10) != nil || tr.count() != 1 {
		t.Errorf("after every forget: f %v, d %v, %d nodes, want only the root", tr.get(11), tr.get(10), tr.count())
	}
	// The root is never forgotten.
	tr.forget(fuse.FUSE_ROOT_ID, 5)
	if tr.get(fuse.FUSE_ROOT_ID) != root {
		t.Error("the root left the table")
	}
}

func TestTreeHardlinkNames(t *testing.T) {
	tr, root := newTestTree()
	a := tr.testNode(root, "a", 20, false)
	if b := tr.testNode(root, "b", 20, false); b != a {
		t.Fatal("two names of one inode got two nodes")
	}
	if root.kids != 2 {
		t.Errorf("root counts %d names under it, want 2", root.kids)
	}
	// Unlinking the name the node goes by passes it the other one.
	tr.removeName(a, root, "a", false)
	if name, p := a.Parent(); p != root || name != "b" {
		t.Errorf("after unlink of a the node is known as %q under %v, want b under the root", name, p)
	}
	if tr.find(20) != a {
		t.Error("an object with names left was dropped from the inode map")
	}
	// Its last name goes: a new object with the number gets a node of
	// its own while the kernel still holds the old one.
	tr.removeName(a, root, "b", true)
	n := tr.testNode(root, "c", 20, false)
	if n == a {
		t.Fatal("a new object reused the node of one that left the view")
	}
	if id := tr.id(n); id == 20 || id&syntheticIDBit == 0 {
		t.Errorf("the new object got node ID %#x, want a synthetic one", id)
	}
	tr.forget(20, 2) // the old node's references
	if tr.get(20) != nil {
		t.Error("the old node stayed after the kernel forgot it")
	}
	if tr.find(20) != n {
		t.Error("the new object is not found by its inode number")
	}
}

func TestTreeMove(t *testing.T) {
	tr, root := newTestTree()
	d1 := tr.testNode(root, "d1", 30, true)
	d2 := tr.testNode(root, "d2", 31, true)
	f := tr.testNode(d1, "f", 32, false)
	sub := tr.testNode(d1, "sub", 33, true)
	g := tr.testNode(sub, "g", 34, false)
	tr.move(f, d1, "f", d2, "f2")
	tr.move(sub, d1, "sub", d2, "sub")
	for _, c := range []struct {
		n    *node
		want string
	}{{f, "d2/f2"}, {sub, "d2/sub"}, {g, "d2/sub/g"}} {
		if rel, ok := c.n.upperRel(); !ok || rel != c.want {
			t.Errorf("path %q %v, want %s", rel, ok, c.want)
		}
	}
	if d1.kids != 0 || d2.kids != 2 {
		t.Errorf("names counted under d1 %d, d2 %d, want 0 and 2", d1.kids, d2.kids)
	}
	// Renaming onto itself changes nothing.
	tr.move(f, d2, "f2", d2, "f2")
	if rel, _ := f.upperRel(); rel != "d2/f2" || d2.kids != 2 {
		t.Errorf("a rename onto itself moved f to %q (d2 counts %d)", rel, d2.kids)
	}
}

func TestTreeReservedInodeNumbers(t *testing.T) {
	tr, root := newTestTree()
	for _, ino := range []uint64{0, fuse.FUSE_ROOT_ID, syntheticIDBit | 5} {
		n := tr.testNode(root, "x", ino, false)
		if id := tr.id(n); id == ino || id&syntheticIDBit == 0 {
			t.Errorf("inode %#x got node ID %#x, want a synthetic one", ino, id)
		}
		if tr.get(tr.id(n)) != n || tr.find(ino) != n {
			t.Errorf("inode %#x: its node is not found by ID or number", ino)
		}
		tr.removeName(n, root, "x", true)
		tr.forget(tr.id(n), 1)
	}
	if tr.count() != 1 {
		t.Errorf("%d nodes left, want the root alone", tr.count())
	}
}

// TestNodeSize guards the memory a cached name costs (doc.go, Memory):
// the kernel keeps a node for every name it caches.
func TestNodeSize(t *testing.T) {
	if sz := unsafe.Sizeof(node{}); sz > 80 {
		t.Errorf("a node takes %d bytes, want at most 80 (a Go size class)", sz)
	}
}
