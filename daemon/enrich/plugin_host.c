/* plugin_host.c - the plugin loader and the host side of bd_host (plugin_host.h). */
#include "plugin_host.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "../core/log.h"
#include "../core/util.h"
#include "../rules/expr.h"

/* bd_ctx is the run itself: plugins only ever hold the opaque pointer. */
#define RUN(c) ((plugin_run_t *)(c))

/* ---- values ------------------------------------------------------------------ */

cJSON *bd_value_to_json(bd_value v) {
    cJSON *j = NULL;
    switch (v.kind) {
    case BD_NULL: j = cJSON_CreateNull(); break;
    case BD_BOOL: j = cJSON_CreateBool(v.b); break;
    case BD_NUM: j = cJSON_CreateNumber(v.num); break;
    case BD_STR: j = cJSON_CreateString(v.str ? v.str : ""); break;
    default: return NULL;
    }
    if (!j) abort();
    return j;
}

bd_value bd_value_from_json(const cJSON *j, char *scratch, size_t n) {
    bd_value v = {0};
    if (!j) return v;
    if (cJSON_IsNull(j)) v.kind = BD_NULL;
    else if (cJSON_IsBool(j)) { v.kind = BD_BOOL; v.b = cJSON_IsTrue(j); }
    else if (cJSON_IsNumber(j)) { v.kind = BD_NUM; v.num = j->valuedouble; }
    else if (cJSON_IsString(j)) { v.kind = BD_STR; v.str = j->valuestring; }
    else if (scratch && n) {
        /* objects and lists are not values to a plugin: it sees their JSON
         * text (rarely needed; bounded by the scratch) */
        char *t = cJSON_PrintUnformatted(j);
        if (t) {
            snprintf(scratch, n, "%s", t);
            free(t);
            v.kind = BD_STR;
            v.str = scratch;
        }
    }
    return v;
}

/* ---- sliding-window distinct counts (window_add) ------------------------------ */

typedef struct wmember { char *member; long long ts; } wmember;
typedef struct wkey {
    char *key;                      /* set \x1f key */
    wmember *m; size_t n, cap;
    long long window_ms, newest;
    struct wkey *next;
} wkey;
typedef struct windows {
    wkey **b; size_t nb, count;
    unsigned long adds;
} windows;

/* A key's members are capped: a velocity check needs to know "more than N",
 * not every account a botnet ever used, and the cap bounds memory. */
#define WINDOW_MEMBERS_MAX 1024

static windows *windows_new(void) {
    windows *w = xcalloc(1, sizeof *w);
    w->nb = 256;
    w->b = xcalloc(w->nb, sizeof *w->b);
    return w;
}

static void wkey_free(wkey *k) {
    for (size_t i = 0; i < k->n; i++) free(k->m[i].member);
    free(k->m);
    free(k->key);
    free(k);
}

static void windows_free(windows *w) {
    if (!w) return;
    for (size_t i = 0; i < w->nb; i++)
        for (wkey *k = w->b[i], *n; k; k = n) {
            n = k->next;
            wkey_free(k);
        }
    free(w->b);
    free(w);
}

static void wkey_prune(wkey *k, long long now) {
    size_t j = 0;
    for (size_t i = 0; i < k->n; i++) {
        if (k->m[i].ts > now - k->window_ms) k->m[j++] = k->m[i];
        else free(k->m[i].member);
    }
    k->n = j;
}

/* Every 4096 adds, keys whose newest member left its window are dropped, so
 * devices seen once a week ago do not stay forever. */
static void windows_sweep(windows *w, long long now) {
    for (size_t i = 0; i < w->nb; i++) {
        wkey **pp = &w->b[i];
        while (*pp) {
            wkey *k = *pp;
            if (k->newest <= now - k->window_ms) {
                *pp = k->next;
                wkey_free(k);
                w->count--;
            } else {
                pp = &k->next;
            }
        }
    }
}

