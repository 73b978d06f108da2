/* fuzz_decode.c - libFuzzer target for the event decoder (issue 6, item 5).
 * Every input is decoded twice: with Segment's field names and the default
 * limits, and with a remapped envelope (dotted paths, a default type) and
 * tight limits, so the size and depth refusals are reached with small
 * inputs too. A decoded event must satisfy what the rest of the pipeline
 * relies on; anything else must come back as a short reason for the
 * dead-letter queue. Build and run: `make fuzz-build fuzz-run`. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../daemon/decode/event.h"

static void check(const event_t *ev, int rc, const char *reason) {
    if (rc != 0) {
        /* A reason is always given, NUL-terminated, and the event holds nothing. */
        if (!reason[0] || memchr(reason, '\0', 128) == NULL || ev->root) abort();
        return;
    }
    if (!ev->root || !ev->type || !ev->name || !ev->user_id) abort();
    if (strcmp(ev->type, "track") && strcmp(ev->type, "identify")) abort();
    if (!ev->name[0] || strlen(ev->name) > 256) abort();
    if (!ev->user_id[0] || strlen(ev->user_id) > 256) abort();
    if (!memchr(ev->message_id, '\0', sizeof ev->message_id) || !ev->message_id[0]) abort();
    if (ev->properties && !cJSON_IsObject(ev->properties)) abort();
    if (ev->context && !cJSON_IsObject(ev->context)) abort();
    if (ev->traits && !cJSON_IsObject(ev->traits)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A copy of exactly size bytes, so reading past the message is caught. */
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);

    decoder_t d;
    decoder_init_default(&d);
    event_t ev;
    char reason[128];
    int rc = decode_event(&d, buf, size, 1764000000000LL, &ev, reason, sizeof reason);
    check(&ev, rc, reason);
    event_clear(&ev);

    decoder_t m;
    decoder_init_default(&m);
    m.map.type = "meta.kind";
    m.map.event = "meta.name";
    m.map.user_id = "meta.user.id";
    m.map.anonymous_id = "meta.anon";
    m.map.message_id = "meta.id";
    m.map.timestamp = "meta.at";
    m.map.properties = "data";
    m.map.context = "meta.ctx";
    m.map.traits = "data.traits";
    m.map.default_type = "track";
    m.max_bytes = 2048;
    m.max_depth = 6;
    rc = decode_event(&m, buf, size, 0, &ev, reason, sizeof reason);
    check(&ev, rc, reason);
    event_clear(&ev);

    free(buf);
    return 0;
}
