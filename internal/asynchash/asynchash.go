// Package asynchash hashes a byte stream on another goroutine, so that on
// a multi-core machine hashing overlaps the I/O of the goroutine that
// produces the bytes (import and export hash every byte of a layer).
package asynchash

import (
	"hash"
)

// ChunkSize is how much is batched before a hand-off: large enough that
// the channel costs nothing next to the hashing, small enough to overlap
// and to stay in the caches between the producer's use of a chunk and the
// hashing (1 MiB chunks cost a large export a tenth more CPU).
const ChunkSize = 256 << 10

// Hasher hashes what it is given on its own goroutine. Bytes arrive either
// by Write, which copies them, or without a copy: the producer Takes a
// chunk, fills it, and Gives it back. It is not safe for concurrent
// producers. Call Sum exactly once, at the end.
type Hasher struct {
	h     hash.Hash
	cur   []byte // where Write copies to; nil until the first Write
	full  chan []byte
	free  chan []byte
	made  int // chunks allocated, at most chunks
	done  chan struct{}
	ended bool
}

// chunks is how many chunks a Hasher allocates at most: enough for the
// producer to fill one while others are hashed.
const chunks = 4

// New starts a Hasher around h.
func New(h hash.Hash) *Hasher {
	a := &Hasher{h: h, full: make(chan []byte, chunks), free: make(chan []byte, chunks), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		for b := range a.full {
			a.h.Write(b)
			a.free <- b[:0]
		}
	}()
	return a
}

// chunk returns a free chunk, allocating one while fewer than chunks
// exist: a short stream never costs more than one or two.
func (a *Hasher) chunk() []byte {
	select {
	case b := <-a.free:
		return b
	default:
	}
	if a.made < chunks {
		a.made++
		return make([]byte, 0, ChunkSize)
	}
	return <-a.free
}

// Write copies p for hashing. It never fails.
func (a *Hasher) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		room := cap(a.cur) - len(a.cur)
		if room == 0 {
			if a.cur != nil {
				a.full <- a.cur
			}
			a.cur = a.chunk()
			room = cap(a.cur)
		}
		k := min(room, len(p))
		a.cur = append(a.cur, p[:k]...)
		p = p[k:]
	}
	return n, nil
}

// Take returns an empty chunk of ChunkSize capacity that belongs to the
// caller until it Gives it back. What was written before is hashed
// before it.
func (a *Hasher) Take() []byte {
	if len(a.cur) > 0 {
		a.full <- a.cur
		a.cur = nil
	}
	return a.chunk()
}

// Give hashes the bytes of a chunk from Take, after everything before
// it, and then reuses it: the caller may read it until its next call of
// Take, Write or Sum, and must not change it.
func (a *Hasher) Give(chunk []byte) {
	a.full <- chunk
}

// Sum waits for everything written to be hashed and returns the sum.
func (a *Hasher) Sum() []byte {
	if !a.ended {
		a.ended = true
		if len(a.cur) > 0 {
			a.full <- a.cur
		}
		close(a.full)
	}
	<-a.done
	return a.h.Sum(nil)
}

// Close stops the goroutine without a sum (an aborted stream).
func (a *Hasher) Close() { a.Sum() }
