// Package crc64iso computes the CRC-64 with the ISO polynomial, as
// hash/crc64 with crc64.MakeTable(crc64.ISO) does (tar-split's checksum of
// every file payload), several times faster on amd64: there it folds the
// input with carry-less multiplication (PCLMULQDQ) and leaves only the
// last bytes to the table. Elsewhere it is hash/crc64.
package crc64iso

import "hash/crc64"

// Update returns the result of adding the bytes in p to crc, exactly as
// crc64.Update(crc, crc64.MakeTable(crc64.ISO), p) does.
func Update(crc uint64, p []byte) uint64 {
	tab := crc64.MakeTable(crc64.ISO)
	if len(p) >= minFold && haveCLMUL() {
		n := len(p) &^ (foldBlock - 1)
		keys := [8]uint64{keyX575, keyX511, keyX447, keyX383, keyX319, keyX255, keyX191, keyX127}
		lo, hi := fold(^crc, p[:n], &keys)
		// The folded 128 bits are congruent to the first n bytes (with
		// the running CRC added to their first 8): their CRC from a zero
		// state is the state after those n bytes.
		var rest [16]byte
		putLE(rest[:8], lo)
		putLE(rest[8:], hi)
		crc = crc64.Update(^uint64(0), tab, rest[:])
		p = p[n:]
	}
	return crc64.Update(crc, tab, p)
}

// Checksum returns the CRC-64 (ISO) of data.
func Checksum(data []byte) uint64 { return Update(0, data) }

const (
	// foldBlock is what one step of the fold loop consumes: four lanes of
	// 16 bytes.
	foldBlock = 64
	// minFold is the length below which the table is about as fast:
	// folding ends with 16 bytes through the table anyway.
	minFold = 128
)

// The keys of the fold: x^e mod P in the bit-reflected form of the ISO
// polynomial P = x^64 + x^4 + x^3 + x + 1 (bit 63 is x^0), for the
// exponents that move a 128-bit lane forward by F = 512, 384, 256 and 128
// bits: F+63 for its low quadword (which holds the higher powers), F-1
// for its high one. The -1 makes up for the one-bit shift that a
// carry-less product of two reflected operands has. TestFoldKeys derives
// them again.
const (
	keyX575 = 0x01b001b1b0000001
	keyX511 = 0xb100010100000001
	keyX447 = 0x76db6c7000000001
	keyX383 = 0xe145150000000001
	keyX319 = 0x1b1ab00000000001
	keyX255 = 0xa011000000000001
	keyX191 = 0x6b70000000000001
	keyX127 = 0xf500000000000001
)

func putLE(b []byte, v uint64) {
	_ = b[7]
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}
