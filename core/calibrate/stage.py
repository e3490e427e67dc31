"""Calibrate (algorithm.md §1): streaming linear CKA over the teacher's L+1 representations on calibration
audio, then the layer clusters (SKILL's hierarchical clustering, the spec's explicit groups, or DPHuBERT's
fixed layers). Writes `cka.npy`, `cka.png` and `clusters.json` in its output directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.calibrate.cka import StreamingCKA
from core.calibrate.clustering import Clustering, cluster_layers
from core.calibrate.latency import TimerFactory, cost_model_for
from core.calibrate.latency import summary as latency_summary
from core.data import AudioCatalog, iter_padded_batches
from core.errors import StopRequested
from core.events import Event, OnEvent, ShouldStop, ignore_event, never_stop
from core.models import SpeechEncoder
from core.rules import dphubert_clusters, fixed_clusters
from core.spec import CompressionSpec
from core.workdir import json_default


def calibrate(
    spec: CompressionSpec,
    teacher: SpeechEncoder,
    catalog: AudioCatalog,
    out: Path,
    device: torch.device,
    emit: OnEvent = ignore_event,
    should_stop: ShouldStop = never_stop,
    make_timer: TimerFactory | None = None,
) -> dict[str, Any]:
    """Streaming linear CKA over the teacher's L+1 representations, then the layer clusters; with a latency
    budget, the cost model on its speed target (timed by `make_timer` on a target other than "cpu")."""
    out.mkdir(parents=True, exist_ok=True)
    num_reps = teacher.num_layers + 1
    cal = catalog.subset(spec.calibration_utterances, spec.calibration_seconds, seed=spec.seed)
    acc = StreamingCKA(num_reps, teacher.config.hidden_size, device=device)
    sr = teacher.config.sample_rate
    batch_seconds = 160.0 if device.type == "cuda" else 40.0
    batches = list(
        iter_padded_batches(cal, sample_rate=sr, batch_seconds=batch_seconds, max_utterance_s=30.0)
    )
    teacher.eval()
    for i, batch in enumerate(batches):
        with torch.inference_mode():
            reps, frames = teacher(batch.waveforms.to(device), batch.lengths.to(device))
            acc.update(reps, frames)
        emit(Event("progress", "calibrate", i + 1, len(batches)))
        if should_stop():
            raise StopRequested("stopped during calibrate")
    cka = acc.compute()
    np.save(out / "cka.npy", cka)
    clustering: Clustering | None = None
    fixed = fixed_clusters(spec, num_reps)
    if fixed is not None:
        clusters = fixed
    elif spec.method == "dphubert":
        clusters = dphubert_clusters(teacher.num_layers)
    else:
        k = spec.clusters
        assert not isinstance(k, list)  # explicit groups are `fixed`
        if isinstance(k, int) and k > num_reps:
            k = num_reps  # the default k=4 on a teacher with fewer layers: one cluster per representation
        clustering = cluster_layers(cka, k, spec.linkage, spec.contiguous)
        clusters = clustering.clusters
    if clustering is None:  # still draw the similarity structure; boxes show the fixed clusters
        clustering = cluster_layers(cka, min(len(clusters), num_reps), spec.linkage, spec.contiguous)
        clustering = Clustering(clusters, clustering.linkage, clustering.method, len(clusters), False)
    from core.calibrate.plots import plot_cka  # matplotlib: loaded only when a plot is drawn

    plot_cka(
        cka,
        clustering,
        out / "cka.png",
        title=f"{teacher.config.architecture}: linear CKA of r0..r{teacher.num_layers}",
    )
    info = {
        "clusters": clusters,
        "cka": cka.tolist(),
        "clustering": clustering.to_dict(),
        "utterances": len(cal.items),
        "audio_seconds": cal.total_seconds,
        "frames": int(acc.count) if hasattr(acc, "count") else None,
    }
    (out / "clusters.json").write_text(json.dumps(info, indent=2, default=json_default))
    if spec.target_speedup is not None:
        # the latency budget's cost model, fitted (or read from the cache) on the spec's speed target
        document = cost_model_for(
            teacher,
            target=spec.speed_target,
            threads=spec.speed_threads,
            seconds=spec.macs_reference_seconds,
            out=out,
            seed=spec.seed,
            make_timer=make_timer,
        )
        info["cost_model"] = latency_summary(document)
    return info


__all__ = ["calibrate"]
