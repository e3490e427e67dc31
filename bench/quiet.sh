#!/bin/bash
# Run a benchmark with this machine's running compressions and evaluations paused:
#   flock /tmp/bench.lock bench/quiet.sh env OMP_NUM_THREADS=1 python -m bench.onnx_int8 ...
# Every `skillkd compress` / `evaluate` / `export` process gets SIGSTOP before the command and SIGCONT after it,
# however the command ends. A paused job's own timings (its stage times, its report's speed check) then include
# the pause: they are not figures. The load average the benchmarks record still counts the paused minute before.
# Matched on "skillkd compress|evaluate|export" anywhere in a command line, so a job still in its launcher
# (pyenv's shim, `pyenv exec`) is caught too: a pattern on "bin/skillkd ..." alone let one started in the 5 s
# below run through a timing. This script, what started it (flock, a shell) and what it starts are never
# matched, whatever their command lines say: a skillkd command given to this script stopped itself once.
pattern="skillkd (compress|evaluate|export)"

parent() { ps -o ppid= -p "$1" 2>/dev/null | tr -d ' '; }

own=" $$ "
p=$PPID
while [ -n "$p" ] && [ "$p" -gt 1 ]; do
  own="$own$p "
  p=$(parent "$p")
done

below_me() {  # is $1 this script or started by it (a command substitution's subshell included)?
  local q=$1
  while [ -n "$q" ] && [ "$q" -gt 1 ]; do
    [ "$q" = "$$" ] && return 0
    q=$(parent "$q")
  done
  return 1
}

running_jobs() {
  local found="" q
  for q in $(pgrep -f "$pattern"); do
    [[ "$own" == *" $q "* ]] && continue
    below_me "$q" && continue
    found="$found $q"
  done
  echo "$found"
}

pids=$(running_jobs)
trap '[ -n "${pids// /}" ] && kill -CONT $pids 2>/dev/null' EXIT INT TERM
if [ -n "${pids// /}" ]; then
  kill -STOP $pids
fi
sleep 5
# a job that started between the first look and the stop (a queue handing this lock over while its next job
# starts) is stopped too
late=$(running_jobs)
if [ -n "${late// /}" ]; then
  kill -STOP $late 2>/dev/null
  pids="$pids $late"
fi
"$@"
