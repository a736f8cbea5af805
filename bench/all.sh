#!/bin/bash
# `make bench`: every table of bench/RESULTS.md in one go (about 30 minutes on 2 cores).
#   1. both servers accepting and relaying: 12 scenarios x 3 repetitions
#   2. the same with postscreen on for both (cache warm): the 1 KB scenarios, 3 repetitions
#   3. the same with the content scanners (one spamd, one clamd) for both, 1 repetition
#   4. 10,000 idle connections to mtaserver
# Extra options (ARGS) go to every bench.py call, e.g. `make bench ARGS=--quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
status=0
$py bench/bench.py "$@" || status=1
$py bench/bench.py --postscreen --scenario '1k-*' "$@" || status=1
$py bench/bench.py --filters --reps 1 --scenario '1k-s10-m1,1k-s50-m1,100k-s10-m1' "$@" || status=1
$py bench/idle.py 10000 || status=1
exit $status
