#!/bin/bash
cd /work/exp
export PYTHONPATH=/work/exp OMP_NUM_THREADS=1
mkdir -p /work/runs-exp/int8
for s in 0 1 2; do
  python3 -c "from cli import main; main()" export /work/runs-exp/A-wavlm-lat/runs/skill-target_speedup4-seed$s/student --onnx fp32,int8 --int8-mode static_conv --audio /work/shared/data/tts-dev --out /work/runs-exp/int8/skill-s$s --json > /work/runs-exp/int8/gate-skill-s$s.json 2> /work/runs-exp/int8/gate-skill-s$s.err
  echo "gate $s rc=$? $(date)"
done
