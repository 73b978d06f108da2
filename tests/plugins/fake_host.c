/* fake_host.c - the in-memory bd_host of the plugin tests (fake_host.h). */
#include "fake_host.h"

#include <ctype.h>
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

struct bd_ctx {
    const char *user;
    long long now_ms;
    const char *event_name;    /* NULL in on_revisit */
    long long event_time_ms;
    cJSON *event;              /* NULL in on_revisit */
};

typedef struct member {
    char *user;
    cJSON *traits;
    long long revisit_due;     /* pending, -1 none */
    long long revisit_last;    /* earliest asked for in the last callback, -1 none */
} member;

typedef struct wentry {
    char *set, *key, *member;
    long long ts;
} wentry;

static member *g_members;
static size_t g_nmembers;
static wentry *g_win;
static size_t g_nwin;
static fh_emit *g_emits;
static int g_nemits;
static fh_block *g_blocks;
static int g_nblocks;
static fh_log *g_logs;
static int g_nlogs;
static cJSON *g_grave;         /* replaced trait values, freed when the callback ends */
static bd_ctx *g_cur;          /* the callback in progress */
static int g_revisit_replace;   /* 0: the earliest request wins (the header); 1: the last replaces (ZADD) */
static int g_violations;
static char g_violation[256];

static char *xstrdup(const char *s) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) abort();
    return d;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) abort();
    return q;
}

static void violation(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_violation, sizeof g_violation, fmt, ap);
    va_end(ap);
    g_violations++;
    fprintf(stderr, "fake_host: contract breach: %s\n", g_violation);
}

static int in_callback(const bd_ctx *c, const char *what) {
    if (!c || c != g_cur) {
        violation("%s called outside its callback", what);
        return 0;
    }
    return 1;
}

static member *find_member(const char *user, int create) {
    for (size_t i = 0; i < g_nmembers; i++)
        if (strcmp(g_members[i].user, user) == 0) return &g_members[i];
    if (!create) return NULL;
    g_members = xrealloc(g_members, (g_nmembers + 1) * sizeof *g_members);
    member *m = &g_members[g_nmembers++];
    m->user = xstrdup(user);
    m->traits = cJSON_CreateObject();
    m->revisit_due = -1;
    m->revisit_last = -1;
    return m;
}

static bd_value value_of(const cJSON *j) {
    bd_value v = {0};
    if (!j) return v;
    if (cJSON_IsNull(j)) v.kind = BD_NULL;
    else if (cJSON_IsBool(j)) { v.kind = BD_BOOL; v.b = cJSON_IsTrue(j); }
    else if (cJSON_IsNumber(j)) { v.kind = BD_NUM; v.num = j->valuedouble; }
    else if (cJSON_IsString(j)) { v.kind = BD_STR; v.str = j->valuestring; }
    return v;   /* objects and arrays: missing, as expressions see them */
}

static cJSON *json_of(bd_value v) {
    switch (v.kind) {
    case BD_NULL: return cJSON_CreateNull();
    case BD_BOOL: return cJSON_CreateBool(v.b);
    case BD_NUM: return cJSON_CreateNumber(v.num);
    case BD_STR: return cJSON_CreateString(v.str ? v.str : "");
    default: return NULL;
    }
}

/* --- the bd_host callbacks ------------------------------------------------ */

static void h_log(int level, const char *plugin, const char *event, const char *text) {
    g_logs = xrealloc(g_logs, (size_t)(g_nlogs + 1) * sizeof *g_logs);
    fh_log *l = &g_logs[g_nlogs++];
    l->level = level;
    l->plugin = xstrdup(plugin ? plugin : "");
    l->event = xstrdup(event ? event : "");
    l->text = xstrdup(text ? text : "");
    if (getenv("FH_VERBOSE")) fprintf(stderr, "log %d event=%s plugin=%s %s\n", level, l->event, l->plugin, l->text);
}

/* As daemon/core/util.c parse_duration_ms: digits then ms|s|m|h|d|w. */
static long long h_parse_duration_ms(const char *s) {
    if (!s) return -1;
    while (isspace((unsigned char)*s)) s++;
    if (!isdigit((unsigned char)*s)) return -1;
    char *end;
    long long n = strtoll(s, &end, 10);
    if (n < 0 || n > 100000000LL) return -1;
    long long mult;
    if (strncmp(end, "ms", 2) == 0) { mult = 1; end += 2; }
    else {
        switch (*end) {
        case 's': mult = 1000; break;
        case 'm': mult = 60000; break;
        case 'h': mult = 3600000; break;
        case 'd': mult = 86400000; break;
        case 'w': mult = 7 * 86400000LL; break;
        default: return -1;
        }
        end++;
    }
    while (isspace((unsigned char)*end)) end++;
    if (*end) return -1;
    return n * mult;
}