static long long windows_add(windows *w, const char *set, const char *key, const char *member, long long ts,
                             long long window_ms) {
    strbuf kb;
    sb_init(&kb);
    sb_printf(&kb, "%s\x1f%s", set, key);
    size_t s = (size_t)(hash64(kb.s, kb.len, 7) & (w->nb - 1));
    wkey *k = w->b[s];
    while (k && strcmp(k->key, kb.s) != 0) k = k->next;
    if (!k) {
        k = xcalloc(1, sizeof *k);
        k->key = kb.s;
        kb.s = NULL;
        k->next = w->b[s];
        w->b[s] = k;
        w->count++;
    }
    sb_free(&kb);
    k->window_ms = window_ms > 0 ? window_ms : 1;
    if (ts > k->newest) k->newest = ts;
    long long now = k->newest;
    wkey_prune(k, now);
    size_t i = 0;
    while (i < k->n && strcmp(k->m[i].member, member) != 0) i++;
    if (i < k->n) {
        if (ts > k->m[i].ts) k->m[i].ts = ts;
    } else if (ts > now - k->window_ms) {
        if (k->n == WINDOW_MEMBERS_MAX) {
            /* drop the oldest to make room */
            size_t old = 0;
            for (size_t j = 1; j < k->n; j++)
                if (k->m[j].ts < k->m[old].ts) old = j;
            free(k->m[old].member);
            k->m[old] = k->m[--k->n];
        }
        if (k->n == k->cap) {
            k->cap = k->cap ? k->cap * 2 : 4;
            k->m = xrealloc(k->m, k->cap * sizeof *k->m);
        }
        k->m[k->n].member = xstrdup(member);
        k->m[k->n].ts = ts;
        k->n++;
    }
    long long n = (long long)k->n;
    if (++w->adds % 4096 == 0) windows_sweep(w, now);
    if (w->count > w->nb * 2) {
        /* grow: rehash */
        size_t nb = w->nb * 2;
        wkey **b = xcalloc(nb, sizeof *b);
        for (size_t j = 0; j < w->nb; j++)
            for (wkey *x = w->b[j], *nx; x; x = nx) {
                nx = x->next;
                size_t t = (size_t)(hash64(x->key, strlen(x->key), 7) & (nb - 1));
                x->next = b[t];
                b[t] = x;
            }
        free(w->b);
        w->b = b;
        w->nb = nb;
    }
    return n;
}

/* ---- host callbacks ------------------------------------------------------------ */

static void h_log(int level, const char *plugin, const char *event, const char *text) {
    int lv = level <= BD_LOG_DEBUG ? LOG_DEBUG : level == BD_LOG_INFO ? LOG_INFO : level == BD_LOG_WARN ? LOG_WARN
                                                                                                      : LOG_ERROR;
    log_msg(lv, event ? event : "plugin", "plugin=%s %s", plugin ? plugin : "?", text ? text : "");
}

static long long h_parse_duration(const char *text) {
    int64_t ms;
    if (!text || parse_duration_ms(text, &ms) != 0) return -1;
    return ms;
}

static long long h_now(const bd_ctx *c) { return RUN(c)->now_ms; }
static const char *h_user(const bd_ctx *c) { return RUN(c)->user; }
static const char *h_event_name(const bd_ctx *c) { return RUN(c)->ev && !RUN(c)->grant_only ? RUN(c)->ev->name : NULL; }
static long long h_event_time(const bd_ctx *c) {
    return RUN(c)->ev && !RUN(c)->grant_only ? RUN(c)->ev->ts_ms : RUN(c)->now_ms;
}

static bd_value h_event_get(const bd_ctx *c, const char *path) {
    plugin_run_t *r = RUN(c);
    bd_value out = {0};
    if (!r->ev || r->grant_only || !path) return out;
    eval_ctx_t ctx = {.ev = r->ev, .arena = NULL};
    value_t v = expr_resolve_path(path, &ctx);
    switch (v.k) {
    case V_NULL: out.kind = BD_NULL; break;
    case V_BOOL: out.kind = BD_BOOL; out.b = v.b; break;
    case V_NUM: out.kind = BD_NUM; out.num = v.n; break;
    case V_STR:
        /* resolved strings point into the event's cJSON: NUL-terminated there */
        out.kind = BD_STR;
        out.str = v.s;
        break;
    case V_JSON: return bd_value_from_json(v.json, r->scratch, sizeof r->scratch);
    default: break;
    }
    return out;
}

static bd_value h_trait_get(const bd_ctx *c, const char *name) {
    plugin_run_t *r = RUN(c);
    bd_value out = {0};
    if (r->grant_only || !r->profile || !name) return out;
    return bd_value_from_json(cJSON_GetObjectItemCaseSensitive(r->profile->traits, name), r->scratch,
                              sizeof r->scratch);
}

static void h_trait_set(bd_ctx *c, const char *name, bd_value v) {
    plugin_run_t *r = RUN(c);
    if (r->grant_only || !r->profile || !name || !name[0]) return;
    cJSON *old = cJSON_GetObjectItemCaseSensitive(r->profile->traits, name);
    cJSON *nv = bd_value_to_json(v);
    /* unchanged values are not rewritten: a plugin that recomputes every
     * trait on every event costs no Redis write when nothing moved */
    if ((!old && !nv) || (old && nv && cJSON_Compare(old, nv, 1))) {
        cJSON_Delete(nv);
        return;
    }
    profile_set(r->cache, r->profile, name, nv);
}

