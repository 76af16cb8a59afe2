package fusefs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The tree is the union's record of what the kernel knows: every node the
// kernel holds a reference to (by node ID), and the names it knows them
// by. It is the part of go-fuse's fs package this union needs, kept small
// because the kernel keeps a node for every name it caches: a stat walk of
// a million files makes a million.
//
//   - Node IDs are view inode numbers, so looking up an object again (by
//     the same name or another name of its hardlink group) finds its node
//     with one map access and no per-directory child maps. An object whose
//     number the kernel still holds for another (an upper inode number
//     reused while the old object's node lives) gets a synthetic ID.
//   - A node names its parent directory node and its name there; paths are
//     built by following parents to the root. A hardlinked object the
//     kernel knows under several names has the others in tree.links
//     (there, not in the node, because tree.mu guards them: see Lock
//     order).
//   - The kernel counts its references (lookups); FORGET returns them. A
//     node leaves the table when the kernel holds none and no known name
//     of another node is under it (as in go-fuse, a directory stays while
//     its children do, so their paths stay right).
//
// Lock order: tree.mu is taken inside node.mu where both are held, never
// the other way round; what a node does when it leaves the table
// (node.forgotten) runs after tree.mu is released.
type tree struct {
	mu sync.RWMutex
	// byID maps node IDs to nodes. Every node the kernel holds is here.
	byID map[uint64]*node
	// byIno holds the nodes whose ID is not their inode number.
	byIno map[uint64]*node
	// synth holds the IDs of the nodes whose ID is not their inode
	// number (node.synthetic); nextID numbers them (top bit set: no
	// view inode number has it).
	synth  map[*node]uint64
	nextID uint64
	root   *node
	// links holds the further names of the nodes known by more than
	// one.
	links map[*node][]link
}

// syntheticIDBit marks node IDs that are not inode numbers.
const syntheticIDBit = 1 << 63

func newTree(root *node) *tree {
	t := &tree{byID: map[uint64]*node{}, byIno: map[uint64]*node{}, synth: map[*node]uint64{}, nextID: syntheticIDBit, root: root, links: map[*node][]link{}}
	root.registered = true
	root.lookups = 1 // the kernel's reference to the root is never returned
	t.byID[fuse.FUSE_ROOT_ID] = root
	if root.ino != fuse.FUSE_ROOT_ID {
		t.byIno[root.ino] = root
	}
	return t
}

// idLocked is n's node ID: FUSE's root ID, a synthetic one, or its inode
// number.
func (t *tree) idLocked(n *node) uint64 {
	switch {
	case n == t.root:
		return fuse.FUSE_ROOT_ID
	case n.synthetic:
		return t.synth[n]
	}
	return n.ino
}

// id is n's node ID.
func (t *tree) id(n *node) uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.idLocked(n)
}

// get returns the node the kernel knows as id, or nil.
func (t *tree) get(id uint64) *node {
	t.mu.RLock()
	n := t.byID[id]
	t.mu.RUnlock()
	return n
}

// findLocked returns the live node of view inode ino, or nil.
func (t *tree) findLocked(ino uint64) *node {
	if n := t.byIno[ino]; n != nil {
		return n
	}
	if n := t.byID[ino]; n != nil && n.ino == ino && !n.gone {
		return n
	}
	return nil
}

// find returns the live node of view inode ino, or nil.
func (t *tree) find(ino uint64) *node {
	t.mu.RLock()
	n := t.findLocked(ino)
	t.mu.RUnlock()
	return n
}

// lookup returns the node of view inode ino known as parent/name, counting
// one more kernel reference to it: the existing node of that object if
// there is one (name then becomes one of its names), else the node make
// returns, registered under a new ID. make runs under t.mu and must not
// take it.
func (t *tree) lookup(parent *node, name string, ino uint64, make func() *node) *node {
	return t.attach(parent, name, func() *node {
		n := t.findLocked(ino)
		if n == nil {
			n = make()
			n.ino = ino
			t.registerLocked(n)
		}
		return n
	})
}

// adopt counts one more kernel reference to n, known as parent/name
// (nil: no name, as for a lookup of "." by node ID). A node not in the
// table joins it, unless the table has another for its object already:
// that one is returned.
func (t *tree) adopt(n *node, parent *node, name string) *node {
	return t.attach(parent, name, func() *node {
		if !n.registered {
			if m := t.findLocked(n.ino); m != nil {
				return m
			}
			t.registerLocked(n)
		}
		return n
	})
}

