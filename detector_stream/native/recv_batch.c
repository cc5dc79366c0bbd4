/*
 * ptychoscan: the compiled receive loop of the stream v1 ingest.
 *
 * One call drains up to `max_msgs` multipart messages from a ZeroMQ socket without
 * blocking, with the Python interpreter released (it is called through ctypes). An
 * image message in the DCU's exact layout, whose size and md5 agree and whose
 * bitshuffle-LZ4 framing passes the same checks as detector_stream/bslz4.py, is
 * decoded here into the caller's image arena; every other message (headers, series
 * ends, anything unusual, anything that fails a check) is copied whole into a raw
 * buffer for the Python decoder, which reports it as it always has.
 *
 * libzmq and bitshuffle are not linked: their functions come in as pointers from the
 * copies the Python process has already loaded (pyzmq's, bitshuffle's), so the socket
 * handle given is one of that libzmq's. A frame's blocks are decoded here one by one
 * with bitshuffle's building blocks (LZ4_decompress_safe, then its bit untranspose)
 * through two block-sized scratch buffers in the context: no OpenMP region and no
 * allocation per frame (bshuf_decompress_lz4 enters one and mallocs per block). The raw
 * buffer and the part-length table grow as needed and are kept between calls.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "md5.h"
#include "shuffle.h"

#define PS_EAGAIN 11
#define PS_EINTR 4
#define PS_DONTWAIT 1
#define PS_SNDMORE 2
#define PS_MAX_FRAME_PIXELS (1LL << 26)
#define PS_BLOCK_BYTES 8192
#define PS_REC 13 /* int64 fields per message record: see ps_recv_batch */
#define PS_RAW_KEEP (16LL << 20) /* raw-buffer bytes kept between drains; a bigger one is freed at the next drain */

typedef struct { unsigned char bytes[64]; } __attribute__((aligned(8))) ps_msg; /* zmq_msg_t: 64 opaque bytes */

typedef int (*msg_init_f)(void *);
typedef int (*msg_recv_f)(void *, void *, int);
typedef void *(*msg_data_f)(void *);
typedef size_t (*msg_size_f)(void *);
typedef int (*msg_more_f)(void *);
typedef int (*msg_close_f)(void *);
typedef int (*errno_f)(void);
typedef int (*lz4_f)(const char *, char *, int, int);             /* LZ4_decompress_safe */
typedef int64_t (*untrans_f)(const void *, void *, size_t, size_t); /* bitshuffle's (in, out, elements, element bytes) */
typedef int (*send_f)(void *, const void *, size_t, int);

typedef struct {
    msg_init_f init;
    msg_recv_f recv;
    msg_data_f data;
    msg_size_f size;
    msg_more_f more;
    msg_close_f close;
    errno_f err;
    lz4_f lz4;
    untrans_f untrans;              /* bshuf_untrans_bit_elem: allocates its scratch per call; used where the next two are not given */
    untrans_f bitrow, eightelem;    /* its two steps (bshuf_trans_byte_bitrow_*, bshuf_shuffle_bit_eightelem_*), through scratch[1] */
    int avx2_shuffle;               /* 1: the second step is shuffle.c's AVX2 one for 2-byte pixels (bitshuffle's is SSE there) */
    send_f send;
    void *fwd;                      /* a PUSH socket every received message is re-sent on, byte for byte (NULL: none) */
    int64_t fwd_sent, fwd_dropped;  /* messages forwarded, and dropped for the forward socket (it would have blocked) */
    unsigned char *raw;
    int64_t raw_len, raw_cap;
    unsigned char *blobs;           /* the compressed blobs of this drain's decoded images, back to back (for storing as they came) */
    int64_t blobs_len, blobs_cap;
    int keep_blobs;                 /* 0: a store that keeps no blobs is fed: none are copied */
    int64_t *part_len;
    int64_t nparts, parts_cap;
    int64_t arena_used, arena_miss; /* of the last drain: arena bytes decoded into; bytes of the largest frame that did not fit */
    unsigned char scratch[2][PS_BLOCK_BYTES] __attribute__((aligned(64))); /* a block: LZ4-decompressed, then half untransposed */
} ps_ctx;

