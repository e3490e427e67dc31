#!/bin/bash
cd /work/main
A=/work/runs-exp/A-wavlm-lat/runs; B=/work/runs-exp/B-wavlm-macs/runs; R=/work/main/bench/results/budgets/heldout-v14
echo "start $(date) load $(cat /proc/loadavg)"
flock /tmp/bench.lock env OMP_NUM_THREADS=1 python3 -m bench.budget_table /work/shared/teachers/wavlm-mini \
  --budget "SKILL latency 4x=$A/skill-target_speedup4-seed0,$A/skill-target_speedup4-seed1,$A/skill-target_speedup4-seed2" \
  --budget "DPHuBERT latency 4x=$A/dphubert-target_speedup4-seed0,$A/dphubert-target_speedup4-seed1,$A/dphubert-target_speedup4-seed2" \
  --budget "SKILL MACs 0.82=$B/skill-macs_sparsity0.82-seed0,$B/skill-macs_sparsity0.82-seed1,$B/skill-macs_sparsity0.82-seed2" \
  --rounds 3 --runs 11 --json $R/wavlm-mini-speed.json --markdown $R/wavlm-mini-speed.md
echo "table rc=$? $(date) load $(cat /proc/loadavg)"
for s in 0 1 2; do
  flock /tmp/bench.lock env OMP_NUM_THREADS=1 python3 -m bench.onnx_int8 $A/skill-target_speedup4-seed$s/student /work/shared/data/tts-dev --recipes static_conv --rounds 15 --out $R/int8-skill-s$s
  echo "int8 $s rc=$? $(date)"
done
