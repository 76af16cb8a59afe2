package crc64iso

import "golang.org/x/sys/cpu"

// haveCLMUL: PCLMULQDQ and the SSE2 moves around it.
func haveCLMUL() bool { return cpu.X86.HasPCLMULQDQ && cpu.X86.HasSSE2 }

// fold folds p (a multiple of 64 bytes, at least 64) into 128 bits
// congruent to it modulo P, after adding state to its first 8 bytes.
// keys are the fold keys in the order the constants are declared.
//
//go:noescape
func fold(state uint64, p []byte, keys *[8]uint64) (lo, hi uint64)
