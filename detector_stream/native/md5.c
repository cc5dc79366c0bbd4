/*
 * ptychoscan: MD5 (RFC 1321) for the compiled receive loop (recv_batch.c), which checks every
 * frame blob's md5 on the ingest thread. Written from the RFC's algorithm: the 64 steps of a
 * block unrolled with their constants as literals, the message words read little-endian
 * through memcpy (any alignment). It matches hashlib's (OpenSSL's) rate: bench/md5_rate.py.
 */
#include "md5.h"

#include <stdint.h>
#include <string.h>

/* Word k (0..15) of the 64-byte block at p, little-endian; memcpy: p need not be aligned. */
static inline uint32_t md5_word(const unsigned char *p, int k) {
    uint32_t v;
    memcpy(&v, p + 4 * k, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

/* The round functions of RFC 1321 section 3.4, each in a form of fewer operations with the same bits:
   F(x,y,z) = (x & y) | (~x & z)  =  z ^ (x & (y ^ z))
   G(x,y,z) = (x & z) | (y & ~z)  =  (x & z) + (y & ~z)  (disjoint bits: the second term does not wait for x)
   H(x,y,z) = x ^ y ^ z
   I(x,y,z) = y ^ (x | ~z) */
#define MD5_ROTL(v, s) (((v) << (s)) | ((v) >> (32 - (s))))

/* One step: a = b + ((a + f(b,c,d) + X[k] + T) <<< s), the terms that do not wait for b (the word just computed)
   added first. T: the step's constant, floor(2^32 * |sin(i)|) for step i = 1..64. */
#define MD5_F(a, b, c, d, k, s, t)                                \
    do {                                                          \
        (a) += md5_word(p, k) + (t);                              \
        (a) += (d) ^ ((b) & ((c) ^ (d)));                         \
        (a) = MD5_ROTL(a, s) + (b);                               \
    } while (0)
#define MD5_G(a, b, c, d, k, s, t)                                \
    do {                                                          \
        (a) += md5_word(p, k) + (t) + ((c) & ~(d));               \
        (a) += (b) & (d);                                         \
        (a) = MD5_ROTL(a, s) + (b);                               \
    } while (0)
#define MD5_H(a, b, c, d, k, s, t)                                \
    do {                                                          \
        (a) += md5_word(p, k) + (t);                              \
        (a) += (b) ^ ((c) ^ (d));                                 \
        (a) = MD5_ROTL(a, s) + (b);                               \
    } while (0)
#define MD5_I(a, b, c, d, k, s, t)                                \
    do {                                                          \
        (a) += md5_word(p, k) + (t);                              \
        (a) += (c) ^ ((b) | ~(d));                                \
        (a) = MD5_ROTL(a, s) + (b);                               \
    } while (0)

/* Fold `nblocks` 64-byte blocks at p into the state h (the four steps of rounds 1-4 per block, unrolled). */
static void md5_blocks(uint32_t h[4], const unsigned char *p, size_t nblocks) {
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (; nblocks; nblocks--, p += 64) {
        const uint32_t a0 = a, b0 = b, c0 = c, d0 = d;

        MD5_F(a, b, c, d,  0,  7, 0xd76aa478u);
        MD5_F(d, a, b, c,  1, 12, 0xe8c7b756u);
        MD5_F(c, d, a, b,  2, 17, 0x242070dbu);
        MD5_F(b, c, d, a,  3, 22, 0xc1bdceeeu);
        MD5_F(a, b, c, d,  4,  7, 0xf57c0fafu);
        MD5_F(d, a, b, c,  5, 12, 0x4787c62au);
        MD5_F(c, d, a, b,  6, 17, 0xa8304613u);
        MD5_F(b, c, d, a,  7, 22, 0xfd469501u);
        MD5_F(a, b, c, d,  8,  7, 0x698098d8u);
        MD5_F(d, a, b, c,  9, 12, 0x8b44f7afu);
        MD5_F(c, d, a, b, 10, 17, 0xffff5bb1u);
        MD5_F(b, c, d, a, 11, 22, 0x895cd7beu);
        MD5_F(a, b, c, d, 12,  7, 0x6b901122u);
        MD5_F(d, a, b, c, 13, 12, 0xfd987193u);
        MD5_F(c, d, a, b, 14, 17, 0xa679438eu);
        MD5_F(b, c, d, a, 15, 22, 0x49b40821u);

        MD5_G(a, b, c, d,  1,  5, 0xf61e2562u);
        MD5_G(d, a, b, c,  6,  9, 0xc040b340u);
        MD5_G(c, d, a, b, 11, 14, 0x265e5a51u);
        MD5_G(b, c, d, a,  0, 20, 0xe9b6c7aau);
        MD5_G(a, b, c, d,  5,  5, 0xd62f105du);
        MD5_G(d, a, b, c, 10,  9, 0x02441453u);
        MD5_G(c, d, a, b, 15, 14, 0xd8a1e681u);
        MD5_G(b, c, d, a,  4, 20, 0xe7d3fbc8u);
        MD5_G(a, b, c, d,  9,  5, 0x21e1cde6u);
        MD5_G(d, a, b, c, 14,  9, 0xc33707d6u);
        MD5_G(c, d, a, b,  3, 14, 0xf4d50d87u);
        MD5_G(b, c, d, a,  8, 20, 0x455a14edu);
        MD5_G(a, b, c, d, 13,  5, 0xa9e3e905u);
        MD5_G(d, a, b, c,  2,  9, 0xfcefa3f8u);
        MD5_G(c, d, a, b,  7, 14, 0x676f02d9u);
        MD5_G(b, c, d, a, 12, 20, 0x8d2a4c8au);

        MD5_H(a, b, c, d,  5,  4, 0xfffa3942u);
        MD5_H(d, a, b, c,  8, 11, 0x8771f681u);
        MD5_H(c, d, a, b, 11, 16, 0x6d9d6122u);
        MD5_H(b, c, d, a, 14, 23, 0xfde5380cu);
        MD5_H(a, b, c, d,  1,  4, 0xa4beea44u);
        MD5_H(d, a, b, c,  4, 11, 0x4bdecfa9u);
        MD5_H(c, d, a, b,  7, 16, 0xf6bb4b60u);
        MD5_H(b, c, d, a, 10, 23, 0xbebfbc70u);
        MD5_H(a, b, c, d, 13,  4, 0x289b7ec6u);
        MD5_H(d, a, b, c,  0, 11, 0xeaa127fau);
        MD5_H(c, d, a, b,  3, 16, 0xd4ef3085u);
        MD5_H(b, c, d, a,  6, 23, 0x04881d05u);
        MD5_H(a, b, c, d,  9,  4, 0xd9d4d039u);
        MD5_H(d, a, b, c, 12, 11, 0xe6db99e5u);
        MD5_H(c, d, a, b, 15, 16, 0x1fa27cf8u);
        MD5_H(b, c, d, a,  2, 23, 0xc4ac5665u);

        MD5_I(a, b, c, d,  0,  6, 0xf4292244u);
        MD5_I(d, a, b, c,  7, 10, 0x432aff97u);
        MD5_I(c, d, a, b, 14, 15, 0xab9423a7u);
        MD5_I(b, c, d, a,  5, 21, 0xfc93a039u);
        MD5_I(a, b, c, d, 12,  6, 0x655b59c3u);
        MD5_I(d, a, b, c,  3, 10, 0x8f0ccc92u);
        MD5_I(c, d, a, b, 10, 15, 0xffeff47du);
        MD5_I(b, c, d, a,  1, 21, 0x85845dd1u);
        MD5_I(a, b, c, d,  8,  6, 0x6fa87e4fu);
        MD5_I(d, a, b, c, 15, 10, 0xfe2ce6e0u);
        MD5_I(c, d, a, b,  6, 15, 0xa3014314u);
        MD5_I(b, c, d, a, 13, 21, 0x4e0811a1u);
        MD5_I(a, b, c, d,  4,  6, 0xf7537e82u);
        MD5_I(d, a, b, c, 11, 10, 0xbd3af235u);
        MD5_I(c, d, a, b,  2, 15, 0x2ad7d2bbu);
        MD5_I(b, c, d, a,  9, 21, 0xeb86d391u);

        a += a0;
        b += b0;
        c += c0;
        d += d0;
    }
    h[0] = a;
    h[1] = b;
    h[2] = c;
    h[3] = d;
}

#undef MD5_F
#undef MD5_G
#undef MD5_H
#undef MD5_I
#undef MD5_ROTL

void ps_md5(const unsigned char *data, size_t n, unsigned char out[16]) {
    uint32_t h[4] = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u};
    size_t whole = n / 64;
    md5_blocks(h, data, whole);
    unsigned char tail[128] = {0}; /* the last partial block, 0x80, zeros, the length in bits (little-endian): 1 or 2 blocks */
    size_t rest = n - whole * 64;
    if (rest) memcpy(tail, data + whole * 64, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8u;
    for (int i = 0; i < 8; i++) tail[tail_len - 8 + i] = (unsigned char)(bits >> (8 * i));
    md5_blocks(h, tail, tail_len / 64);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(h[i] >> (8 * j));
}
