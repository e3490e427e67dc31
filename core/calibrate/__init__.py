"""Calibration: how alike the teacher's layers are, and which of them each distillation target averages.

cka.py         StreamingCKA, linear_cka          linear CKA between all L+1 representations (float64)
clustering.py  cluster_layers, Clustering        hierarchical clustering on 1 - CKA (contiguous runs)
plots.py       plot_cka                          heatmap + dendrogram (cka.png)
latency.py     cost_model_for, fit_cost_model    a latency budget's cost model, fitted by timing pruned shapes
stage.py       calibrate(spec, teacher, ...)     the stage: CKA over calibration audio, then the clusters (and
                                                 with target_speedup the cost model)
"""