#define PUSH(arr, n, cap) do { if ((n) == (cap)) { (cap) = (cap) ? (cap) * 2 : 4; \
    (arr) = xrealloc((arr), (cap) * sizeof *(arr)); } } while (0)

static int h_emit(bd_ctx *c, const char *name, const char *props, const char *tag) {
    plugin_run_t *r = RUN(c);
    if (r->grant_only || !name || !name[0] || !tag || !tag[0]) return -1;
    if (props) {
        cJSON *j = cJSON_Parse(props);
        int ok = cJSON_IsObject(j);
        cJSON_Delete(j);
        if (!ok) return -1;
    }
    PUSH(r->emits, r->n_emits, r->cap_emits);
    emitted_t *e = &r->emits[r->n_emits++];
    e->name = xstrdup(name);
    e->props_json = props ? xstrdup(props) : NULL;
    e->tag = xstrdup(tag);
    return 0;
}

static int h_block(bd_ctx *c, const char *kind, const char *id, const char *reason) {
    plugin_run_t *r = RUN(c);
    if (r->grant_only || !kind || !id || !id[0]) return -1;
    if (strcmp(kind, "user") && strcmp(kind, "device") && strcmp(kind, "ip")) return -1;
    PUSH(r->blocks, r->n_blocks, r->cap_blocks);
    blocked_t *b = &r->blocks[r->n_blocks++];
    b->kind = xstrdup(kind);
    b->id = xstrdup(id);
    b->reason = xstrdup(reason ? reason : "");
    return 0;
}

static void h_revisit(bd_ctx *c, long long due) {
    plugin_run_t *r = RUN(c);
    if (r->grant_only || !r->cur) return;
    for (size_t i = 0; i < r->n_revisits; i++)
        if (!strcmp(r->revisits[i].plugin, r->cur->name)) {
            r->revisits[i].due_ms = due;
            return;
        }
    PUSH(r->revisits, r->n_revisits, r->cap_revisits);
    r->revisits[r->n_revisits].plugin = xstrdup(r->cur->name);
    r->revisits[r->n_revisits].due_ms = due;
    r->n_revisits++;
}

static long long h_window_add(bd_ctx *c, const char *set, const char *key, const char *member, long long ts,
                              long long window_ms) {
    plugin_run_t *r = RUN(c);
    if (r->grant_only || !set || !key || !member || !key[0]) return 0;
    return windows_add((windows *)r->set->windows, set, key, member, ts, window_ms);
}

static const bd_host HOST = {
    .api_version = BD_PLUGIN_API_VERSION,
    .log = h_log,
    .parse_duration_ms = h_parse_duration,
    .now_ms = h_now,
    .user_id = h_user,
    .event_name = h_event_name,
    .event_time_ms = h_event_time,
    .event_get = h_event_get,
    .trait_get = h_trait_get,
    .trait_set = h_trait_set,
    .emit = h_emit,
    .block = h_block,
    .revisit_at = h_revisit,
    .window_add = h_window_add,
};

/* ---- loading ------------------------------------------------------------------- */

