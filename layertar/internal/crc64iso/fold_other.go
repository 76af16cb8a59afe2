//go:build !amd64

package crc64iso

func haveCLMUL() bool { return false }

func fold(state uint64, p []byte, keys *[8]uint64) (lo, hi uint64) {
	panic("crc64iso: fold without CLMUL")
}
