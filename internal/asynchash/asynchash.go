// Package asynchash hashes a byte stream on another goroutine, so that on
// a multi-core machine hashing overlaps the I/O of the goroutine that
// produces the bytes (import and export hash every byte of a layer).
package asynchash

import (
	"hash"
)

// chunkSize is how much is batched before a hand-off: large enough that
// the channel costs nothing next to the hashing, small enough to overlap.
const chunkSize = 1 << 20

// Hasher is an io.Writer that copies what it is given into chunks and
// feeds them to h on its own goroutine. It is not safe for concurrent
// writers. Call Sum exactly once, at the end.
type Hasher struct {
	h     hash.Hash
	cur   []byte
	full  chan []byte
	free  chan []byte
	done  chan struct{}
	ended bool
}

// New starts a Hasher around h.
func New(h hash.Hash) *Hasher {
	a := &Hasher{h: h, full: make(chan []byte, 3), free: make(chan []byte, 4), done: make(chan struct{})}
	for i := 0; i < 4; i++ {
		a.free <- make([]byte, 0, chunkSize)
	}
	a.cur = <-a.free
	go func() {
		defer close(a.done)
		for b := range a.full {
			a.h.Write(b)
			a.free <- b[:0]
		}
	}()
	return a
}

// Write copies p for hashing. It never fails.
func (a *Hasher) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		room := cap(a.cur) - len(a.cur)
		if room == 0 {
			a.full <- a.cur
			a.cur = <-a.free
			room = cap(a.cur)
		}
		k := min(room, len(p))
		a.cur = append(a.cur, p[:k]...)
		p = p[k:]
	}
	return n, nil
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