static long long h_now_ms(const bd_ctx *c) { return in_callback(c, "now_ms") ? c->now_ms : 0; }
static const char *h_user_id(const bd_ctx *c) { return in_callback(c, "user_id") ? c->user : ""; }
static const char *h_event_name(const bd_ctx *c) { return in_callback(c, "event_name") ? c->event_name : NULL; }
static long long h_event_time_ms(const bd_ctx *c) {
    return in_callback(c, "event_time_ms") && c->event ? c->event_time_ms : 0;
}

static bd_value h_event_get(const bd_ctx *c, const char *path) {
    bd_value none = {0};
    if (!in_callback(c, "event_get") || !c->event || !path) return none;
    const cJSON *j = c->event;
    char seg[256];
    const char *p = path;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n == 0 || n >= sizeof seg || !cJSON_IsObject(j)) return none;
        memcpy(seg, p, n);
        seg[n] = 0;
        j = cJSON_GetObjectItemCaseSensitive(j, seg);
        if (!j) return none;
        p += n;
        if (*p == '.') p++;
    }
    return value_of(j);
}

static bd_value h_trait_get(const bd_ctx *c, const char *name) {
    bd_value none = {0};
    if (!in_callback(c, "trait_get") || !name) return none;
    member *m = find_member(c->user, 1);
    return value_of(cJSON_GetObjectItemCaseSensitive(m->traits, name));
}

static void h_trait_set(bd_ctx *c, const char *name, bd_value v) {
    if (!in_callback(c, "trait_set")) return;
    if (!name || !*name) { violation("trait_set without a name"); return; }
    if (v.kind == BD_STR && !v.str) { violation("trait_set %s: BD_STR with NULL", name); return; }
    member *m = find_member(c->user, 1);
    cJSON *old = cJSON_DetachItemFromObjectCaseSensitive(m->traits, name);
    if (old) cJSON_AddItemToArray(g_grave, old);
    cJSON *nv = json_of(v);
    if (nv) cJSON_AddItemToObject(m->traits, name, nv);
}

static int h_emit(bd_ctx *c, const char *event_name, const char *properties_json, const char *tag) {
    if (!in_callback(c, "emit")) return -1;
    if (!event_name || !*event_name) { violation("emit without a name"); return -1; }
    if (!tag || !*tag) { violation("emit %s without a tag", event_name); return -1; }
    if (properties_json) {
        cJSON *j = cJSON_Parse(properties_json);
        int ok = cJSON_IsObject(j);
        cJSON_Delete(j);
        if (!ok) { violation("emit %s: properties are not a JSON object: %s", event_name, properties_json); return -1; }
    }
    for (int i = 0; i < g_nemits; i++)
        if (strcmp(g_emits[i].tag, tag) == 0 && strcmp(g_emits[i].user, c->user) == 0)
            violation("emit %s: tag %s used twice for %s", event_name, tag, c->user);
    g_emits = xrealloc(g_emits, (size_t)(g_nemits + 1) * sizeof *g_emits);
    fh_emit *e = &g_emits[g_nemits++];
    e->user = xstrdup(c->user);
    e->name = xstrdup(event_name);
    e->props = xstrdup(properties_json ? properties_json : "{}");
    e->tag = xstrdup(tag);
    e->at = c->now_ms;
    return 0;
}

static int h_block(bd_ctx *c, const char *kind, const char *id, const char *reason) {
    if (!in_callback(c, "block")) return -1;
    if (!kind || (strcmp(kind, "user") && strcmp(kind, "device") && strcmp(kind, "ip"))) {
        violation("block: bad kind %s", kind ? kind : "(null)");
        return -1;
    }
    if (!id || !*id) { violation("block %s without an id", kind); return -1; }
    g_blocks = xrealloc(g_blocks, (size_t)(g_nblocks + 1) * sizeof *g_blocks);
    fh_block *b = &g_blocks[g_nblocks++];
    b->user = xstrdup(c->user);
    b->kind = xstrdup(kind);
    b->id = xstrdup(id);
    b->reason = xstrdup(reason ? reason : "");
    return 0;
}