/* ---- MD5: md5.c ------------------------------------------------------------------ */

/* The hex digest of `data`, lower case, into out[32] (for the tests against hashlib). `ctx` is not used (the md5 keeps
   no state in it any more): kept so that the signature the Python side declares stays as it was. */
void ps_md5_hex(ps_ctx *ctx, const unsigned char *data, int64_t n, char *out) {
    static const char hex[] = "0123456789abcdef";
    (void)ctx;
    unsigned char d[16];
    ps_md5(data, (size_t)n, d);
    for (int i = 0; i < 16; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
}

/* ---- exact-layout parsing (the regexes of detector_stream/image_layout.py, by hand) -- */

typedef struct {
    const unsigned char *p, *end;
} cursor;

static int lit(cursor *c, const char *s) {
    size_t n = strlen(s);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0) return 0;
    c->p += n;
    return 1;
}

/* 0|[1-9][0-9]* with at most 18 digits (longer: not taken here, the Python decoder has big ints). */
static int unum(cursor *c, int64_t *v) {
    const unsigned char *s = c->p;
    if (s >= c->end || *s < '0' || *s > '9') return 0;
    if (*s == '0') {
        c->p = s + 1;
        *v = 0;
        return 1;
    }
    int64_t x = 0;
    int n = 0;
    while (s < c->end && *s >= '0' && *s <= '9') {
        if (++n > 18) return 0;
        x = x * 10 + (*s++ - '0');
    }
    c->p = s;
    *v = x;
    return 1;
}

