/* event.h - a decoded user-journey event and the decoder that makes it.
 * The decoder turns one Kafka message (Segment-spec JSON, or another envelope
 * mapped by configuration) into an event_t, or into a reason why not, which
 * the caller sends to the dead-letter queue. */
#ifndef BENEFITD_EVENT_H
#define BENEFITD_EVENT_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

typedef struct event {
    cJSON *root;              /* owned: the whole parsed message */
    void *arena;              /* owned: where root's nodes live (decode.c); NULL: root is heap */
    const char *type;         /* "track" | "identify" (points into root) */
    const char *name;         /* track: event name; identify: "identify" */
    const char *user_id;      /* userId, else anonymousId */
    char message_id[80];      /* messageId, or "h-<hash of payload>" when absent */
    char user_buf[72];        /* holds a numeric user id as text */
    int64_t ts_ms;            /* event time, epoch ms */
    const cJSON *properties;  /* may be NULL */
    const cJSON *context;     /* may be NULL */
    const cJSON *traits;      /* identify traits (or context.traits); may be NULL */
    const cJSON *user;        /* the member's profile for user.*; may be NULL */
    int32_t partition;        /* Kafka coordinates, -1 in replay */
    int64_t offset;           /* replay: line number */
} event_t;

/* Field paths of the envelope; defaults are Segment's. Dotted paths reach
 * into nested objects ("meta.user.id"). */
typedef struct decode_map {
    const char *type;         /* "type" */
    const char *event;        /* "event" */
    const char *user_id;      /* "userId" */
    const char *anonymous_id; /* "anonymousId" */
    const char *message_id;   /* "messageId" */
    const char *timestamp;    /* "timestamp" */
    const char *properties;   /* "properties" */
    const char *context;      /* "context" */
    const char *traits;       /* "traits" */
    const char *default_type; /* used when the type field is absent: NULL = error */
} decode_map_t;

typedef struct decoder {
    decode_map_t map;
    size_t max_bytes;         /* larger messages are rejected before parsing */
    int max_depth;            /* deeper JSON is rejected (hostile nesting) */
} decoder_t;

#define DECODE_DEFAULT_MAX_BYTES 65536
#define DECODE_DEFAULT_MAX_DEPTH 32

/* Fills a decoder with Segment's field names and the default limits. */
void decoder_init_default(decoder_t *d);

/* Decodes one message. On success returns 0 and fills ev (caller calls
 * event_clear). On failure returns -1 and writes a short reason ("not JSON",
 * "no user id", "no event name", "too large: N bytes", ...) into reason.
 * now_ms is used when the event carries no timestamp. */
int decode_event(const decoder_t *d, const char *buf, size_t len, int64_t now_ms, event_t *ev, char *reason,
                 size_t reason_len);
void event_clear(event_t *ev);

#endif
