/* ptychoscan: the eight-element bit shuffle of bitshuffle's untranspose, in AVX2 (shuffle.c). */
#ifndef PS_SHUFFLE_H
#define PS_SHUFFLE_H

#include <stddef.h>
#include <stdint.h>

/* 1 when ps_shuffle_eightelem_avx2 runs here: built for x86-64 and the CPU has AVX2 (asked once, at the first call). */
int ps_shuffle_avx2_usable(void);

/* bitshuffle's bshuf_shuffle_bit_eightelem (the second step of bshuf_untrans_bit_elem), byte for byte, for an even
   elem_size (bytes): `in` holds size elements (size a multiple of 8) bit-row transposed by bshuf_trans_byte_bitrow,
   `out` (not overlapping it) gets them untransposed. Returns size * elem_size (bytes written), or -1 where
   ps_shuffle_avx2_usable() is 0, elem_size is odd, or size is not a multiple of 8 (nothing written). */
int64_t ps_shuffle_eightelem_avx2(const void *in, void *out, int64_t size, int64_t elem_size);

#endif
