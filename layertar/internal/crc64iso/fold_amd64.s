#include "textflag.h"

// FOLD moves the 128-bit lane L forward by the distance whose keys are in
// K (low quadword: key of L's low quadword; high: of its high one), using
// T as scratch, and adds D to it.
#define FOLD(L, K, T, D) \
	MOVO L, T \
	PCLMULQDQ $0x00, K, L \
	PCLMULQDQ $0x11, K, T \
	PXOR T, L \
	PXOR D, L

// func fold(state uint64, p []byte, keys *[8]uint64) (lo, hi uint64)
TEXT ·fold(SB), NOSPLIT, $0-56
	MOVQ state+0(FP), AX
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), CX
	MOVQ keys+32(FP), DX

	MOVOU 0(SI), X0
	MOVOU 16(SI), X1
	MOVOU 32(SI), X2
	MOVOU 48(SI), X3
	MOVQ AX, X4
	PXOR X4, X0
	ADDQ $64, SI
	SUBQ $64, CX

	MOVOU 0(DX), X5

loop:
	CMPQ CX, $64
	JB reduce
	MOVOU 0(SI), X8
	MOVOU 16(SI), X9
	MOVOU 32(SI), X10
	MOVOU 48(SI), X11
	FOLD(X0, X5, X4, X8)
	FOLD(X1, X5, X6, X9)
	FOLD(X2, X5, X7, X10)
	FOLD(X3, X5, X12, X11)
	ADDQ $64, SI
	SUBQ $64, CX
	JMP loop

reduce:
	// Lanes 0, 1 and 2 move forward by 384, 256 and 128 bits onto lane 3.
	MOVOU 16(DX), X5
	FOLD(X0, X5, X4, X3)
	MOVOU 32(DX), X5
	FOLD(X1, X5, X4, X0)
	MOVOU 48(DX), X5
	FOLD(X2, X5, X4, X1)

	MOVQ X2, AX
	PSHUFD $0xee, X2, X2
	MOVQ X2, BX
	MOVQ AX, lo+40(FP)
	MOVQ BX, hi+48(FP)
	RET