static void h_revisit_at(bd_ctx *c, long long due_ms) {
    if (!in_callback(c, "revisit_at")) return;
    if (due_ms <= c->now_ms) violation("revisit_at %lld is not after now %lld", due_ms, c->now_ms);
    member *m = find_member(c->user, 1);
    if (m->revisit_last < 0 || due_ms < m->revisit_last) m->revisit_last = due_ms;
    if (g_revisit_replace) m->revisit_due = m->revisit_last;
    else if (m->revisit_due < 0 || due_ms < m->revisit_due) m->revisit_due = due_ms;
}

static long long h_window_add(bd_ctx *c, const char *set, const char *key, const char *memb, long long ts_ms,
                              long long window_ms) {
    if (!in_callback(c, "window_add")) return 0;
    if (!set || !key || !memb || window_ms <= 0) { violation("window_add: bad arguments"); return 0; }
    wentry *hit = NULL;
    for (size_t i = 0; i < g_nwin; i++)
        if (!strcmp(g_win[i].set, set) && !strcmp(g_win[i].key, key) && !strcmp(g_win[i].member, memb))
            hit = &g_win[i];
    if (hit) {
        if (ts_ms > hit->ts) hit->ts = ts_ms;
    } else {
        g_win = xrealloc(g_win, (g_nwin + 1) * sizeof *g_win);
        wentry *w = &g_win[g_nwin++];
        w->set = xstrdup(set);
        w->key = xstrdup(key);
        w->member = xstrdup(memb);
        w->ts = ts_ms;
    }
    long long n = 0;
    for (size_t i = 0; i < g_nwin; i++)
        if (!strcmp(g_win[i].set, set) && !strcmp(g_win[i].key, key) && g_win[i].ts > ts_ms - window_ms) n++;
    return n;
}

const bd_host fh_host = {
    .api_version = BD_PLUGIN_API_VERSION,
    .log = h_log,
    .parse_duration_ms = h_parse_duration_ms,
    .now_ms = h_now_ms,
    .user_id = h_user_id,
    .event_name = h_event_name,
    .event_time_ms = h_event_time_ms,
    .event_get = h_event_get,
    .trait_get = h_trait_get,
    .trait_set = h_trait_set,
    .emit = h_emit,
    .block = h_block,
    .revisit_at = h_revisit_at,
    .window_add = h_window_add,
};

/* --- loading ---------------------------------------------------------------- */

static int valid_fn_name(const char *s) {
    if (!s || !(islower((unsigned char)*s) || *s == '_')) return 0;
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_')) return 0;
    return 1;
}

int fh_load(fh_plugin *p, const char *name, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    const char *dir = getenv("BD_PLUGIN_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.so", dir && *dir ? dir : "build/plugins", name);
    p->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!p->handle) {
        snprintf(err, errlen, "dlopen %s: %s", path, dlerror());
        return -1;
    }
    p->desc = dlsym(p->handle, BD_PLUGIN_SYMBOL);
    const char *why = NULL;
    if (!p->desc) why = "no " BD_PLUGIN_SYMBOL " symbol";
    else if (p->desc->api_version != BD_PLUGIN_API_VERSION) why = "another API version";
    else if (!p->desc->name || strcmp(p->desc->name, name) != 0) why = "descriptor name is not the file's";
    else if (!p->desc->init) why = "no init";
    else if (p->desc->functions)
        for (const bd_function *f = p->desc->functions; f->name; f++)
            if (!valid_fn_name(f->name) || !f->fn || f->min_args < 0 || f->max_args < f->min_args)
                why = "a malformed function";
    if (why) {
        snprintf(err, errlen, "%s: %s", path, why);
        dlclose(p->handle);
        memset(p, 0, sizeof *p);
        return -1;
    }
    return 0;
}

int fh_init(fh_plugin *p, const char *config_json, char *err, size_t errlen) {
    err[0] = 0;
    void *self = NULL;
    int rc = p->desc->init(&fh_host, config_json ? config_json : "{}", &self, err, errlen);
    if (rc == 0) {
        p->self = self;
        p->inited = 1;
    }
    return rc;
}