static void perr(diag_t *d, const config_t *cfg, const plugin_cfg_t *pc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void perr(diag_t *d, const config_t *cfg, const plugin_cfg_t *pc, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    diag_add(d, cfg->path ? cfg->path : "<config>", pc ? pc->line : 0, pc ? pc->col : 0, "plugin '%s': %s",
             pc ? pc->name : "?", msg);
}

/* Code that runs inside the daemon must not be replaceable by another local
 * user: the directory and the file must not be writable by others. */
static int check_perms(const char *path, int want_dir, char *why, size_t n) {
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(why, n, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
        snprintf(why, n, "%s is not a %s", path, want_dir ? "directory" : "regular file");
        return -1;
    }
    if (st.st_mode & S_IWOTH) {
        snprintf(why, n, "%s is writable by other users (mode %03o): refused", path, (unsigned)(st.st_mode & 0777));
        return -1;
    }
    return 0;
}

int plugins_load(plugin_set_t *set, const config_t *cfg, diag_t *diag) {
    memset(set, 0, sizeof *set);
    set->windows = windows_new();
    if (cfg->n_plugins == 0) return 0;
    size_t before = diag->n;
    char why[700];
    if (check_perms(cfg->plugin_dir, 1, why, sizeof why) != 0) {
        diag_add(diag, cfg->path ? cfg->path : "<config>", cfg->plugin_dir_line, cfg->plugin_dir_col,
                 "plugins.dir: %s", why);
        plugins_unload(set);
        return -1;
    }
    set->p = xcalloc(cfg->n_plugins, sizeof *set->p);
    for (size_t i = 0; i < cfg->n_plugins; i++) {
        const plugin_cfg_t *pc = &cfg->plugins[i];
        strbuf path;
        sb_init(&path);
        sb_printf(&path, "%s/%s.so", cfg->plugin_dir, pc->name);
        if (check_perms(path.s, 0, why, sizeof why) != 0) {
            perr(diag, cfg, pc, "%s", why);
            sb_free(&path);
            break;
        }
        void *h = dlopen(path.s, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            perr(diag, cfg, pc, "cannot load %s: %s", path.s, dlerror());
            sb_free(&path);
            break;
        }
        loaded_plugin_t *lp = &set->p[set->n++];
        lp->name = xstrdup(pc->name);
        lp->path = path.s;
        lp->handle = h;
        const bd_plugin *desc = dlsym(h, BD_PLUGIN_SYMBOL);
        if (!desc) {
            perr(diag, cfg, pc, "%s exports no '%s' descriptor (is it a benefitd plugin? see plugins/README.md)",
                 path.s, BD_PLUGIN_SYMBOL);
            break;
        }
        if (desc->api_version != BD_PLUGIN_API_VERSION) {
            perr(diag, cfg, pc, "%s was built for plugin API version %d; this benefitd has version %d: rebuild it "
                 "against this benefitd's benefitd_plugin.h", path.s, desc->api_version, BD_PLUGIN_API_VERSION);
            break;
        }
        if (!desc->name || strcmp(desc->name, pc->name) != 0) {
            perr(diag, cfg, pc, "%s calls itself '%s', not '%s'", path.s, desc->name ? desc->name : "(null)",
                 pc->name);
            break;
        }
        lp->desc = desc;
        int bad = 0;
        for (const bd_function *f = desc->functions; f && f->name; f++) {
            char err[200];
            if (expr_register_function(f->name, f->min_args, f->max_args, f->fn, err, sizeof err) != 0) {
                perr(diag, cfg, pc, "%s", err);
                bad = 1;
                break;
            }
        }
        if (bad) break;
        if (desc->init) {
            char err[400] = "";
            void *self = NULL;
            if (desc->init(&HOST, pc->json, &self, err, sizeof err) != 0) {
                perr(diag, cfg, pc, "init failed: %s", err[0] ? err : "(no message)");
                lp->desc = NULL; /* no fini for a plugin that did not start */
                break;
            }
            lp->self = self;
        }
        if (desc->on_event) set->any_on_event = 1;
        if (desc->on_grant) set->any_on_grant = 1;
        int nfn = 0;
        for (const bd_function *f = desc->functions; f && f->name; f++) nfn++;
        log_info("plugin_loaded", "plugin=%s version=%s path=%s functions=%d", pc->name,
                 desc->version ? desc->version : "?", lp->path, nfn);
    }
    if (diag->n > before) {
        plugins_unload(set);
        return -1;
    }
    return 0;
}

void plugins_unload(plugin_set_t *set) {
    for (size_t i = set->n; i-- > 0;) {
        loaded_plugin_t *lp = &set->p[i];
        if (lp->desc && lp->desc->fini) lp->desc->fini(lp->self);
    }
    if (set->n) expr_clear_functions();
    for (size_t i = set->n; i-- > 0;) {
        loaded_plugin_t *lp = &set->p[i];
        if (lp->handle) dlclose(lp->handle);
        free(lp->name);
        free(lp->path);
    }
    free(set->p);
    windows_free(set->windows);
    memset(set, 0, sizeof *set);
}

/* ---- running ------------------------------------------------------------------- */

void plugin_run_init(plugin_run_t *r, const plugin_set_t *set, profile_cache_t *cache, profile_t *p,
                     const event_t *ev, int64_t now_ms) {
    memset(r, 0, sizeof *r);
    r->set = set;
    r->cache = cache;
    r->profile = p;
    r->user = p ? p->user : ev ? ev->user_id : "";
    r->ev = ev;
    r->now_ms = now_ms;
}

void plugin_run_free(plugin_run_t *r) {
    for (size_t i = 0; i < r->n_emits; i++) {
        free(r->emits[i].name);
        free(r->emits[i].props_json);
        free(r->emits[i].tag);
    }
    free(r->emits);
    for (size_t i = 0; i < r->n_blocks; i++) {
        free(r->blocks[i].kind);
        free(r->blocks[i].id);
        free(r->blocks[i].reason);
    }
    free(r->blocks);
    for (size_t i = 0; i < r->n_revisits; i++) free(r->revisits[i].plugin);
    free(r->revisits);
    r->emits = NULL;
    r->blocks = NULL;
    r->revisits = NULL;
    r->n_emits = r->n_blocks = r->n_revisits = 0;
    r->cap_emits = r->cap_blocks = r->cap_revisits = 0;
}

int plugins_on_event(plugin_run_t *r) {
    int failed = 0;
    for (size_t i = 0; i < r->set->n; i++) {
        const loaded_plugin_t *lp = &r->set->p[i];
        if (!lp->desc || !lp->desc->on_event) continue;
        r->cur = lp;
        if (lp->desc->on_event(lp->self, (bd_ctx *)r) != 0) {
            failed++;
            log_warn("plugin_failed", "plugin=%s call=on_event user=%s", lp->name, r->user);
        }
    }
    r->cur = NULL;
    return failed;
}

int plugins_on_revisit(plugin_run_t *r, const char *plugin) {
    int failed = 0;
    for (size_t i = 0; i < r->set->n; i++) {
        const loaded_plugin_t *lp = &r->set->p[i];
        if (!lp->desc || !lp->desc->on_revisit) continue;
        if (plugin && strcmp(plugin, lp->name) != 0) continue;
        r->cur = lp;
        if (lp->desc->on_revisit(lp->self, (bd_ctx *)r) != 0) {
            failed++;
            log_warn("plugin_failed", "plugin=%s call=on_revisit user=%s", lp->name, r->user);
        }
    }
    r->cur = NULL;
    return failed;
}

char *plugin_grant_json(const char *grant_id, const char *rule, const char *user, const char *channel) {
    strbuf b;
    sb_init(&b);
    sb_puts(&b, "{\"grant_id\":");
    sb_json_str(&b, grant_id ? grant_id : "", grant_id ? strlen(grant_id) : 0);
    sb_puts(&b, ",\"rule\":");
    sb_json_str(&b, rule ? rule : "", rule ? strlen(rule) : 0);
    sb_puts(&b, ",\"user_id\":");
    sb_json_str(&b, user ? user : "", user ? strlen(user) : 0);
    sb_puts(&b, ",\"channel\":");
    sb_json_str(&b, channel ? channel : "default", strlen(channel ? channel : "default"));
    sb_putc(&b, '}');
    return b.s;
}

void plugins_on_grant(const plugin_set_t *set, const char *user, int64_t now_ms, const char *grant_json) {
    plugin_run_t r;
    plugin_run_init(&r, set, NULL, NULL, NULL, now_ms);
    r.user = user;
    r.grant_only = 1;
    for (size_t i = 0; i < set->n; i++) {
        const loaded_plugin_t *lp = &set->p[i];
        if (!lp->desc || !lp->desc->on_grant) continue;
        r.cur = lp;
        lp->desc->on_grant(lp->self, (bd_ctx *)&r, grant_json);
    }
    plugin_run_free(&r);
}

int plugin_emit_event(const emitted_t *em, const char *user, int64_t ts_ms, const char *source_message_id,
                      event_t *out) {
    strbuf b;
    sb_init(&b);
    sb_puts(&b, "{\"type\":\"track\",\"event\":");
    sb_json_str(&b, em->name, strlen(em->name));
    sb_puts(&b, ",\"userId\":");
    sb_json_str(&b, user, strlen(user));
    /* the message id bounds at 79 bytes in event_t: a long source id is
     * hashed so the tag (what makes it unique) always fits */
    char mid[160];
    snprintf(mid, sizeof mid, "%s/%s", source_message_id ? source_message_id : "-", em->tag);
    if (strlen(mid) > 79) {
        uint64_t h1 = hash64(mid, strlen(mid), 1), h2 = hash64(mid, strlen(mid), 2);
        snprintf(mid, sizeof mid, "p-%016llx%016llx", (unsigned long long)h1, (unsigned long long)h2);
    }
    sb_puts(&b, ",\"messageId\":");
    sb_json_str(&b, mid, strlen(mid));
    sb_printf(&b, ",\"timestamp\":%lld,\"properties\":%s}", (long long)ts_ms, em->props_json ? em->props_json : "{}");
    decoder_t d;
    decoder_init_default(&d);
    char reason[128];
    int rc = decode_event(&d, b.s, b.len, ts_ms, out, reason, sizeof reason);
    if (rc != 0) log_warn("plugin_emit_bad", "event=\"%s\" reason=\"%s\"", em->name, reason);
    sb_free(&b);
    return rc;
}
