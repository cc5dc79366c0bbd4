/* ptychoscan: MD5 (RFC 1321) of the compiled receive loop (md5.c). */
#ifndef PS_MD5_H
#define PS_MD5_H

#include <stddef.h>

/* The md5 digest of the n bytes at data (any alignment; data may be NULL when n is 0) into out[16]. */
void ps_md5(const unsigned char *data, size_t n, unsigned char out[16]);

#endif