// attach names the node pick chooses (under t.mu) parent/name and counts
// one more kernel reference to it.
func (t *tree) attach(parent *node, name string, pick func() *node) *node {
	var released []*node
	t.mu.Lock()
	n := pick()
	t.nameLocked(n, parent, name, &released)
	n.lookups++
	t.mu.Unlock()
	finish(released)
	return n
}

// registerLocked gives n a node ID: its inode number unless another node
// (gone from the view, but still held by the kernel) has that ID, or the
// number is one FUSE reserves.
func (t *tree) registerLocked(n *node) {
	id := n.ino
	if _, taken := t.byID[id]; taken || id == 0 || id == fuse.FUSE_ROOT_ID || id&syntheticIDBit != 0 || id == ^uint64(0) {
		t.nextID++
		id = t.nextID
		t.byIno[n.ino] = n
	}
	if id != n.ino {
		n.synthetic = true
		t.synth[n] = id
	}
	n.registered = true
	t.byID[id] = n
}

// nameLocked records that n is known as parent/name: its primary name if
// it had none (or, for a directory, which has one name only, always), or
// another name of a hardlinked object.
func (t *tree) nameLocked(n *node, parent *node, name string, released *[]*node) {
	if parent == nil {
		return // O_TMPFILE, or a lookup of "." by node ID
	}
	if n.parent == parent && n.name == name {
		return
	}
	if n.parent == nil || n.isDir {
		old := n.parent
		n.parent, n.name = parent, name
		parent.kids++
		if old != nil {
			// A directory has one name: the old one is stale.
			old.kids--
			t.releaseLocked(old, released)
		}
		return
	}
	for _, l := range t.links[n] {
		if l.parent == parent && l.name == name {
			return
		}
	}
	t.links[n] = append(t.links[n], link{parent, name})
	parent.kids++
}

// unnameLocked forgets that n is known as parent/name. The primary name
// passes to another known name, if any.
func (t *tree) unnameLocked(n *node, parent *node, name string, released *[]*node) bool {
	if n.parent == parent && n.name == name {
		parent.kids--
		n.parent, n.name = nil, ""
		if links := t.links[n]; len(links) > 0 {
			l := links[len(links)-1]
			t.setLinksLocked(n, links[:len(links)-1])
			n.parent, n.name = l.parent, l.name // its count moves along
		}
		t.releaseLocked(parent, released)
		return true
	}
	links := t.links[n]
	for i, l := range links {
		if l.parent == parent && l.name == name {
			t.setLinksLocked(n, append(links[:i], links[i+1:]...))
			parent.kids--
			t.releaseLocked(parent, released)
			return true
		}
	}
	return false
}

// removeName records that the name parent/name of n left the view
// (unlink, rmdir, or rename onto it). When it was the last name of the
// object, the node stops standing for its inode number: an object the
// upper file system gives that number later gets a node of its own while
// the kernel still holds this one.
func (t *tree) removeName(n *node, parent *node, name string, lastName bool) {
	var released []*node
	t.mu.Lock()
	if !n.registered {
		// A request's own node (node.childNode): nothing to forget.
		t.mu.Unlock()
		return
	}
	t.unnameLocked(n, parent, name, &released)
	if lastName && n.parent == nil {
		n.gone = true
		if t.byIno[n.ino] == n {
			delete(t.byIno, n.ino)
		}
	}
	t.mu.Unlock()
	finish(released)
}

// move records a rename of n from oldParent/oldName to newParent/newName.
func (t *tree) move(n *node, oldParent *node, oldName string, newParent *node, newName string) {
	var released []*node
	t.mu.Lock()
	if n.registered && !(oldParent == newParent && oldName == newName) {
		// The new name first: it holds the new parent, so dropping
		// the old name cannot release a directory both share.
		t.nameLocked(n, newParent, newName, &released)
		t.unnameLocked(n, oldParent, oldName, &released)
	}
	t.mu.Unlock()
	finish(released)
}

