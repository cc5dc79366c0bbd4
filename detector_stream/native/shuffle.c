/*
 * ptychoscan: the eight-element bit shuffle of bitshuffle's bit untranspose, in AVX2.
 *
 * bitshuffle's AVX variant of bshuf_shuffle_bit_eightelem takes elem_size % 4 == 0 only and
 * falls back to its SSE one for 16-bit pixels, where it was the largest cost of the
 * receive thread. The step, for an even elem_size: each group of 8 elements (8*elem_size
 * bytes, at byte ii) is read 16 bytes at a time (piece jj); eight times, the top bit of
 * each of the 16 bytes (a movemask) is stored as the uint16 at index
 * (ii + jj/8 + (7-k)*elem_size)/2, and the 16-bit lanes are shifted left by one (a low
 * byte's top bit carried into its high byte's bit 0 cannot reach bit 7 within 8 shifts).
 * Here two 16-bit masks come from one 32-byte vector; for elem_size 2 (a group is one piece) the
 * piece fills both halves, one shifted one bit further, so that each 32-bit mask is two adjacent
 * results: 4 movemasks and 4 stores per 16 bytes where SSE takes 8 and 8 (an 8 KiB block of
 * 16-bit pixels: 0.64 us here, 1.58 us with bitshuffle's SSE step, on a Xeon at 2.6 GHz).
 * Other even sizes store each 16-bit result on its own: byte for byte right, but for 4-byte
 * pixels slower (1.86 us) than bitshuffle's AVX step (0.64 us, 32-bit stores), which the loop
 * keeps there. Compiled for AVX2 with a target attribute (the rest of the library is plain
 * x86-64) and called only where the CPU has it.
 */
#include "shuffle.h"

#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(PS_NO_AVX2) /* -DPS_NO_AVX2: the fallback, as elsewhere */
#include <immintrin.h>

#define PS_AVX2 __attribute__((target("avx2")))
#if defined(__clang__)
#define PS_NO_SLP
#else /* GCC would gather eightelem2's four 32-bit stores into one vector store through vmovd/vpinsrd: 1.5x slower */
#define PS_NO_SLP __attribute__((optimize("no-tree-slp-vectorize")))
#endif

/* One 16-byte piece at `in`, whose uint16 result of shift k goes to out16[first - k * step]: the SSE2 logic (a tail). */
PS_AVX2 static void piece16(const unsigned char *in, uint16_t *out16, int64_t first, int64_t step) {
    __m128i v = _mm_loadu_si128((const __m128i *)in);
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
        uint16_t m = (uint16_t)_mm_movemask_epi8(v);
        memcpy(out16 + first - k * step, &m, 2);
        v = _mm_slli_epi16(v, 1);
    }
}

/* elem_size 2: a group is one 16-byte piece and its results are the 8 uint16 at out16[8g..8g+7], shift k at 8g+7-k.
   The piece is loaded into both halves of a vector, the low half shifted one further: a 32-bit movemask then holds the
   results of shifts s+1 (low half) and s (high half), a 32-bit store at out16[8g+6-s]; four of them per group. */
PS_NO_SLP PS_AVX2 static void eightelem2(const unsigned char *in, unsigned char *out, int64_t groups) {
    const __m256i low = _mm256_setr_epi64x(-1, -1, 0, 0);
    for (int64_t g = 0; g < groups; g++) {
        __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(in + 16 * g)));
        v = _mm256_add_epi16(v, _mm256_and_si256(v, low)); /* x + x: the low half's lanes shifted left by one */
        uint32_t m;
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) { /* out16[8g + 6 - 2s] <- the mask of shifts 2s + 1 and 2s */
            m = (uint32_t)_mm256_movemask_epi8(v);
            memcpy(out + 16 * g + 12 - 4 * s, &m, 4);
            v = _mm256_slli_epi16(v, 2);
        }
    }
}

/* Any even elem_size: the pieces at byte p and p + 16 from one 32-byte vector (they may be of two groups). */
PS_AVX2 static void eightelem_even(const unsigned char *in, unsigned char *out, int64_t nbyte, int64_t elem_size) {
    const int64_t group = 8 * elem_size, step = elem_size / 2;
    uint16_t *out16 = (uint16_t *)(void *)out;
    int64_t p = 0;
    for (; p + 32 <= nbyte; p += 32) {
        int64_t q = p + 16;
        int64_t a = (p - p % group + (p % group) / 8 + 7 * elem_size) / 2; /* index of shift 0's result */
        int64_t b = (q - q % group + (q % group) / 8 + 7 * elem_size) / 2;
        __m256i v = _mm256_loadu_si256((const __m256i *)(in + p));
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            uint32_t m = (uint32_t)_mm256_movemask_epi8(v);
            uint16_t lo = (uint16_t)m, hi = (uint16_t)(m >> 16);
            memcpy(out16 + a - k * step, &lo, 2);
            memcpy(out16 + b - k * step, &hi, 2);
            v = _mm256_slli_epi16(v, 1);
        }
    }
    if (p < nbyte) /* one 16-byte piece left (nbyte is a multiple of 16) */
        piece16(in + p, out16, (p - p % group + (p % group) / 8 + 7 * elem_size) / 2, step);
}

int ps_shuffle_avx2_usable(void) {
    __builtin_cpu_init(); /* idempotent: the CPU model is read once */
    return __builtin_cpu_supports("avx2") ? 1 : 0;
}

int64_t ps_shuffle_eightelem_avx2(const void *in, void *out, int64_t size, int64_t elem_size) {
    if (!ps_shuffle_avx2_usable() || elem_size < 2 || elem_size % 2 || size < 0 || size % 8) return -1;
    if (elem_size == 2)
        eightelem2(in, out, size / 8);
    else
        eightelem_even(in, out, size * elem_size, elem_size);
    return size * elem_size;
}

#else /* not x86-64 (or a compiler without target attributes): never usable, the caller keeps bitshuffle's */

int ps_shuffle_avx2_usable(void) { return 0; }

int64_t ps_shuffle_eightelem_avx2(const void *in, void *out, int64_t size, int64_t elem_size) {
    (void)in, (void)out, (void)size, (void)elem_size;
    return -1;
}

#endif
