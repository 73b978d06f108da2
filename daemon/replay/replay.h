/* replay.h - `benefitd replay`: the rules over recorded events on a virtual
 * clock, with an in-memory store instead of Kafka and Redis. It shares the
 * decision code (policy/engine) with the daemon. */
#ifndef BENEFITD_REPLAY_H
#define BENEFITD_REPLAY_H

/* Entry point for the subcommand; argv[0] is "replay". Returns the exit status:
 * 0 ok, 1 bad rules/config/usage, 3 some input lines were not valid events. */
int replay_main(int argc, char **argv);

#endif
