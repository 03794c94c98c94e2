/*
 * uuid.c - RFC 4122 UUIDs.
 *
 * Owns: a thread-local 4 KiB pool refilled with getrandom() (one syscall per
 * 256 v4 ids), invalidated in the child after fork() so parent and child never
 * share ids; SHA-1 over namespace||name for v5.
 * Must never: fall back to rand()/time-based randomness, or reuse pool bytes
 * (consumed bytes are wiped).
 */
#include "util/uuid.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <openssl/evp.h>

const unsigned char UUID_NS_DNS[16] = {0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1,
                                       0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8};

#define UUID_POOL_SIZE 4096

static _Thread_local unsigned char uuid_pool[UUID_POOL_SIZE];
static _Thread_local size_t uuid_pool_pos = UUID_POOL_SIZE; /* empty */
static pthread_once_t uuid_atfork_once = PTHREAD_ONCE_INIT;

/* Runs in the child, in the thread that called fork(): its copy of the
 * pool is the parent's, so drop it. */
static void uuid_atfork_child(void)
{
    uuid_pool_pos = UUID_POOL_SIZE;
}

static void uuid_atfork_register(void)
{
    pthread_atfork(NULL, NULL, uuid_atfork_child);
}

static void uuid_fill_random(unsigned char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        break;
    }
    if (got == n) return;
    /* getrandom unavailable (ENOSYS under an old seccomp profile): /dev/urandom */
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    while (fd >= 0 && got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r > 0)
            got += (size_t)r;
        else if (r < 0 && errno == EINTR)
            continue;
        else
            break;
    }
    if (fd >= 0) close(fd);
    if (got == n) return;
    /* No randomness at all: ids would collide or be guessable. */
    fputs("hotplex: uuid: no source of randomness\n", stderr);
    abort();
}

static const char uuid_hex[] = "0123456789abcdef";

void uuid_format(char out[UUID_STR_LEN], const unsigned char u[16])
{
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = uuid_hex[u[i] >> 4];
        *o++ = uuid_hex[u[i] & 15];
    }
    *o = '\0';
}

void uuid_v4(char out[UUID_STR_LEN])
{
    unsigned char u[16];
    if (uuid_pool_pos > UUID_POOL_SIZE - 16) {
        pthread_once(&uuid_atfork_once, uuid_atfork_register);
        uuid_fill_random(uuid_pool, UUID_POOL_SIZE);
        uuid_pool_pos = 0;
    }
    memcpy(u, uuid_pool + uuid_pool_pos, 16);
    memset(uuid_pool + uuid_pool_pos, 0, 16);
    uuid_pool_pos += 16;
    u[6] = (unsigned char)((u[6] & 0x0F) | 0x40); /* version 4 */
    u[8] = (unsigned char)((u[8] & 0x3F) | 0x80); /* variant 10xx */
    uuid_format(out, u);
}

int uuid_v5_r(char out[UUID_STR_LEN], const unsigned char ns[16], const void *name, size_t n)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx) {
        ok = EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 && EVP_DigestUpdate(ctx, ns, 16) == 1 &&
             (n == 0 || EVP_DigestUpdate(ctx, name, n) == 1) &&
             EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen >= 16;
        EVP_MD_CTX_free(ctx);
    }
    if (!ok) {
        out[0] = '\0';
        return -ENOMEM;
    }
    md[6] = (unsigned char)((md[6] & 0x0F) | 0x50); /* version 5 */
    md[8] = (unsigned char)((md[8] & 0x3F) | 0x80); /* variant 10xx */
    uuid_format(out, md);
    return 0;
}

void uuid_v5(char out[UUID_STR_LEN], const unsigned char ns[16], const void *name, size_t n)
{
    (void)uuid_v5_r(out, ns, name, n);
}

static int uuid_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool uuid_parse(const char *s, unsigned char out[16])
{
    unsigned char u[16];
    int k = 0;
    if (!s) return false;
    for (int i = 0; i < 36; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return false;
            continue;
        }
        int hi = uuid_hexval(c); /* a NUL ends the loop here: it is not hex */
        if (hi < 0) return false;
        int lo = uuid_hexval((unsigned char)s[++i]);
        if (lo < 0) return false;
        u[k++] = (unsigned char)(hi << 4 | lo);
    }
    if (s[36] != '\0') return false;
    if (out) memcpy(out, u, 16);
    return true;
}

bool uuid_is_valid(const char *s)
{
    return uuid_parse(s, NULL);
}
