package crc64iso

import (
	"hash/crc64"
	"math/rand/v2"
	"testing"
)

func TestFoldKeys(t *testing.T) {
	// x^e mod P, reflected: multiplying by x shifts right; a bit falling
	// off the end is x^64, which is x^4 + x^3 + x + 1 modulo P.
	xPow := func(e int) uint64 {
		v := uint64(1) << 63
		for range e {
			if v&1 != 0 {
				v = v>>1 ^ crc64.ISO
			} else {
				v >>= 1
			}
		}
		return v
	}
	for _, tc := range []struct {
		exp int
		key uint64
	}{{575, keyX575}, {511, keyX511}, {447, keyX447}, {383, keyX383}, {319, keyX319}, {255, keyX255}, {191, keyX191}, {127, keyX127}} {
		if got := xPow(tc.exp); got != tc.key {
			t.Errorf("key for x^%d is %#x, derived %#x", tc.exp, tc.key, got)
		}
	}
}

func TestUpdateMatchesHashCRC64(t *testing.T) {
	tab := crc64.MakeTable(crc64.ISO)
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 1<<16+77)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	lengths := []int{}
	for n := 0; n <= 1100; n++ {
		lengths = append(lengths, n)
	}
	lengths = append(lengths, 4095, 4096, 4097, 1<<16, len(data)-3)
	for _, n := range lengths {
		for _, off := range []int{0, 1, 3} {
			p := data[off : off+n]
			for _, init := range []uint64{0, 0xffffffffffffffff, rng.Uint64()} {
				if got, want := Update(init, p), crc64.Update(init, tab, p); got != want {
					t.Fatalf("Update(%#x, %d bytes at +%d) = %#x, hash/crc64 says %#x", init, n, off, got, want)
				}
			}
		}
	}
}

func TestUpdateInPiecesMatchesWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	data := make([]byte, 300000)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	want := Checksum(data)
	for range 50 {
		var crc uint64
		for p := data; len(p) > 0; {
			k := min(len(p), rng.IntN(20000))
			crc = Update(crc, p[:k])
			p = p[k:]
		}
		if crc != want {
			t.Fatalf("piecewise %#x, whole %#x", crc, want)
		}
	}
	if all := crc64.Checksum(data, crc64.MakeTable(crc64.ISO)); want != all {
		t.Fatalf("Checksum %#x, hash/crc64 %#x", want, all)
	}
}

func FuzzUpdate(f *testing.F) {
	f.Add(uint64(0), make([]byte, 300))
	f.Add(uint64(12345), []byte("hello"))
	tab := crc64.MakeTable(crc64.ISO)
	f.Fuzz(func(t *testing.T, init uint64, p []byte) {
		if got, want := Update(init, p), crc64.Update(init, tab, p); got != want {
			t.Fatalf("Update(%#x, %d bytes) = %#x, hash/crc64 says %#x", init, len(p), got, want)
		}
	})
}

func BenchmarkUpdate(b *testing.B) {
	for _, size := range []int{512, 4096, 1 << 20} {
		data := make([]byte, size)
		b.Run(itoa(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			var crc uint64
			for b.Loop() {
				crc = Update(crc, data)
			}
		})
		b.Run("hash-crc64-"+itoa(size), func(b *testing.B) {
			tab := crc64.MakeTable(crc64.ISO)
			b.SetBytes(int64(size))
			var crc uint64
			for b.Loop() {
				crc = crc64.Update(crc, tab, data)
			}
		})
	}
}

func itoa(n int) string {
	s := ""
	for {
		s = string(rune('0'+n%10)) + s
		n /= 10
		if n == 0 {
			return s
		}
	}
}
