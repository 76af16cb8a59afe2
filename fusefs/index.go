package fusefs

import (
	"container/list"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Memory. A directory of 100k names must cost neither a map entry per
// name and layer nor a copy of its listing per node: the names a
// directory's lower layers hold are kept as one sorted string with offsets
// and a layer bitmask per name (about 13 bytes plus the name), all such
// indexes of a mount share one byte budget and the least recently used
// ones are dropped past it (CLOCK), and a node the kernel forgets drops
// its index at once. Listings exist only while a directory handle reads
// them, in the same packed form.

// nameIndex records, for the lower directories merged into one directory
// (top first, as node lowerDirs), which of them hold each name. Lookups
// then answer names a layer lacks without a syscall. Immutable once
// built.
type nameIndex struct {
	blob   string   // the names, sorted, concatenated
	ends   []uint32 // ends[i]: end of name i in blob
	layers []uint64 // layers[i]: bit j set when lower dir j holds name i
	read   uint64   // bit j: lower dir j was read (its absent names are absent)
}

// maxIndexedLayers: lower dirs past this many are asked name by name.
const maxIndexedLayers = 64

func (x *nameIndex) name(i int) string {
	start := uint32(0)
	if i > 0 {
		start = x.ends[i-1]
	}
	return x.blob[start:x.ends[i]]
}

// holders returns the bitmask of the lower dirs holding name.
func (x *nameIndex) holders(name string) uint64 {
	lo, hi := 0, len(x.ends)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if x.name(m) < name {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(x.ends) && x.name(lo) == name {
		return x.layers[lo]
	}
	return 0
}

// size is what the index costs, for the cache budget.
func (x *nameIndex) size() int { return len(x.blob) + 12*len(x.ends) + 64 }

// indexBuilder collects the names of each lower dir.
type indexBuilder struct {
	ents []layerName
	read uint64
}

type layerName struct {
	name  string
	layer uint8
}

// add records that lower dir i (in the node's lowerDirs order) holds
// names. Dirs past maxIndexedLayers are not indexed.
func (b *indexBuilder) add(i int, names []rawEntry) {
	if i >= maxIndexedLayers {
		return
	}
	b.read |= 1 << uint(i)
	for _, e := range names {
		b.ents = append(b.ents, layerName{e.name, uint8(i)})
	}
}

func (b *indexBuilder) build() *nameIndex {
	slices.SortFunc(b.ents, func(a, c layerName) int { return strings.Compare(a.name, c.name) })
	x := &nameIndex{read: b.read}
	var sb strings.Builder
	n := 0
	for i, e := range b.ents {
		if i == 0 || e.name != b.ents[i-1].name {
			n++
		}
	}
	total := 0
	for i, e := range b.ents {
		if i == 0 || e.name != b.ents[i-1].name {
			total += len(e.name)
		}
	}
	sb.Grow(total)
	x.ends = make([]uint32, 0, n)
	x.layers = make([]uint64, 0, n)
	for i, e := range b.ents {
		if i > 0 && e.name == b.ents[i-1].name {
			x.layers[len(x.layers)-1] |= 1 << e.layer
			continue
		}
		sb.WriteString(e.name)
		x.ends = append(x.ends, uint32(sb.Len()))
		x.layers = append(x.layers, 1<<e.layer)
	}
	x.blob = sb.String()
	b.ents = nil
	return x
}

// cachedIndex is a directory's slot in the index cache: the node keeps the
// slot, the cache may empty it.
type cachedIndex struct {
	idx  atomic.Pointer[nameIndex]
	used atomic.Bool   // looked at since the clock hand last passed
	elem *list.Element // in indexCache.ring; guarded by indexCache.mu
	size int           // guarded by indexCache.mu
}

// get returns the index, nil when not built or dropped.
func (c *cachedIndex) get() *nameIndex {
	x := c.idx.Load()
	if x != nil && !c.used.Load() {
		c.used.Store(true) // a load first: no cache-line write per lookup
	}
	return x
}

// indexCache bounds the memory of every directory's nameIndex in a mount.
// Lookups read an index with two atomic loads; only adding and dropping
// take the lock.
type indexCache struct {
	mu    sync.Mutex
	ring  list.List // of *cachedIndex
	bytes int
	max   int
}

// put installs x in slot c, dropping the least recently used indexes to
// stay within the budget. An index bigger than the budget is not kept.
func (ic *indexCache) put(c *cachedIndex, x *nameIndex) {
	sz := x.size()
	if sz > ic.max {
		return
	}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if c.elem != nil {
		ic.dropLocked(c)
	}
	// The clock: a used index gets a second chance (its bit is
	// cleared and it goes to the back); bounded so that lookups setting
	// bits meanwhile cannot keep it turning.
	for turns := 2*ic.ring.Len() + 1; ic.bytes+sz > ic.max && ic.ring.Len() > 0; turns-- {
		e := ic.ring.Front()
		v := e.Value.(*cachedIndex)
		if turns > 0 && v.used.Swap(false) {
			ic.ring.MoveToBack(e)
			continue
		}
		ic.dropLocked(v)
	}
	c.size = sz
	c.idx.Store(x)
	c.used.Store(true)
	c.elem = ic.ring.PushBack(c)
	ic.bytes += sz
}

// size is what the indexes held take.
func (ic *indexCache) size() int {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return ic.bytes
}

// drop empties slot c (its directory was forgotten).
func (ic *indexCache) drop(c *cachedIndex) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if c.elem != nil {
		ic.dropLocked(c)
	}
}

func (ic *indexCache) dropLocked(c *cachedIndex) {
	ic.ring.Remove(c.elem)
	c.elem = nil
	ic.bytes -= c.size
	c.size = 0
	c.idx.Store(nil)
}

// listing is a merged directory listing packed for memory: names
// concatenated, inode numbers and file types side by side.
type listing struct {
	names []byte
	ends  []uint32
	inos  []uint64
	types []uint8 // S_IFMT >> 12
}

func (l *listing) add(name string, mode uint32, ino uint64) {
	l.names = append(l.names, name...)
	l.ends = append(l.ends, uint32(len(l.names)))
	l.inos = append(l.inos, ino)
	l.types = append(l.types, uint8(mode&unix.S_IFMT>>12))
}

func (l *listing) len() int { return len(l.ends) }

// entry returns entry i as go-fuse wants it.
func (l *listing) entry(i int) fuse.DirEntry {
	start := uint32(0)
	if i > 0 {
		start = l.ends[i-1]
	}
	return fuse.DirEntry{Name: string(l.names[start:l.ends[i]]), Mode: uint32(l.types[i]) << 12, Ino: l.inos[i]}
}
