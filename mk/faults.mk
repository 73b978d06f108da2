# `make test-faults`: the fault-injection suite (issue 6, item 4). 100,000
# events through the daemon, a real redis-server (AOF, appendfsync always)
# and the librdkafka mock cluster, with kill -9, a Redis crash, a broker
# outage and a second daemon joining and leaving the group on the way; the
# grant ids in Redis must equal `benefitd replay`'s. About 2.5 minutes.
# tests/faults/README.md says what it does and why.
#
#   make test-faults                           the full run
#   make test-faults FAULTS_ARGS="--events 20000 --members 2000 --duration 60"
#                                              a quicker iteration (about 1.5 min)
FAULTS_ARGS ?=

.PHONY: test-faults
test-faults: all
	/usr/bin/python3 tests/faults/run_faults.py $(FAULTS_ARGS)
	/usr/bin/python3 tests/faults/repro_inactivity_lag.py
