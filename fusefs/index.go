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

// cacheSlot is a directory's slot in a bounded cache: the node keeps the
// slot, the cache may empty it.
type cacheSlot[T any] struct {
	v    atomic.Pointer[T]
	used atomic.Bool   // looked at since the clock hand last passed
	elem *list.Element // in boundedCache.ring; guarded by boundedCache.mu
	size int           // guarded by boundedCache.mu
}

// cachedIndex and cachedListing are the slots of a directory's name index
// and listing.
type (
	cachedIndex   = cacheSlot[nameIndex]
	cachedListing = cacheSlot[listing]
)

// get returns the value, nil when not built or dropped.
func (c *cacheSlot[T]) get() *T {
	x := c.v.Load()
	if x != nil && !c.used.Load() {
		c.used.Store(true) // a load first: no cache-line write per lookup
	}
	return x
}

// boundedCache bounds the memory of one kind of per-directory data of a
// mount (name indexes, listings). Readers get a value with two atomic
// loads; only adding and dropping take the lock.
type boundedCache[T any] struct {
	mu    sync.Mutex
	ring  list.List // of *cacheSlot[T]
	bytes int
	max   int
}

// indexCache and listingCache are a mount's caches.
type (
	indexCache   = boundedCache[nameIndex]
	listingCache = boundedCache[listing]
)

// put installs x, which takes sz bytes, in slot c, dropping the least
// recently used values to stay within the budget. A value bigger than the
// budget is not kept.
func (ic *boundedCache[T]) put(c *cacheSlot[T], x *T, sz int) {
	if sz > ic.max {
		return
	}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if c.elem != nil {
		ic.dropLocked(c)
	}
	// The clock: a used value gets a second chance (its bit is
	// cleared and it goes to the back); bounded so that readers setting
	// bits meanwhile cannot keep it turning.
	for turns := 2*ic.ring.Len() + 1; ic.bytes+sz > ic.max && ic.ring.Len() > 0; turns-- {
		e := ic.ring.Front()
		v := e.Value.(*cacheSlot[T])
		if turns > 0 && v.used.Swap(false) {
			ic.ring.MoveToBack(e)
			continue
		}
		ic.dropLocked(v)
	}
	c.size = sz
	c.v.Store(x)
	c.used.Store(true)
	c.elem = ic.ring.PushBack(c)
	ic.bytes += sz
}

// size is what the values held take.
func (ic *boundedCache[T]) size() int {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return ic.bytes
}

// drop empties slot c (its directory was forgotten).
func (ic *boundedCache[T]) drop(c *cacheSlot[T]) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if c.elem != nil {
		ic.dropLocked(c)
	}
}

func (ic *boundedCache[T]) dropLocked(c *cacheSlot[T]) {
	ic.ring.Remove(c.elem)
	c.elem = nil
	ic.bytes -= c.size
	c.size = 0
	c.v.Store(nil)
}

// listing is a merged directory listing packed for memory: names
// concatenated, inode numbers, file types and readdir cookies (dir.go)
// side by side.
type listing struct {
	names   []byte
	ends    []uint32
	inos    []uint64
	types   []uint8 // S_IFMT >> 12
	cookies []uint64
	gen     uint64 // the directory's listGen it was built at
}

// size is what the listing costs, for the cache budget.
func (l *listing) size() int { return len(l.names) + 21*len(l.ends) + 96 }

// name returns the name of entry i.
func (l *listing) name(i int) string {
	start := uint32(0)
	if i > 0 {
		start = l.ends[i-1]
	}
	return string(l.names[start:l.ends[i]])
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
	e := fuse.DirEntry{Name: string(l.names[start:l.ends[i]]), Mode: uint32(l.types[i]) << 12, Ino: l.inos[i]}
	if l.cookies != nil {
		e.Off = l.cookies[i]
	}
	return e
}
