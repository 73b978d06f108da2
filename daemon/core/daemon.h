/* daemon.h - the live pipeline: Kafka source -> decode -> rules/policy -> Redis sink,
 * on one libevent loop. */
#ifndef BENEFITD_DAEMON_H
#define BENEFITD_DAEMON_H

/* Runs until SIGINT/SIGTERM. Returns the process exit status. */
int daemon_run(const char *config_path);

#endif