void fh_fini(fh_plugin *p) {
    if (p->inited && p->desc->fini) p->desc->fini(p->self);
    p->inited = 0;
    p->self = NULL;
}

void fh_unload(fh_plugin *p) {
    fh_fini(p);
    if (p->handle) dlclose(p->handle);
    memset(p, 0, sizeof *p);
}

/* --- driving ---------------------------------------------------------------- */

static void end_callback(void) {
    cJSON_Delete(g_grave);
    g_grave = cJSON_CreateArray();
    g_cur = NULL;
}

int fh_event_at(fh_plugin *p, const char *user, long long now, long long event_time, const char *name,
                const char *json) {
    cJSON *ev = cJSON_Parse(json ? json : "{}");
    if (!cJSON_IsObject(ev)) {
        fprintf(stderr, "fake_host: bad event JSON: %s\n", json);
        abort();
    }
    if (!cJSON_GetObjectItem(ev, "type")) cJSON_AddStringToObject(ev, "type", "track");
    if (!cJSON_GetObjectItem(ev, "event")) cJSON_AddStringToObject(ev, "event", name);
    if (!cJSON_GetObjectItem(ev, "userId")) cJSON_AddStringToObject(ev, "userId", user);
    if (!g_grave) g_grave = cJSON_CreateArray();
    member *m = find_member(user, 1);
    m->revisit_last = -1;
    bd_ctx c = {.user = m->user, .now_ms = now, .event_name = name, .event_time_ms = event_time, .event = ev};
    g_cur = &c;
    int rc = p->desc->on_event ? p->desc->on_event(p->self, &c) : 0;
    end_callback();
    cJSON_Delete(ev);
    return rc;
}

int fh_event(fh_plugin *p, const char *user, long long t, const char *name, const char *json) {
    return fh_event_at(p, user, t, t, name, json);
}

int fh_revisit(fh_plugin *p, const char *user, long long now) {
    if (!g_grave) g_grave = cJSON_CreateArray();
    member *m = find_member(user, 1);
    if (m->revisit_due >= 0 && m->revisit_due <= now) m->revisit_due = -1;   /* this call is the one asked for */
    m->revisit_last = -1;
    bd_ctx c = {.user = m->user, .now_ms = now, .event_name = NULL, .event_time_ms = 0, .event = NULL};
    g_cur = &c;
    int rc = p->desc->on_revisit ? p->desc->on_revisit(p->self, &c) : 0;
    end_callback();
    return rc;
}

long long fh_revisit_due(const char *user) {
    member *m = find_member(user, 0);
    return m ? m->revisit_due : -1;
}

long long fh_revisit_last(const char *user) {
    member *m = find_member(user, 0);
    return m ? m->revisit_last : -1;
}

int fh_run_revisits(fh_plugin *p, const char *user, long long until) {
    int n = 0;
    for (;;) {
        member *m = find_member(user, 0);
        if (!m || m->revisit_due < 0 || m->revisit_due > until) return n;
        long long due = m->revisit_due;
        m->revisit_due = -1;
        fh_revisit(p, user, due);
        if (++n > 10000) { violation("revisit loop for %s", user); return n; }
    }
}

/* --- inspection ------------------------------------------------------------- */

