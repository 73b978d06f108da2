/* kafka_source.h - the Kafka consumer-group source.
 * The consumer's queue wakes the libevent loop through a pipe
 * (rd_kafka_queue_io_event_enable): no thread, no busy polling.
 *
 * Offsets: auto *store* is off. Every message gets a token with a pending
 * count; the pipeline holds the token once per Redis write it starts and
 * releases it on the acknowledgement. A partition's stored offset advances
 * only over a prefix of messages whose tokens are all released, so a
 * committed offset never passes an unacknowledged write. librdkafka's
 * auto-commit then commits what was stored. */
#ifndef BENEFITD_KAFKA_SOURCE_H
#define BENEFITD_KAFKA_SOURCE_H

#include <stdint.h>
#include <event2/event.h>
#include <librdkafka/rdkafka.h>
#include "../core/config.h"

typedef struct kafka_source kafka_source_t;
typedef struct offset_token offset_token_t;

typedef struct source_handlers {
    /* One call per message, in partition order. tok is held for the call. */
    void (*on_message)(void *ud, const rd_kafka_message_t *m, offset_token_t *tok);
    /* After each assignment change, with the number of partitions now owned. */
    void (*on_assignment)(void *ud, int npartitions);
    /* Optional: after each batch's messages were dispatched (before their
     * offsets are stored), e.g. to send writes batched across messages. */
    void (*on_batch_end)(void *ud);
    /* Optional: the consumer has read everything the partition held (in
     * order after its last message): what happened up to now is known. */
    void (*on_partition_eof)(void *ud, const char *topic, int32_t partition);
} source_handlers_t;

/* Creates the consumer (not yet subscribed). NULL with a message in err. */
kafka_source_t *kafka_source_new(struct event_base *base, const config_t *cfg, source_handlers_t h, void *ud,
                                 char *err, size_t errlen);
/* Subscribes to the configured topics and starts reading. */
int kafka_source_start(kafka_source_t *s, char *err, size_t errlen);
/* Backpressure: paused partitions fetch nothing until resumed. */
void kafka_source_set_paused(kafka_source_t *s, int paused);
/* Flow control while too many writes are in flight: stop reading the local
 * queue without pausing the partitions, which would throw away librdkafka's
 * prefetched messages and fetch them again on resume. */
void kafka_source_hold_reading(kafka_source_t *s, int held);
/* Stop delivering messages (shutdown); later messages are left for redelivery. */
void kafka_source_stop_reading(kafka_source_t *s);
/* Stores what is done, commits, leaves the group. Blocks up to a few seconds. */
void kafka_source_close(kafka_source_t *s);
void kafka_source_free(kafka_source_t *s);

/* NULL is a no-op: writes that no message caused (a plugin revisit) hold nothing. */
void kafka_source_hold(offset_token_t *t);
void kafka_source_release(offset_token_t *t);

/* The partitions owned now (as of the last on_assignment): fn once for each. */
void kafka_source_each_partition(const kafka_source_t *s, void (*fn)(void *ud, const char *topic, int32_t partition),
                                 void *ud);

/* Consumer lag of an owned partition: the partition's high watermark (as of
 * the last fetch response; no broker round trip) minus the consumer's
 * position. Returns 0 and sets *lag, or -1 when either is not known yet. */
int kafka_source_lag(const kafka_source_t *s, const char *topic, int32_t partition, int64_t *lag);

uint64_t kafka_source_consumed(const kafka_source_t *s);
int kafka_source_assigned(const kafka_source_t *s);

#endif
