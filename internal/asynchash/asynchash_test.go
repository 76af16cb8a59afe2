package asynchash

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

func TestSameSumAsSynchronous(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, sizes := range [][]int{{}, {1}, {512, 512, 3}, {ChunkSize}, {ChunkSize - 1, 2}, {3 * ChunkSize, 17, ChunkSize + 5}, {10 * ChunkSize}} {
		var all bytes.Buffer
		a := New(sha256.New())
		for _, n := range sizes {
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			all.Write(p)
			a.Write(p)
			// The caller may reuse its buffer at once.
			for i := range p {
				p[i] = 0
			}
		}
		want := sha256.Sum256(all.Bytes())
		if got := a.Sum(); !bytes.Equal(got, want[:]) {
			t.Fatalf("sizes %v: sum differs", sizes)
		}
	}
}

func TestTakeAndGiveMixedWithWrite(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var all bytes.Buffer
	a := New(sha256.New())
	for i := range 40 {
		if i%3 == 0 {
			p := make([]byte, rng.IntN(3*ChunkSize))
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			all.Write(p)
			a.Write(p)
			continue
		}
		chunk := a.Take()
		if len(chunk) != 0 || cap(chunk) != ChunkSize {
			t.Fatalf("Take gave len %d cap %d, want an empty chunk of %d", len(chunk), cap(chunk), ChunkSize)
		}
		chunk = chunk[:rng.IntN(ChunkSize+1)]
		for j := range chunk {
			chunk[j] = byte(rng.Uint32())
		}
		all.Write(chunk)
		a.Give(chunk)
	}
	want := sha256.Sum256(all.Bytes())
	if got := a.Sum(); !bytes.Equal(got, want[:]) {
		t.Fatal("sum differs from the sum of the bytes given")
	}
}