void fh_trait_put(const char *user, const char *name, bd_value v) {
    member *m = find_member(user, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(m->traits, name);
    cJSON *nv = json_of(v);
    if (nv) cJSON_AddItemToObject(m->traits, name, nv);
}

bd_value fh_trait(const char *user, const char *name) {
    member *m = find_member(user, 0);
    bd_value none = {0};
    return m ? value_of(cJSON_GetObjectItemCaseSensitive(m->traits, name)) : none;
}

double fh_trait_num(const char *user, const char *name) {
    bd_value v = fh_trait(user, name);
    return v.kind == BD_NUM ? v.num : NAN;
}

const char *fh_trait_str(const char *user, const char *name) {
    bd_value v = fh_trait(user, name);
    return v.kind == BD_STR ? v.str : NULL;
}

void fh_clear_captures(void) {
    for (int i = 0; i < g_nemits; i++) {
        free(g_emits[i].user); free(g_emits[i].name); free(g_emits[i].props); free(g_emits[i].tag);
    }
    free(g_emits); g_emits = NULL; g_nemits = 0;
    for (int i = 0; i < g_nblocks; i++) {
        free(g_blocks[i].user); free(g_blocks[i].kind); free(g_blocks[i].id); free(g_blocks[i].reason);
    }
    free(g_blocks); g_blocks = NULL; g_nblocks = 0;
    for (int i = 0; i < g_nlogs; i++) {
        free(g_logs[i].plugin); free(g_logs[i].event); free(g_logs[i].text);
    }
    free(g_logs); g_logs = NULL; g_nlogs = 0;
}

void fh_reset(void) {
    fh_clear_captures();
    for (size_t i = 0; i < g_nmembers; i++) {
        free(g_members[i].user);
        cJSON_Delete(g_members[i].traits);
    }
    free(g_members); g_members = NULL; g_nmembers = 0;
    for (size_t i = 0; i < g_nwin; i++) {
        free(g_win[i].set); free(g_win[i].key); free(g_win[i].member);
    }
    free(g_win); g_win = NULL; g_nwin = 0;
    cJSON_Delete(g_grave); g_grave = NULL;
    g_violations = 0;
    g_violation[0] = 0;
    g_revisit_replace = 0;
}

void fh_set_revisit_replace(int on) { g_revisit_replace = on; }

int fh_nemits(void) { return g_nemits; }
const fh_emit *fh_emit_at_index(int i) { return i >= 0 && i < g_nemits ? &g_emits[i] : NULL; }
int fh_count_emits(const char *name) {
    int n = 0;
    for (int i = 0; i < g_nemits; i++) n += strcmp(g_emits[i].name, name) == 0;
    return n;
}
const fh_emit *fh_last_emit(const char *name) {
    for (int i = g_nemits - 1; i >= 0; i--)
        if (strcmp(g_emits[i].name, name) == 0) return &g_emits[i];
    return NULL;
}
int fh_nblocks(void) { return g_nblocks; }
const fh_block *fh_block_at_index(int i) { return i >= 0 && i < g_nblocks ? &g_blocks[i] : NULL; }
int fh_count_blocks(const char *kind, const char *id) {
    int n = 0;
    for (int i = 0; i < g_nblocks; i++)
        n += (!kind || !strcmp(g_blocks[i].kind, kind)) && (!id || !strcmp(g_blocks[i].id, id));
    return n;
}
int fh_nlogs(void) { return g_nlogs; }
const fh_log *fh_log_at_index(int i) { return i >= 0 && i < g_nlogs ? &g_logs[i] : NULL; }
int fh_count_logs(int level, const char *event, ...) {
    int n = 0;
    for (int i = 0; i < g_nlogs; i++) {
        if (level >= 0 && g_logs[i].level != level) continue;
        if (event && strcmp(g_logs[i].event, event) != 0) continue;
        va_list ap;
        va_start(ap, event);
        int ok = 1;
        for (const char *needle; (needle = va_arg(ap, const char *)) != NULL;)
            if (!strstr(g_logs[i].text, needle)) ok = 0;
        va_end(ap);
        n += ok;
    }
    return n;
}

int fh_violations(void) { return g_violations; }
const char *fh_last_violation(void) { return g_violation; }

int fh_call(fh_plugin *p, const char *fn_name, const bd_value *args, int nargs, bd_value *out) {
    if (!p->desc->functions) return -1;
    for (const bd_function *f = p->desc->functions; f->name; f++) {
        if (strcmp(f->name, fn_name) != 0) continue;
        if (nargs < f->min_args || nargs > f->max_args) return -1;
        out->kind = BD_MISSING;
        return f->fn(args, nargs, out);
    }
    return -1;
}

bd_value fh_num(double x) { bd_value v = {.kind = BD_NUM, .num = x}; return v; }
bd_value fh_str(const char *s) { bd_value v = {.kind = BD_STR, .str = s}; return v; }
bd_value fh_null(void) { bd_value v = {.kind = BD_NULL}; return v; }

double fh_json_num(const char *json, const char *key) {
    cJSON *j = cJSON_Parse(json);
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, key);
    double x = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    cJSON_Delete(j);
    return x;
}

const char *fh_json_str(const char *json, const char *key) {
    static char buf[512];
    cJSON *j = cJSON_Parse(json);
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, key);
    const char *r = NULL;
    if (cJSON_IsString(it)) {
        snprintf(buf, sizeof buf, "%s", it->valuestring);
        r = buf;
    }
    cJSON_Delete(j);
    return r;
}
