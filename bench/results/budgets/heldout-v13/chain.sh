#!/bin/bash
cd /work/exp
export PYTHONPATH=/work/exp
H=/work/main/runs/tts-dev-heldout
run() { T=$1; M=$2; OUT=$3
  echo "start $T $M $(date)"
  python3 -c "from cli import main; main()" compare /work/shared/teachers/$T $H --compress-split compress --train-split probe_train --test-split probe_test --methods $M --budgets 'target_speedup=4' --seeds 3 --preset quick --device cpu --no-fbank --stage2-steps 1920 --out $OUT > $OUT.log 2>&1
  echo "end $T $M rc=$? $(date)"
}
run hubert-mini dphubert /work/runs-exp/hc2-hubert-mini-dphubert
run wavlm-mini skill /work/runs-exp/hc2-wavlm-mini-skill
