/* pool_cli.h - operator commands on the policy state in Redis
 * (docs/policy.md): code pools and the blocklist. Synchronous hiredis; they
 * never touch the daemon's event loop.
 *
 *   benefitd pool load NAME FILE [-c CONFIG]   one code per line: added, duplicates, already issued
 *   benefitd pool status [NAME] [-c CONFIG]    available and issued codes per pool
 *   benefitd pool lookup NAME CODE [-c CONFIG] who got an issued code (grant, member, rule, time)
 *   benefitd block add|remove USER|DEVICE|IP VALUE [-c CONFIG]
 *   benefitd block list [user|device|ip] [-c CONFIG]
 *   benefitd stats [-c CONFIG] [--json]        triggered, granted, suppressed by reason, ... per rule and variant */
#ifndef BENEFITD_POOL_CLI_H
#define BENEFITD_POOL_CLI_H

/* argv[0] is "pool" / "block". Exit status: 0 ok, 1 usage/config/Redis
 * error, 3 (pool load) some lines were not valid codes (the rest loaded). */
int pool_main(int argc, char **argv);
int block_main(int argc, char **argv);
int stats_main(int argc, char **argv);

#endif
