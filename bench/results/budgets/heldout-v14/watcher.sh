#!/bin/bash
# Priority-ordered process groups in /work/runs-exp/groups (one PGID per line, highest first).
# While a group owns a `python -m core.timing` child, every other group is stopped (SIGSTOP).
log=/work/runs-exp/watcher.log
declare -A state
while true; do
  mapfile -t groups < /work/runs-exp/groups
  timers=$(ps -eo pgid=,args= | awk '/-m core.timing/ && !/awk/ {print $1}' | sort -u)
  owner=""
  for g in "${groups[@]}"; do
    if grep -qx "$g" <<<"$timers"; then owner=$g; break; fi
  done
  for g in "${groups[@]}"; do
    want=run
    if [ -n "$owner" ] && [ "$g" != "$owner" ]; then want=stop; fi
    if [ "${state[$g]}" != "$want" ]; then
      if [ $want = stop ]; then kill -STOP -- -$g 2>/dev/null; else kill -CONT -- -$g 2>/dev/null; fi
      state[$g]=$want; echo "$(date +%T) $g $want (owner ${owner:-none})" >> $log
    fi
  done
  sleep 0.3
done
