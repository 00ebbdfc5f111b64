/* A minimal msgpack writer for the batch encoder. Callers reserve room for a
 * whole record first (RG_MAX_ENCODED_RECORD), so single writes skip checks. */
#ifndef RG_MSGPACK_H
#define RG_MSGPACK_H

#include <stdint.h>
#include <string.h>

struct mp_writer {
	unsigned char *buf;
	size_t len;
	size_t cap;
};

static inline void mp_byte(struct mp_writer *w, unsigned char b) { w->buf[w->len++] = b; }

static inline void mp_be16(struct mp_writer *w, uint16_t v)
{
	w->buf[w->len++] = v >> 8;
	w->buf[w->len++] = v;
}

static inline void mp_be32(struct mp_writer *w, uint32_t v)
{
	for (int s = 24; s >= 0; s -= 8)
		w->buf[w->len++] = v >> s;
}

static inline void mp_be64(struct mp_writer *w, uint64_t v)
{
	for (int s = 56; s >= 0; s -= 8)
		w->buf[w->len++] = v >> s;
}

static inline void mp_map(struct mp_writer *w, uint32_t n)
{
	if (n < 16) {
		mp_byte(w, 0x80 | n);
	} else {
		mp_byte(w, 0xde);
		mp_be16(w, n);
	}
}

static inline void mp_array(struct mp_writer *w, uint32_t n)
{
	if (n < 16) {
		mp_byte(w, 0x90 | n);
	} else if (n < 65536) {
		mp_byte(w, 0xdc);
		mp_be16(w, n);
	} else {
		mp_byte(w, 0xdd);
		mp_be32(w, n);
	}
}

static inline void mp_uint(struct mp_writer *w, uint64_t v)
{
	if (v < 128) {
		mp_byte(w, v);
	} else if (v < 65536) {
		mp_byte(w, 0xcd);
		mp_be16(w, v);
	} else if (v <= 0xffffffffULL) {
		mp_byte(w, 0xce);
		mp_be32(w, v);
	} else {
		mp_byte(w, 0xcf);
		mp_be64(w, v);
	}
}

static inline void mp_int(struct mp_writer *w, int64_t v)
{
	if (v >= 0) {
		mp_uint(w, v);
	} else if (v >= -32) {
		mp_byte(w, (unsigned char)(int8_t)v);
	} else if (v >= INT32_MIN) {
		mp_byte(w, 0xd2);
		mp_be32(w, (uint32_t)(int32_t)v);
	} else {
		mp_byte(w, 0xd3);
		mp_be64(w, (uint64_t)v);
	}
}

static inline void mp_bool(struct mp_writer *w, int v) { mp_byte(w, v ? 0xc3 : 0xc2); }
static inline void mp_nil(struct mp_writer *w) { mp_byte(w, 0xc0); }

static inline void mp_str_header(struct mp_writer *w, uint32_t n)
{
	if (n < 32) {
		mp_byte(w, 0xa0 | n);
	} else if (n < 256) {
		mp_byte(w, 0xd9);
		mp_byte(w, n);
	} else if (n < 65536) {
		mp_byte(w, 0xda);
		mp_be16(w, n);
	} else {
		mp_byte(w, 0xdb);
		mp_be32(w, n);
	}
}

/* Bytes known to be valid UTF-8 (literals, formatted numbers and addresses). */
static inline void mp_str_raw(struct mp_writer *w, const char *s, uint32_t n)
{
	mp_str_header(w, n);
	memcpy(w->buf + w->len, s, n);
	w->len += n;
}

#define mp_lit(w, s) mp_str_raw(w, s, sizeof(s) - 1)

static inline void mp_bin(struct mp_writer *w, const void *p, uint32_t n)
{
	if (n < 256) {
		mp_byte(w, 0xc4);
		mp_byte(w, n);
	} else if (n < 65536) {
		mp_byte(w, 0xc5);
		mp_be16(w, n);
	} else {
		mp_byte(w, 0xc6);
		mp_be32(w, n);
	}
	memcpy(w->buf + w->len, p, n);
	w->len += n;
}

#endif