// forget returns count kernel references to the node id.
func (t *tree) forget(id, count uint64) {
	t.mu.RLock()
	n := t.byID[id]
	t.mu.RUnlock()
	if n != nil {
		t.release(n, count)
	}
}

// release returns count kernel references to n.
func (t *tree) release(n *node, count uint64) {
	var released []*node
	t.mu.Lock()
	if n.registered && n != t.root {
		n.lookups -= uint32(min(count, uint64(n.lookups)))
		t.releaseLocked(n, &released)
	}
	t.mu.Unlock()
	finish(released)
}

// finish lets nodes that left the table drop what they hold.
func finish(released []*node) {
	for _, n := range released {
		n.forgotten()
	}
}

// releaseLocked drops n from the table once nothing holds it, and then
// the directories only its names held; it adds them to released.
func (t *tree) releaseLocked(n *node, released *[]*node) {
	for n != nil && n.registered && n.lookups == 0 && n.kids == 0 && n != t.root {
		n.registered = false
		delete(t.byID, t.idLocked(n))
		if n.synthetic {
			delete(t.synth, n)
			n.synthetic = false
		}
		if t.byIno[n.ino] == n {
			delete(t.byIno, n.ino)
		}
		*released = append(*released, n)
		var parents []*node
		for _, l := range t.links[n] {
			parents = append(parents, l.parent)
		}
		delete(t.links, n)
		p := n.parent
		if p != nil {
			p.kids--
		}
		// The node keeps its parent and name: a request that holds
		// it still finds its path.
		for _, q := range parents {
			q.kids--
			t.releaseLocked(q, released)
		}
		n = p
	}
}

// known reports whether the kernel holds a node for view inode ino.
func (t *tree) known(ino uint64) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n := t.findLocked(ino)
	return n != nil && n.lookups > 0
}

// holds reports whether n is in the table (the kernel may use it).
func (t *tree) holds(n *node) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return n.registered
}

// count is the number of nodes in the table.
func (t *tree) count() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byID)
}

// setLinksLocked records links as n's further names.
func (t *tree) setLinksLocked(n *node, links []link) {
	if len(links) == 0 {
		delete(t.links, n)
	} else {
		t.links[n] = links
	}
}

// link is a further name of a hardlinked object.
type link struct {
	parent *node
	name   string
}

// Parent returns the name n is known by and its directory's node (nil for
// the root and for objects no name leads to any more).
func (n *node) Parent() (string, *node) {
	t := n.u.tree
	t.mu.RLock()
	name, p := n.name, n.parent
	t.mu.RUnlock()
	return name, p
}

// IsRoot reports whether n is the view's root.
func (n *node) IsRoot() bool { return n == n.u.root }

// upperRel is the node's path relative to the layer roots, from the names
// the kernel looked up. ok is false for an object no name leads to.
func (n *node) upperRel() (string, bool) {
	if n.IsRoot() {
		return ".", true
	}
	t := n.u.tree
	t.mu.RLock()
	defer t.mu.RUnlock()
	size := 0
	for cur := n; !cur.IsRoot(); cur = cur.parent {
		if cur.parent == nil {
			return "", false
		}
		size += len(cur.name) + 1
	}
	buf := make([]byte, size-1)
	end := len(buf)
	for cur := n; !cur.IsRoot(); cur = cur.parent {
		start := end - len(cur.name)
		copy(buf[start:end], cur.name)
		if start > 0 {
			buf[start-1] = '/'
		}
		end = start - 1
	}
	return string(buf), true
}

// retire takes every name from n and makes it stand for its inode number
// no more, while the kernel still holds it: the next lookup of any of the
// names makes a new node for the object (see newHandle). It returns the
// names n was known by (their directories' node IDs) for the kernel to
// forget.
func (t *tree) retire(n *node) []retiredName {
	var released []*node
	var names []retiredName
	t.mu.Lock()
	if n.registered {
		for n.parent != nil {
			p, name := n.parent, n.name
			names = append(names, retiredName{t.idLocked(p), name})
			t.unnameLocked(n, p, name, &released)
		}
		n.gone = true
		if t.byIno[n.ino] == n {
			delete(t.byIno, n.ino)
		}
	}
	t.mu.Unlock()
	finish(released)
	return names
}

// retiredName is a name a retired node was known by.
type retiredName struct {
	parent uint64
	name   string
}
