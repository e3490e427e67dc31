#!/bin/bash
cd /work/exp
export PYTHONPATH=/work/exp OMP_NUM_THREADS=1
H=/work/main/runs/tts-dev-heldout
run() { T=$1; B=$2; OUT=$3
  echo "start B $T $B $(date)"
  python3 -c "from cli import main; main()" compare /work/shared/teachers/$T $H --compress-split compress --train-split probe_train --test-split probe_test --methods skill --budgets "$B" --seeds 3 --preset quick --device cpu --no-fbank --stage2-steps 1920 --out $OUT > $OUT.log 2>&1
  echo "end B $T rc=$? $(date)"
}
run wavlm-mini macs_sparsity=0.82 /work/runs-exp/B-wavlm-macs
run hubert-mini macs_sparsity=0.82 /work/runs-exp/B-hubert-macs
