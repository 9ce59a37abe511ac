#ifndef KISGW_CHIREDIS_SHIM_H
#define KISGW_CHIREDIS_SHIM_H

// hiredis is used only as the RESP codec (redisFormatCommandArgv to encode,
// redisReader* to decode); SwiftNIO owns the sockets. Debian 12 ships 0.14.1
// (RESP2), newer systems 1.x: differences are guarded with HIREDIS_MAJOR.
//
// Nothing here performs I/O: no hiredis connect/command function is reachable
// through these helpers, and Swift code must not call them directly either.
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <stddef.h>
#include <stdlib.h>

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

/// A reply reader with hiredis's default reply objects.
static inline redisReader *_Nullable kisgw_reader_create(void) {
    return redisReaderCreate();
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

/// Returns REDIS_OK with *reply NULL when no complete reply is buffered yet,
/// REDIS_OK with a reply (free with kisgw_free_reply), or REDIS_ERR on a
/// protocol error (see kisgw_reader_errstr).
static inline int kisgw_reader_get_reply(redisReader *_Nonnull reader, redisReply *_Nullable *_Nonnull reply) {
    void *out = NULL;
    int rc = redisReaderGetReply(reader, &out);
    *reply = (redisReply *)out;
    return rc;
}

static inline const char *_Nonnull kisgw_reader_errstr(const redisReader *_Nonnull reader) {
    return reader->errstr;
}

static inline void kisgw_free_reply(redisReply *_Nullable reply) {
    if (reply != NULL) {
        freeReplyObject(reply);
    }
}

static inline int kisgw_reply_type(const redisReply *_Nonnull reply) { return reply->type; }
static inline long long kisgw_reply_integer(const redisReply *_Nonnull reply) { return reply->integer; }
static inline size_t kisgw_reply_len(const redisReply *_Nonnull reply) { return reply->len; }
static inline const char *_Nullable kisgw_reply_str(const redisReply *_Nonnull reply) { return reply->str; }
static inline size_t kisgw_reply_elements(const redisReply *_Nonnull reply) { return reply->elements; }
static inline redisReply *_Nonnull kisgw_reply_element(const redisReply *_Nonnull reply, size_t i) {
    return reply->element[i];
}

/// The value of a RESP3 double (1.x); 0.14 never produces one.
static inline double kisgw_reply_double(const redisReply *_Nonnull reply) {
#if HIREDIS_MAJOR >= 1
    return reply->dval;
#else
    return reply->str != NULL ? strtod(reply->str, NULL) : 0.0;
#endif
}

#endif
