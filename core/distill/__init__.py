"""Distillation: the cluster targets and their loss, the training loop, and the two training stages.

targets.py    ClusterTargets, distill_loss   one projection per cluster (SKILL) or shared (DPHuBERT)
train.py      DistillStep, train_stage       one optimiser step; the resumable loop with the Lagrangian
build.py      new_student, train_batches...  what a stage is built from, the same in every process
parallel.py   run_parallel_stage             a training stage on N data-parallel ranks
stage.py      distill_prune, final_distill   the pipeline's stages 1 and 2
"""
