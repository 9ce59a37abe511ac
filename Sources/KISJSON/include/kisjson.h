#ifndef KISGW_KISJSON_H
#define KISGW_KISJSON_H

// Reads the string fields kisgw needs out of a KIS REST answer with simdjson (C++), behind a C interface Swift can
// call. Every KIS quotation answer has one shape: envelope strings at the top (`rt_cd`, `msg_cd`, `msg1`), an
// optional object (`output1`, `output`) and an optional array of row objects (`output2`), with every value a
// JSON string. The caller names the fields it wants; the reader parses once and hands back views of the
// (unescaped, UTF-8 validated) strings, valid until the reader is used again or destroyed.
//
// Nothing here allocates per field: the views point into the reader's own buffers, which it keeps and reuses.

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kisjson_reader kisjson_reader;

/// One string value: `bytes == NULL` when the field is absent or JSON `null`.
typedef struct {
    const char *bytes;
    size_t length;
} kisjson_text;

/// What to read: NUL-terminated names. `head`/`rows` may be NULL (nothing read there).
typedef struct {
    const char *const *top;
    size_t top_count;
    const char *head;
    const char *const *head_fields;
    size_t head_count;
    const char *rows;
    const char *const *row_fields;
    size_t row_field_count;
} kisjson_shape;

/// What was read: `values` holds `top_count` texts, then `head_count`, then `row_field_count` per row.
typedef struct {
    const kisjson_text *values;
    size_t row_count;
    int head_present;  // the head object is there (not absent, not null)
    int rows_present;  // the rows array is there (not absent, not null)
} kisjson_table;

/// A reader for documents up to `max_bytes` long; NULL when out of memory.
kisjson_reader *kisjson_reader_create(size_t max_bytes);
void kisjson_reader_destroy(kisjson_reader *reader);

/// Parses `json` and reads `shape` from it into `table`. Returns 0, or non-zero with `*error` set to a message
/// owned by the reader (valid until its next use): 1 when the bytes are not JSON (or too long), 2 when the JSON
/// does not have the shape (the root is not an object, `head` is not an object, `rows` is not an array of
/// objects, a wanted field is neither a string nor null).
int kisjson_read_table(kisjson_reader *reader, const uint8_t *json, size_t length, const kisjson_shape *shape,
                       kisjson_table *table, const char **error);

#ifdef __cplusplus
}
#endif

#endif
