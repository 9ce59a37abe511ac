// The KIS answer reader behind kisjson.h (simdjson comes from the system: libsimdjson-dev): simdjson's DOM parser (reused across documents, so its buffers are
// allocated once), then one pass over the root, the head object and every row, matching keys to the wanted names.

#include "kisjson.h"

#include <simdjson.h>

#include <new>
#include <string>
#include <string_view>
#include <vector>

struct kisjson_reader {
    simdjson::dom::parser parser;
    std::vector<kisjson_text> values;
    std::vector<std::string_view> names;
    std::vector<char> seen;
    std::string message;
    explicit kisjson_reader(size_t max_bytes) : parser(max_bytes) {}
};

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

const char *describe(element_type type) {
    switch (type) {
    case element_type::ARRAY: return "an array";
    case element_type::OBJECT: return "an object";
    case element_type::INT64:
    case element_type::UINT64:
    case element_type::DOUBLE: return "a number";
    case element_type::STRING: return "a string";
    case element_type::BOOL: return "a boolean";
    case element_type::NULL_VALUE: return "null";
    }
    return "a value";
}

/// An array's item, for messages: `output2[3]`.
std::string item(const char *container, long index) {
    return std::string(container) + "[" + std::to_string(index) + "]";
}

/// Where a value sits, for messages: `rt_cd`, `output1.stck_prpr`, `output2[3].stck_clpr`.
std::string place(const char *container, long index, std::string_view field) {
    std::string s;
    if (container) s = (index >= 0 ? item(container, index) : std::string(container)) + ".";
    s.append(field.data(), field.size());
    return s;
}

/// Reads the wanted fields of `object` into `out[0 ..< names.size()]`; false with a message on a non-string value.
/// A key that appears twice counts the first time only, as with Foundation's `JSONDecoder`.
bool read_fields(kisjson_reader *r, simdjson::dom::object object, const std::string_view *names, size_t count,
                 kisjson_text *out, const char *container, long index) {
    r->seen.assign(count, 0);
    for (auto field : object) {
        for (size_t i = 0; i < count; i++) {
            if (field.key != names[i]) continue;
            if (r->seen[i]) break;
            r->seen[i] = 1;
            element_type type = field.value.type();
            if (type == element_type::STRING) {
                std::string_view text;
                if (field.value.get_string().get(text) != simdjson::SUCCESS) {
                    r->message = place(container, index, field.key) + " is not a readable string";
                    return false;
                }
                out[i] = kisjson_text{text.data(), text.size()};
            } else if (type == element_type::NULL_VALUE) {
                out[i] = kisjson_text{nullptr, 0};
            } else {
                r->message = place(container, index, field.key) + " is " + describe(type) + ", not a string";
                return false;
            }
            break;
        }
    }
    return true;
}

int fail(kisjson_reader *r, int code, std::string message, const char **error) {
    r->message = std::move(message);
    *error = r->message.c_str();
    return code;
}

int read_table(kisjson_reader *r, const uint8_t *json, size_t length, const kisjson_shape *shape,
               kisjson_table *table, const char **error) {
    element root;
    auto code = r->parser.parse(json, length, true).get(root);
    if (code != simdjson::SUCCESS) {
        return fail(r, 1, std::string("not JSON: ") + simdjson::error_message(code), error);
    }
    simdjson::dom::object top;
    if (root.get_object().get(top) != simdjson::SUCCESS) {
        return fail(r, 2, std::string("the answer is ") + describe(root.type()) + ", not an object", error);
    }

    // The wanted names as views, once per document: top, head fields, row fields.
    const size_t fixed = shape->top_count + shape->head_count;
    r->names.clear();
    for (size_t i = 0; i < shape->top_count; i++) r->names.emplace_back(shape->top[i]);
    for (size_t i = 0; i < shape->head_count; i++) r->names.emplace_back(shape->head_fields[i]);
    for (size_t i = 0; i < shape->row_field_count; i++) r->names.emplace_back(shape->row_fields[i]);
    const std::string_view *top_names = r->names.data();
    const std::string_view *head_names = top_names + shape->top_count;
    const std::string_view *row_names = head_names + shape->head_count;
    const std::string_view head_name = shape->head ? std::string_view(shape->head) : std::string_view();
    const std::string_view rows_name = shape->rows ? std::string_view(shape->rows) : std::string_view();

    r->values.assign(fixed, kisjson_text{nullptr, 0});
    r->message.clear();
    if (!read_fields(r, top, top_names, shape->top_count, r->values.data(), nullptr, -1)) {
        return fail(r, 2, r->message, error);
    }
    table->head_present = 0;
    table->rows_present = 0;
    table->row_count = 0;

    element head, rows;
    bool has_head = false, has_rows = false;
    for (auto field : top) {
        // The first of repeated keys counts, as with Foundation's `JSONDecoder`.
        if (shape->head && !has_head && field.key == head_name) { head = field.value; has_head = true; }
        if (shape->rows && !has_rows && field.key == rows_name) { rows = field.value; has_rows = true; }
    }
    if (has_head && head.type() != element_type::NULL_VALUE) {
        simdjson::dom::object object;
        if (head.get_object().get(object) != simdjson::SUCCESS) {
            return fail(r, 2, std::string(shape->head) + " is " + describe(head.type()) + ", not an object", error);
        }
        if (!read_fields(r, object, head_names, shape->head_count, r->values.data() + shape->top_count,
                         shape->head, -1)) {
            return fail(r, 2, r->message, error);
        }
        table->head_present = 1;
    }
    if (has_rows && rows.type() != element_type::NULL_VALUE) {
        simdjson::dom::array array;
        if (rows.get_array().get(array) != simdjson::SUCCESS) {
            return fail(r, 2, std::string(shape->rows) + " is " + describe(rows.type()) + ", not an array", error);
        }
        const size_t width = shape->row_field_count;
        long index = 0;
        for (element row : array) {
            simdjson::dom::object object;
            if (row.get_object().get(object) != simdjson::SUCCESS) {
                return fail(r, 2, item(shape->rows, index) + " is " + describe(row.type()) + ", not an object",
                            error);
            }
            const size_t at = r->values.size();
            r->values.resize(at + width, kisjson_text{nullptr, 0});
            if (!read_fields(r, object, row_names, width, r->values.data() + at, shape->rows, index)) {
                return fail(r, 2, r->message, error);
            }
            index++;
        }
        table->rows_present = 1;
        table->row_count = size_t(index);
    }
    table->values = r->values.data();
    return 0;
}

}  // namespace

extern "C" {

kisjson_reader *kisjson_reader_create(size_t max_bytes) {
    return new (std::nothrow) kisjson_reader(max_bytes);
}

void kisjson_reader_destroy(kisjson_reader *reader) { delete reader; }

int kisjson_read_table(kisjson_reader *reader, const uint8_t *json, size_t length, const kisjson_shape *shape,
                       kisjson_table *table, const char **error) {
    // Nothing may unwind into Swift: the messages here are static, as building one could throw again.
    try {
        return read_table(reader, json, length, shape, table, error);
    } catch (const std::bad_alloc &) {
        *error = "out of memory reading the answer";
        return 1;
    } catch (...) {
        *error = "the answer could not be read";
        return 1;
    }
}

}
