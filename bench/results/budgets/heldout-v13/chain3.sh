#!/bin/bash
while kill -0 5621 2>/dev/null; do sleep 20; done
echo "end hubert-mini dphubert $(date)"
cd /work/exp && git pull -q /work/main main && echo "exp at $(git log --oneline | head -1)"
export PYTHONPATH=/work/exp
H=/work/main/runs/tts-dev-heldout
OUT=/work/runs-exp/hc-wavlm-mini
echo "start wavlm-mini skill 960 $(date)"
python3 -c "from cli import main; main()" compare /work/shared/teachers/wavlm-mini $H --compress-split compress --train-split probe_train --test-split probe_test --methods skill --budgets 'target_speedup=4' --seeds 3 --preset quick --device cpu --no-fbank --out $OUT > $OUT.log 2>&1
echo "end wavlm-mini skill 960 rc=$? $(date)"
for s in 0 1 2; do
  python3 /work/runs-exp/stage2_resume.py $OUT/runs skill /work/runs-exp/s2x2-wavlm 1920 $s >> /work/runs-exp/s2x2-wavlm.log 2>&1
  echo "stage2 seed $s rc=$? $(date)"
  python3 -c "from cli import main; main()" evaluate /work/runs-exp/s2x2-wavlm/skill-seed$s/student $H --train-split probe_train --test-split probe_test --seed $s --no-fbank --out /work/runs-exp/s2x2-wavlm/evaluation-seed$s >> /work/runs-exp/s2x2-wavlm-eval.log 2>&1
  echo "eval seed $s rc=$? $(date)"
done
