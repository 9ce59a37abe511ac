#ifndef KISGW_CHIREDIS_SHIM_H
#define KISGW_CHIREDIS_SHIM_H

// hiredis is the RESP codec: redisFormatCommandArgv formats commands and a
// redisReader (with our own reply-object functions) parses replies; SwiftNIO
// owns the sockets. Debian 12 ships 0.14.1 (RESP2), newer systems 1.x: differences are guarded with HIREDIS_MAJOR.
//
// Nothing here performs I/O: no hiredis connect/command function is reachable
// through these helpers, and Swift code must not call them directly either.
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <stddef.h>
#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

// Reply types. 0.14 knows the six RESP2 types only; 1.x adds RESP3 types,
// which a RESP2 connection (we never send HELLO 3) does not produce but which
// are mapped anyway so the Swift side has one switch for both versions.
#define KISGW_REPLY_STRING  REDIS_REPLY_STRING
#define KISGW_REPLY_ARRAY   REDIS_REPLY_ARRAY
#define KISGW_REPLY_INTEGER REDIS_REPLY_INTEGER
#define KISGW_REPLY_NIL     REDIS_REPLY_NIL
#define KISGW_REPLY_STATUS  REDIS_REPLY_STATUS
#define KISGW_REPLY_ERROR   REDIS_REPLY_ERROR
#if HIREDIS_MAJOR >= 1
#define KISGW_REPLY_DOUBLE  REDIS_REPLY_DOUBLE
#define KISGW_REPLY_BOOL    REDIS_REPLY_BOOL
#define KISGW_REPLY_MAP     REDIS_REPLY_MAP
#define KISGW_REPLY_SET     REDIS_REPLY_SET
#define KISGW_REPLY_ATTR    REDIS_REPLY_ATTR
#define KISGW_REPLY_PUSH    REDIS_REPLY_PUSH
#define KISGW_REPLY_BIGNUM  REDIS_REPLY_BIGNUM
#define KISGW_REPLY_VERB    REDIS_REPLY_VERB
#else
// Values no 0.14 reply carries.
#define KISGW_REPLY_DOUBLE  1007
#define KISGW_REPLY_BOOL    1008
#define KISGW_REPLY_MAP     1009
#define KISGW_REPLY_SET     1010
#define KISGW_REPLY_ATTR    1011
#define KISGW_REPLY_PUSH    1012
#define KISGW_REPLY_BIGNUM  1013
#define KISGW_REPLY_VERB    1014
#endif

/// Encodes one command as a RESP array of bulk strings into a buffer that
/// hiredis allocates; returns its length, or -1. Free with
/// kisgw_free_command. (0.14 returns int, 1.x long long.)
static inline long long kisgw_format_command(char *_Nullable *_Nonnull target, int argc,
                                              const char *_Nonnull *_Nonnull argv,
                                              const size_t *_Nonnull argvlen) {
    return (long long)redisFormatCommandArgv(target, argc, argv, argvlen);
}

static inline void kisgw_free_command(char *_Nullable cmd) {
    if (cmd != NULL) {
        redisFreeCommand(cmd);
    }
}

/// A reply reader that builds replies with the caller's functions (`fn` must
/// outlive the reader: hiredis keeps the pointer); every read task carries
/// `privdata`. hiredis calls `fn->freeObject` only for top-level objects (a
/// partly read reply on a protocol error, or when the reader is freed);
/// freeing nested objects is up to the caller's objects.
static inline redisReader *_Nullable kisgw_reader_create_with_functions(redisReplyObjectFunctions *_Nonnull fn,
                                                                         void *_Nullable privdata) {
    redisReader *reader = redisReaderCreateWithFunctions(fn);
    if (reader != NULL) {
        reader->privdata = privdata;
    }
    return reader;
}

static inline void kisgw_reader_free(redisReader *_Nullable reader) {
    if (reader != NULL) {
        redisReaderFree(reader);
    }
}

/// Returns REDIS_OK or REDIS_ERR.
static inline int kisgw_reader_feed(redisReader *_Nonnull reader, const char *_Nonnull buf, size_t len) {
    return redisReaderFeed(reader, buf, len);
}

/// Returns REDIS_OK with *object NULL when no complete reply is buffered yet,
/// REDIS_OK with the top-level object the functions built (now owned by the
/// caller), or REDIS_ERR on a protocol error (see kisgw_reader_errstr).
static inline int kisgw_reader_get_object(redisReader *_Nonnull reader, void *_Nullable *_Nonnull object) {
    return redisReaderGetReply(reader, object);
}

static inline const char *_Nonnull kisgw_reader_errstr(const redisReader *_Nonnull reader) {
    return reader->errstr;
}

// Not hiredis: glibc's <malloc.h> is not part of Swift's Glibc module, and the
// Redis module's ProcessHeap needs mallopt. Keeps up to `trim_threshold` free
// bytes at the top of each malloc arena instead of returning them to the
// kernel, grows arenas by `top_pad` extra bytes, and serves allocations below
// `mmap_threshold` from the arenas (setting either of the first two stops
// glibc raising its mmap threshold by itself from 128 KB, so it is set too).
// Returns 0 where the C library is not glibc.
static inline int kisgw_heap_keep_freed(int trim_threshold, int top_pad, int mmap_threshold) {
#if defined(__GLIBC__)
    return mallopt(M_TRIM_THRESHOLD, trim_threshold) && mallopt(M_TOP_PAD, top_pad)
        && mallopt(M_MMAP_THRESHOLD, mmap_threshold);
#else
    (void)trim_threshold;
    (void)top_pad;
    (void)mmap_threshold;
    return 0;
#endif
}

#endif
