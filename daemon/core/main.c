/* main.c - the command line: run (the daemon), check, replay, pool, block, stats, version. */
#include "config.h"
#include "daemon.h"
#include "diag.h"
#include "log.h"
#include "../policy/pool_cli.h"
#include "../replay/replay.h"
#include "../rules/rules.h"

#include <getopt.h>
#include "../enrich/plugin_host.h"
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define BENEFITD_VERSION "0.1.0"

static void usage(FILE *f) {
    fputs("usage:\n"
          "  benefitd [run] [-c FILE] [-v]        run the daemon (default config: /etc/benefitd/benefitd.yaml)\n"
          "  benefitd check [-c FILE] [--rules DIR]\n"
          "                                       check config and rules without starting (like nginx -t)\n"
          "  benefitd replay --rules DIR [--config FILE] [--until TIME] [--explain] [--stats [--json]]\n"
          "                  [--pool NAME=FILE]... EVENTS.jsonl|-\n"
          "                                       run rules over recorded events on a virtual clock\n"
          "  benefitd pool load NAME FILE | status [NAME] | lookup NAME CODE  [-c FILE]\n"
          "                                       code pools in Redis (docs/policy.md)\n"
          "  benefitd block add|remove user|device|ip VALUE | list [KIND]  [-c FILE]\n"
          "                                       the blocklist checked in the grant step\n"
          "  benefitd stats [-c FILE] [--json]    per rule and variant: triggered, granted, suppressed by reason, ...\n"
          "  benefitd version\n",
          f);
}

/* `benefitd check`: exit 0 when config and rules are valid, 1 otherwise, with
 * every error as file:line:col: message on stderr. */
static int check_main(int argc, char **argv) {
    const char *config_path = NULL, *rules_dir = NULL;
    static const struct option opts[] = {{"config", required_argument, 0, 'c'}, {"rules", required_argument, 0, 'r'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:r:", opts, NULL)) != -1) {
        if (c == 'c') config_path = optarg;
        else if (c == 'r') rules_dir = optarg;
        else { usage(stderr); return 1; }
    }
    if (optind != argc) { usage(stderr); return 1; }
    config_t cfg;
    config_init_default(&cfg);
    diag_t diag;
    diag_init(&diag);
    int rc = 1;
    if (config_path && config_load(&cfg, config_path, &diag) != 0) {
        diag_print(&diag, stderr);
        fprintf(stderr, "benefitd check: %s: %zu error(s)\n", config_path, diag.n);
        goto out;
    }
    const char *dir = rules_dir ? rules_dir : cfg.rules_dir;
    /* Plugins load (and init) as in the daemon: a rule that calls a plugin's
     * function checks only with the plugin, and a plugin's bad settings are
     * caught here rather than at the start. */
    plugin_set_t plugins;
    log_set_level(LOG_WARN);   /* check answers on stdout; plugins' load-time info lines are noise here */
    if (plugins_load(&plugins, &cfg, &diag) != 0) {
        diag_print(&diag, stderr);
        fprintf(stderr, "benefitd check: plugins: %zu error(s)\n", diag.n);
        goto out;
    }
    /* The daemon runs every trigger shape (its Redis store, state_redis.c), so
     * check accepts what run accepts: the time shapes included. */
    ruleset_t *rs = ruleset_load_dir_ex(dir, cfg.timezone, RULES_ALLOW_TIME, &diag);
    if (!rs) {
        diag_print(&diag, stderr);
        fprintf(stderr, "benefitd check: %s: %zu error(s)\n", dir, diag.n);
        plugins_unload(&plugins);
        goto out;
    }
    printf("benefitd check: %s%s%zu rules in %s OK (version %s)", config_path ? config_path : "",
           config_path ? " OK, " : "", ruleset_count(rs), dir, ruleset_version(rs));
    for (size_t i = 0; i < plugins.n; i++)
        printf("%s%s %s", i ? ", " : "; plugins: ", plugins.p[i].name,
               plugins.p[i].desc->version ? plugins.p[i].desc->version : "");
    putchar('\n');
    ruleset_free(rs);
    plugins_unload(&plugins);
    rc = 0;
out:
    diag_free(&diag);
    config_free(&cfg);
    return rc;
}

static int run_main(int argc, char **argv) {
    const char *config_path = NULL;
    int c;
    optind = 1;
    while ((c = getopt(argc, argv, "c:vh")) != -1) {
        if (c == 'c') config_path = optarg;
        else if (c == 'v') log_set_level(LOG_DEBUG);
        else if (c == 'h') { usage(stdout); return 0; }
        else { usage(stderr); return 1; }
    }
    if (!config_path && access("/etc/benefitd/benefitd.yaml", R_OK) == 0) config_path = "/etc/benefitd/benefitd.yaml";
    return daemon_run(config_path);
}

int main(int argc, char **argv) {
    if (argc >= 2 && argv[1][0] != '-') {
        const char *cmd = argv[1];
        if (!strcmp(cmd, "run")) return run_main(argc - 1, argv + 1);
        if (!strcmp(cmd, "check")) return check_main(argc - 1, argv + 1);
        if (!strcmp(cmd, "replay")) return replay_main(argc - 1, argv + 1);
        if (!strcmp(cmd, "pool")) return pool_main(argc - 1, argv + 1);
        if (!strcmp(cmd, "block")) return block_main(argc - 1, argv + 1);
        if (!strcmp(cmd, "stats")) return stats_main(argc - 1, argv + 1);
        if (!strcmp(cmd, "version")) { printf("benefitd %s\n", BENEFITD_VERSION); return 0; }
        if (!strcmp(cmd, "help")) { usage(stdout); return 0; }
        fprintf(stderr, "benefitd: unknown command '%s'\n", cmd);
        usage(stderr);
        return 1;
    }
    if (argc >= 2 && (!strcmp(argv[1], "-t"))) return check_main(argc - 1, argv + 1);
    return run_main(argc, argv);
}