static int hexval(unsigned char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

typedef struct {
    int64_t series, frame, x, y, itemsize, size, times[3];
    const unsigned char *hash;
    int64_t hash_len;
} image_head;

static int parse_image(const unsigned char *p0, size_t n0, const unsigned char *p1, size_t n1, const unsigned char *p3, size_t n3,
                       image_head *h) {
    cursor c = {p0, p0 + n0};
    if (!lit(&c, "{\"htype\":\"dimage-1.0\",\"series\":") || !unum(&c, &h->series) || !lit(&c, ",\"frame\":") ||
        !unum(&c, &h->frame) || !lit(&c, ",\"hash\":\""))
        return 0;
    h->hash = c.p;
    while (c.p < c.end && hexval(*c.p) >= 0) c.p++;
    h->hash_len = c.p - h->hash;
    if (!lit(&c, "\"}") || c.p != c.end) return 0;

    c = (cursor){p1, p1 + n1};
    if (!lit(&c, "{\"htype\":\"dimage_d-1.0\",\"shape\":[") || !unum(&c, &h->x) || !lit(&c, ",") || !unum(&c, &h->y) ||
        !lit(&c, "],\"type\":\""))
        return 0;
    int64_t type_size;
    if (lit(&c, "uint8\""))
        type_size = 1;
    else if (lit(&c, "uint16\""))
        type_size = 2;
    else if (lit(&c, "uint32\""))
        type_size = 4;
    else
        return 0;
    if (!lit(&c, ",\"encoding\":\"")) return 0;
    int64_t enc_size;
    if (lit(&c, "bs8-lz4<\""))
        enc_size = 1;
    else if (lit(&c, "bs16-lz4<\""))
        enc_size = 2;
    else if (lit(&c, "bs32-lz4<\""))
        enc_size = 4;
    else
        return 0; /* lz4< and raw <: the Python decoder's */
    if (enc_size != type_size) return 0;
    h->itemsize = type_size;
    if (!lit(&c, ",\"size\":") || !unum(&c, &h->size) || !lit(&c, "}") || c.p != c.end) return 0;

    c = (cursor){p3, p3 + n3};
    if (!lit(&c, "{\"htype\":\"dconfig-1.0\",\"start_time\":") || !unum(&c, &h->times[0]) || !lit(&c, ",\"stop_time\":") ||
        !unum(&c, &h->times[1]) || !lit(&c, ",\"real_time\":") || !unum(&c, &h->times[2]) || !lit(&c, "}") || c.p != c.end)
        return 0;
    return 1;
}

static uint64_t be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* bslz4.check_blob for DCU blocks (8192 bytes, or 0 meaning that): 1 if the framing holds. */
static int blob_ok(const unsigned char *b, int64_t size, int64_t pixels, int64_t itemsize) {
    if (size < 12) return 0;
    uint64_t total = be(b, 8), block_bytes = be(b + 8, 4);
    if (total != 0 && total != (uint64_t)(pixels * itemsize)) return 0;
    if (block_bytes != 0 && block_bytes != PS_BLOCK_BYTES) return 0;
    int64_t block = PS_BLOCK_BYTES / itemsize;
    int64_t full = pixels / block, rest = pixels % block, partial = rest - rest % 8;
    int64_t nblocks = full + (partial ? 1 : 0), pos = 12;
    for (int64_t i = 0; i < nblocks; i++) {
        int64_t raw = (i < full ? block : partial) * itemsize;
        if (pos + 4 > size) return 0;
        int64_t length = (int64_t)be(b + pos, 4);
        if (length <= 0 || length > raw + raw / 255 + 16) return 0;
        pos += 4 + length;
        if (pos > size) return 0;
    }
    return size - pos == (pixels % 8) * itemsize;
}

static int hash_ok(const image_head *h, const unsigned char *blob, size_t n) {
    if (h->hash_len == 0) return 1; /* an empty hash is accepted */
    if (h->hash_len != 32) return 0;
    unsigned char d[16];
    ps_md5(blob, n, d);
    for (int i = 0; i < 16; i++)
        if (hexval(h->hash[2 * i]) != (d[i] >> 4) || hexval(h->hash[2 * i + 1]) != (d[i] & 15)) return 0;
    return 1;
}

/* ---- decoding: bitshuffle's blocked decompression, block by block ------------------ */

/* How many of the n elements at p are the largest value of their unsigned type (0xFF, 0xFFFF, 0xFFFFFFFF): the detector's
   mark of an invalid pixel, or a saturated one. 16 bytes at a time (the lane counters are summed every 128 steps, before
   a byte lane could wrap). */
#define PS_COUNT_MARKS(name, T)                                                             \
    static int64_t name(const unsigned char *p, int64_t n) {                               \
        typedef T vec __attribute__((vector_size(16)));                                     \
        const int64_t lanes = 16 / (int64_t)sizeof(T);                                      \
        const T top = (T)~(T)0;                                                             \
        int64_t count = 0, i = 0;                                                           \
        while (i + lanes <= n) {                                                            \
            vec acc = {0}, v;                                                               \
            for (int k = 0; k < 128 && i + lanes <= n; k++, i += lanes) {                   \
                memcpy(&v, p + i * (int64_t)sizeof(T), 16);                                 \
                acc -= (vec)(v == top); /* a lane that matches is all ones: -1 */           \
            }                                                                               \
            for (int64_t k = 0; k < lanes; k++) count += acc[k];                            \
        }                                                                                   \
        for (T x; i < n; i++) {                                                             \
            memcpy(&x, p + i * (int64_t)sizeof(T), sizeof(T));                              \
            count += x == top;                                                              \
        }                                                                                   \
        return count;                                                                       \
    }
PS_COUNT_MARKS(marks8, uint8_t)
PS_COUNT_MARKS(marks16, uint16_t)
PS_COUNT_MARKS(marks32, uint32_t)

static int64_t count_marks(const unsigned char *p, int64_t n, int64_t itemsize) {
    return itemsize == 1 ? marks8(p, n) : itemsize == 2 ? marks16(p, n) : marks32(p, n);
}

/* 1 when blocks of `itemsize`-byte pixels take shuffle.c's AVX2 eight-element step (bitshuffle's AVX step serves 4 bytes). */
static int avx2_step(const ps_ctx *ctx, int64_t itemsize) { return ctx->avx2_shuffle && ctx->eightelem && itemsize == 2; }

/* Bit-untranspose n elements (a multiple of 8) of one block from `in` to `out`, as bshuf_untrans_bit_elem does. */
static int untranspose(ps_ctx *ctx, const void *in, void *out, int64_t n, int64_t itemsize) {
    if (!ctx->bitrow || !ctx->eightelem) return ctx->untrans(in, out, (size_t)n, (size_t)itemsize) >= 0;
    if (ctx->bitrow(in, ctx->scratch[1], (size_t)n, (size_t)itemsize) < 0) return 0;
    if (avx2_step(ctx, itemsize)) return ps_shuffle_eightelem_avx2(ctx->scratch[1], out, n, itemsize) >= 0;
    return ctx->eightelem(ctx->scratch[1], out, (size_t)n, (size_t)itemsize) >= 0;
}

/* Whether blocks of `itemsize`-byte pixels take the AVX2 eight-element step (for the tests that it is exercised). */
int ps_avx2_shuffle(ps_ctx *ctx, int64_t itemsize) { return avx2_step(ctx, itemsize); }

/* on 0: bitshuffle's own step for every pixel size (the tests compare both); 1: the AVX2 one where the CPU has AVX2. */
void ps_set_avx2_shuffle(ps_ctx *ctx, int on) { ctx->avx2_shuffle = on && ps_shuffle_avx2_usable(); }

/* Decode the body of a blob that passed blob_ok (its blocks, then its raw tail) into `out`, as bshuf_decompress_lz4 with
   8192-byte blocks does: full blocks, a last partial block of the remainder's whole multiple of 8 elements, the last
   pixels % 8 elements copied as they are. 1 when every block decompresses to exactly its size and the body is used up;
   *marks: how many pixels are their type's largest value (counted block by block, while the block is in cache). */
static int decode_blob(ps_ctx *ctx, const unsigned char *body, int64_t body_len, unsigned char *out, int64_t pixels, int64_t itemsize,
                       int64_t *marks) {
    *marks = 0;
    int64_t block = PS_BLOCK_BYTES / itemsize, full = pixels / block, rest = pixels % block, partial = rest - rest % 8;
    int64_t nblocks = full + (partial ? 1 : 0), pos = 0;
    for (int64_t i = 0; i < nblocks; i++) {
        if (pos + 4 > body_len) return 0; /* blob_ok checked the framing; this keeps the function safe on its own */
        int64_t n = i < full ? block : partial, raw = n * itemsize, length = (int64_t)be(body + pos, 4);
        if (pos + 4 + length > body_len) return 0;
        if (ctx->lz4((const char *)body + pos + 4, (char *)ctx->scratch[0], (int)length, (int)raw) != raw) return 0;
        if (!untranspose(ctx, ctx->scratch[0], out, n, itemsize)) return 0;
        *marks += count_marks(out, n, itemsize);
        out += raw;
        pos += 4 + length;
    }
    int64_t tail = (pixels % 8) * itemsize;
    if (pos + tail != body_len) return 0;
    memcpy(out, body + pos, (size_t)tail);
    *marks += count_marks(out, pixels % 8, itemsize);
    return 1;
}

/* ---- context -------------------------------------------------------------------- */

ps_ctx *ps_new(void **fns) {
    /* aligned as the struct asks (its scratch: 64 bytes); calloc guarantees only 16 */
    ps_ctx *ctx = aligned_alloc(64, (sizeof(ps_ctx) + 63) & ~(size_t)63);
    if (!ctx) return NULL;
    memset(ctx, 0, sizeof(ps_ctx));
    ctx->init = (msg_init_f)fns[0];
    ctx->recv = (msg_recv_f)fns[1];
    ctx->data = (msg_data_f)fns[2];
    ctx->size = (msg_size_f)fns[3];
    ctx->more = (msg_more_f)fns[4];
    ctx->close = (msg_close_f)fns[5];
    ctx->err = (errno_f)fns[6];
    ctx->lz4 = (lz4_f)fns[7];
    ctx->send = (send_f)fns[8];
    ctx->untrans = (untrans_f)fns[9];
    ctx->bitrow = (untrans_f)fns[10];
    ctx->eightelem = (untrans_f)fns[11];
    ctx->avx2_shuffle = ps_shuffle_avx2_usable();
    ctx->keep_blobs = 1;
    return ctx;
}

void ps_free(ps_ctx *ctx) {
    if (!ctx) return;
    free(ctx->raw);
    free(ctx->blobs);
    free(ctx->part_len);
    free(ctx);
}

const unsigned char *ps_raw(ps_ctx *ctx) { return ctx->raw; }
int64_t ps_raw_len(ps_ctx *ctx) { return ctx->raw_len; }
int64_t ps_raw_capacity(ps_ctx *ctx) { return ctx->raw_cap; }
const int64_t *ps_part_lens(ps_ctx *ctx) { return ctx->part_len; }
int64_t ps_nparts(ps_ctx *ctx) { return ctx->nparts; }
const unsigned char *ps_blobs(ps_ctx *ctx) { return ctx->blobs; }
int64_t ps_blobs_len(ps_ctx *ctx) { return ctx->blobs_len; }
int64_t ps_blobs_capacity(ps_ctx *ctx) { return ctx->blobs_cap; }
int64_t ps_arena_used(ps_ctx *ctx) { return ctx->arena_used; }
int64_t ps_arena_miss(ps_ctx *ctx) { return ctx->arena_miss; }

/* Room for n more bytes in a buffer that grows by doubling (from 64 KiB); 0 when it cannot grow. */
static int room(unsigned char **buf, int64_t *cap, int64_t len, int64_t n) {
    if (len + n <= *cap) return 1;
    int64_t c = *cap ? *cap : 1 << 16;
    while (c < len + n) c *= 2;
    unsigned char *grown = realloc(*buf, (size_t)c);
    if (!grown) return 0;
    *buf = grown;
    *cap = c;
    return 1;
}

static int keep_part(ps_ctx *ctx, const void *data, int64_t n) {
    if (!room(&ctx->raw, &ctx->raw_cap, ctx->raw_len, n)) return 0;
    if (ctx->nparts == ctx->parts_cap) {
        int64_t cap = ctx->parts_cap ? 2 * ctx->parts_cap : 1024;
        int64_t *lens = realloc(ctx->part_len, (size_t)cap * sizeof(int64_t));
        if (!lens) return 0;
        ctx->part_len = lens;
        ctx->parts_cap = cap;
    }
    if (n) memcpy(ctx->raw + ctx->raw_len, data, (size_t)n);
    ctx->raw_len += n;
    ctx->part_len[ctx->nparts++] = n;
    return 1;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t); /* the clock of Python's time.perf_counter on Linux */
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void ps_set_forward(ps_ctx *ctx, void *socket) { ctx->fwd = socket; }
void ps_set_keep_blobs(ps_ctx *ctx, int keep) { ctx->keep_blobs = keep; }

/* The forward tallies since the last call (out[0] sent, out[1] dropped), reset. */
void ps_forward_counts(ps_ctx *ctx, int64_t *out) {
    out[0] = ctx->fwd_sent;
    out[1] = ctx->fwd_dropped;
    ctx->fwd_sent = ctx->fwd_dropped = 0;
}

/* Re-send part k of n on the forward socket: the first without blocking (a full queue or no
   reader drops the message, counted), the others right after it (queued whole); 0 once dropped. */
static int forward_part(ps_ctx *ctx, const void *data, size_t len, int64_t k, int64_t n) {
    int flags = (k + 1 < n ? PS_SNDMORE : 0) | (k == 0 ? PS_DONTWAIT : 0);
    if (ctx->send(ctx->fwd, data, len, flags) < 0) {
        ctx->fwd_dropped++;
        return 0;
    }
    if (k + 1 == n) ctx->fwd_sent++;
    return 1;
}

/*
 * Receive up to max_msgs messages without blocking. Per message i, rec[i*PS_REC + ...]:
 *   0 kind (1: image decoded into the arena; 0: raw, its parts in the raw buffer;
 *           2: raw but lost, the raw buffer could not grow: its parts were drained and dropped)
 *   1 series  2 frame  3 start_time  4 stop_time  5 real_time   (images)
 *   6 arena offset (bytes)  7 y  8 x  9 itemsize                 (images)
 *   10 first part index  11 number of parts                      (raw)
 *   10 blob offset  11 blob bytes: its compressed blob in the blob buffer (images; 11 = 0: not kept, out of memory)
 *   12 pixels at their type's largest value (0xFF, 0xFFFF, 0xFFFFFFFF: marked invalid, or saturated)  (images)
 *   1 = 1 and 7 y  8 x  9 itemsize: a raw image message that would have been decoded but the arena was full
 * received_at[i]: CLOCK_MONOTONIC seconds when its first part came off the socket.
 * ps_arena_used, ps_arena_miss: the arena bytes decoded into; the bytes of the largest frame marked 1 above (0: none).
 * Returns the number of messages, or -errno when the first receive failed other than EAGAIN.
 */
int ps_recv_batch(ps_ctx *ctx, void *socket, int max_msgs, int64_t *rec, double *received_at, unsigned char *arena,
                  int64_t arena_cap) {
    if (ctx->raw_cap > PS_RAW_KEEP) { /* the last drain's big raw messages were copied out: give their memory back */
        free(ctx->raw);
        ctx->raw = NULL;
        ctx->raw_cap = 0;
    }
    if (ctx->blobs_cap > PS_RAW_KEEP && ctx->blobs_len < ctx->blobs_cap / 4) { /* big frames fill it every drain: kept while used */
        free(ctx->blobs);
        ctx->blobs = NULL;
        ctx->blobs_cap = 0;
    }
    ctx->raw_len = 0;
    ctx->blobs_len = 0;
    ctx->nparts = 0;
    ctx->arena_miss = 0;
    int64_t arena_used = 0;
    ps_msg parts[4], extra;
    int n = 0;
    while (n < max_msgs) {
        ctx->init(&parts[0]);
        if (ctx->recv(&parts[0], socket, PS_DONTWAIT) < 0) {
            int e = ctx->err();
            ctx->close(&parts[0]);
            if (e == PS_EINTR) continue; /* a signal: try again, as pyzmq does */
            if (n == 0 && e != PS_EAGAIN) return -e;
            break;
        }
        double t = now_s();
        int np = 1, broken = 0;
        while (np < 4 && ctx->more(&parts[np - 1])) { /* the rest of a multipart message is there already (atomic delivery) */
            ctx->init(&parts[np]);
            if (ctx->recv(&parts[np], socket, 0) < 0) {
                ctx->close(&parts[np]);
                broken = 1;
                break;
            }
            np++;
        }
        int longer = !broken && np == 4 && ctx->more(&parts[3]);
        int64_t *r = rec + (int64_t)n * PS_REC;
        memset(r, 0, PS_REC * sizeof(int64_t));
        received_at[n] = t;
        image_head h;
        int decoded = 0;
        if (!broken && !longer && np == 4 &&
            parse_image(ctx->data(&parts[0]), ctx->size(&parts[0]), ctx->data(&parts[1]), ctx->size(&parts[1]), ctx->data(&parts[3]),
                        ctx->size(&parts[3]), &h) &&
            h.x >= 1 && h.y >= 1 && h.x <= PS_MAX_FRAME_PIXELS && h.y <= PS_MAX_FRAME_PIXELS && h.x * h.y <= PS_MAX_FRAME_PIXELS) {
            const unsigned char *blob = ctx->data(&parts[2]);
            int64_t size = (int64_t)ctx->size(&parts[2]), pixels = h.x * h.y, nbytes = pixels * h.itemsize;
            int64_t offset = (arena_used + 7) & ~(int64_t)7; /* 8-byte aligned: frames of whole 8-byte rows lie back to back */
            if (!(h.size == size && hash_ok(&h, blob, (size_t)size) && blob_ok(blob, size, pixels, h.itemsize))) {
                /* raw: the Python decoder names what is wrong */
            } else if (offset + nbytes > arena_cap) { /* raw, marked (only a frame that passed its checks): the caller makes room */
                if (nbytes > ctx->arena_miss) ctx->arena_miss = nbytes;
                r[1] = 1;
                r[7] = h.y;
                r[8] = h.x;
                r[9] = h.itemsize;
            } else {
                int64_t marks;
                if (decode_blob(ctx, blob + 12, size - 12, arena + offset, pixels, h.itemsize, &marks)) {
                    decoded = 1;
                    arena_used = offset + nbytes;
                    r[0] = 1;
                    r[1] = h.series;
                    r[2] = h.frame;
                    r[3] = h.times[0];
                    r[4] = h.times[1];
                    r[5] = h.times[2];
                    r[6] = offset;
                    r[7] = h.y;
                    r[8] = h.x;
                    r[9] = h.itemsize;
                    r[12] = marks;
                    if (ctx->keep_blobs && room(&ctx->blobs, &ctx->blobs_cap, ctx->blobs_len, size)) {
                        memcpy(ctx->blobs + ctx->blobs_len, blob, (size_t)size);
                        r[10] = ctx->blobs_len;
                        r[11] = size;
                        ctx->blobs_len += size;
                    }
                }
            }
        }
        if (ctx->fwd && !longer) /* the message is the parts held: forwarded as they are */
            for (int k = 0; k < np && forward_part(ctx, ctx->data(&parts[k]), ctx->size(&parts[k]), k, np); k++) {
            }
        int64_t raw_start = ctx->raw_len;
        if (!decoded) {
            int oom = 0;
            r[10] = ctx->nparts;
            for (int k = 0; k < np; k++)
                if (!oom) oom = !keep_part(ctx, ctx->data(&parts[k]), (int64_t)ctx->size(&parts[k]));
            for (int more = longer; more;) { /* parts 5...: kept one by one, and drained even when they cannot be kept */
                ctx->init(&extra);
                if (ctx->recv(&extra, socket, 0) < 0) {
                    ctx->close(&extra);
                    break;
                }
                if (!oom) oom = !keep_part(ctx, ctx->data(&extra), (int64_t)ctx->size(&extra));
                more = ctx->more(&extra);
                ctx->close(&extra);
            }
            r[11] = ctx->nparts - r[10];
            if (oom) r[0] = 2;
            if (ctx->fwd && longer) { /* a message of more than four parts: forwarded from the raw buffer it was kept in */
                if (oom) {
                    ctx->fwd_dropped++;
                } else {
                    const unsigned char *p = ctx->raw + raw_start;
                    for (int64_t k = 0; k < r[11] && forward_part(ctx, p, (size_t)ctx->part_len[r[10] + k], k, r[11]); k++)
                        p += ctx->part_len[r[10] + k];
                }
            }
        }
        for (int k = 0; k < np; k++) ctx->close(&parts[k]);
        n++;
    }
    ctx->arena_used = arena_used;
    return n;
}

/*
 * Send messages laid out back to back in `buf`: message i has nparts[i] parts, their
 * lengths in part_lens (in order). The first part of each message is sent without
 * blocking: when the socket cannot take it (no receiver, or its queue is full) the call
 * returns, so that the caller can wait or give up; the other parts of a message follow
 * it at once (a multipart message is queued whole). Returns the number of messages sent,
 * or -errno when the first could not be sent for another reason than EAGAIN.
 */
int ps_send_batch(ps_ctx *ctx, void *socket, const unsigned char *buf, const int64_t *part_lens, const int64_t *nparts, int nmsgs) {
    const unsigned char *p = buf;
    const int64_t *len = part_lens;
    for (int i = 0; i < nmsgs; i++) {
        for (int64_t k = 0; k < nparts[i]; k++) {
            int flags = (k + 1 < nparts[i] ? PS_SNDMORE : 0) | (k == 0 ? PS_DONTWAIT : 0);
            if (ctx->send(socket, p, (size_t)*len, flags) < 0) {
                int e = ctx->err();
                if (k == 0 && e == PS_EINTR) { /* a signal before the message: try it again */
                    k--;
                    continue;
                }
                /* the first part refused: the messages before went (the error, unless EAGAIN, comes again on the next call);
                   a later part refused is not expected (a multipart message is queued whole) */
                return i > 0 || (k == 0 && e == PS_EAGAIN) ? i : -e;
            }
            p += *len++;
        }
    }
    return nmsgs;
}
