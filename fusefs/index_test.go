package fusefs

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

func entries(names ...string) []rawEntry {
	var out []rawEntry
	for _, n := range names {
		out = append(out, rawEntry{name: n})
	}
	return out
}

func TestNameIndex(t *testing.T) {
	var b indexBuilder
	b.add(0, entries("b", ".wh.a", "c"))
	b.add(1, entries("a", "b"))
	b.add(maxIndexedLayers, entries("z")) // past the limit: not indexed
	x := b.build()
	for _, tc := range []struct {
		name string
		want uint64
	}{
		{"a", 0b10}, {"b", 0b11}, {"c", 0b01}, {".wh.a", 0b01}, {"z", 0}, {"", 0}, {"aa", 0}, {"0", 0}, {"d", 0},
	} {
		if got := x.holders(tc.name); got != tc.want {
			t.Errorf("holders(%q) = %b, want %b", tc.name, got, tc.want)
		}
	}
	if x.read != 0b11 {
		t.Errorf("read = %b, want 0b11 (the layer past the limit is asked name by name)", x.read)
	}
	if empty := (&indexBuilder{}).build(); empty.holders("a") != 0 || empty.read != 0 {
		t.Errorf("an empty index holds something")
	}
}

func TestIndexCacheBudget(t *testing.T) {
	mk := func(n int) *nameIndex {
		var b indexBuilder
		var names []string
		for i := 0; i < n; i++ {
			names = append(names, fmt.Sprint("name", i))
		}
		b.add(0, entries(names...))
		return b.build()
	}
	one := mk(100)
	ic := &indexCache{max: 2*one.size() + one.size()/2} // room for two
	a, b, c := &cachedIndex{}, &cachedIndex{}, &cachedIndex{}
	put := func(c *cachedIndex, x *nameIndex) { ic.put(c, x, x.size()) }
	put(a, mk(100))
	put(b, mk(100))
	// The clock hand passes both once (clearing their bits); a is used
	// again since, b is not: b goes.
	ic.mu.Lock()
	for e := ic.ring.Front(); e != nil; e = e.Next() {
		e.Value.(*cachedIndex).used.Store(false)
	}
	ic.mu.Unlock()
	if a.get() == nil {
		t.Fatal("a dropped before the budget was reached")
	}
	put(c, mk(100))
	if a.get() == nil || b.get() != nil || c.get() == nil {
		t.Errorf("after a third index: a %v b %v c %v, want a and c kept, b (least recently used) dropped",
			a.get() != nil, b.get() != nil, c.get() != nil)
	}
	if ic.size() > ic.max {
		t.Errorf("cache holds %d bytes, budget %d", ic.size(), ic.max)
	}
	ic.drop(a)
	if a.get() != nil || ic.size() != c.size {
		t.Errorf("drop: a %v, size %d, want nil and %d", a.get() != nil, ic.size(), c.size)
	}
	// An index bigger than the whole budget is not kept.
	d := &cachedIndex{}
	put(d, mk(1000))
	if d.get() != nil || c.get() == nil {
		t.Errorf("an index over the budget was kept (or evicted others)")
	}
}

func TestListingPacked(t *testing.T) {
	var l listing
	want := []struct {
		name string
		mode uint32
		ino  uint64
	}{{".", unix.S_IFDIR, 1}, {"file", unix.S_IFREG, 1 << 60}, {"", unix.S_IFLNK, 3}, {"sock", unix.S_IFSOCK, 4}}
	for _, w := range want {
		l.add(w.name, w.mode|0o644, w.ino)
	}
	if l.len() != len(want) {
		t.Fatalf("len %d", l.len())
	}
	for i, w := range want {
		e := l.entry(i)
		if e.Name != w.name || e.Mode != w.mode || e.Ino != w.ino {
			t.Errorf("entry %d = %q %o %d, want %q %o %d", i, e.Name, e.Mode, e.Ino, w.name, w.mode, w.ino)
		}
	}
}
