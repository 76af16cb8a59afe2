package asynchash

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

func TestSameSumAsSynchronous(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, sizes := range [][]int{{}, {1}, {512, 512, 3}, {chunkSize}, {chunkSize - 1, 2}, {3 * chunkSize, 17, chunkSize + 5}, {10 * chunkSize}} {
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
