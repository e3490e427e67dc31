#!/bin/bash
# Run a benchmark with this machine's running compressions and evaluations paused:
#   flock /tmp/bench.lock bench/quiet.sh env OMP_NUM_THREADS=1 python -m bench.onnx_int8 ...
# Every `skillkd compress` / `evaluate` / `export` process gets SIGSTOP before the command and SIGCONT after it,
# however the command ends. A paused job's own timings (its stage times, its report's speed check) then include
# the pause: they are not figures. The load average the benchmarks record still counts the paused minute before.
# the jobs' Python processes only ("bin/skillkd ..."): a pattern on "skillkd compress" alone also matched this
# script when its own command was a skillkd command, and it stopped itself
pids=$(pgrep -f "bin/skillkd (compress|evaluate|export)")
trap '[ -n "${pids// /}" ] && kill -CONT $pids 2>/dev/null' EXIT INT TERM
if [ -n "$pids" ]; then
  kill -STOP $pids
fi
sleep 5
# a job that started between the first look and the stop (a queue handing this lock over while its next job
# starts) is stopped too
late=$(pgrep -f "bin/skillkd (compress|evaluate|export)")
if [ -n "$late" ]; then
  kill -STOP $late
  pids="$pids $late"
fi
"$@"
