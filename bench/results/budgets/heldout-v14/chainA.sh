#!/bin/bash
cd /work/exp
export PYTHONPATH=/work/exp OMP_NUM_THREADS=1
H=/work/main/runs/tts-dev-heldout
OUT=/work/runs-exp/A-wavlm-lat
echo "start A wavlm skill,dphubert latency $(date)"
python3 -c "from cli import main; main()" compare /work/shared/teachers/wavlm-mini $H --compress-split compress --train-split probe_train --test-split probe_test --methods skill,dphubert --budgets 'target_speedup=4' --seeds 3 --preset quick --device cpu --no-fbank --out $OUT > $OUT.log 2>&1
echo "end A rc=$? $(date)"
