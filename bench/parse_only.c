/* parse_only - the parse-only rate of `make bench`: the same events, the same
 * JSON library as the daemon (cJSON), on one core, nothing else: read a line,
 * cJSON_ParseWithLength, cJSON_Delete. Replay's rate is compared with it.
 *
 *   parse_only EVENTS.jsonl
 *
 * Prints one JSON object: events, seconds (the whole loop, getline included,
 * as replay reads its file the same way), rate, ns_per_event. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: parse_only EVENTS.jsonl\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long n = 0, bad = 0;
    double t0 = now_s();
    while ((len = getline(&line, &cap, f)) != -1) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (!len) continue;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
        if (!j) bad++;
        cJSON_Delete(j);
        n++;
    }
    double secs = now_s() - t0;
    free(line);
    fclose(f);
    printf("{\"events\":%ld,\"bad\":%ld,\"seconds\":%.3f,\"rate\":%.0f,\"ns_per_event\":%.0f}\n", n, bad, secs,
           secs > 0 ? (double)n / secs : 0.0, n ? secs * 1e9 / (double)n : 0.0);
    return 0;
}
