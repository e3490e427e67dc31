"""How different are SKILL's and DPHuBERT's distillation targets on a teacher? (issue #4)

Linear CKA between DPHuBERT's single-layer targets (r0, r[L/3], r[2L/3], r[L]) and SKILL's cluster means, and
between neighbouring layers, on the teacher's representations of the first N train utterances.

    python -m bench.target_cka ../shared/teachers/hubert-mini ../shared/data/tts-dev \\
        --clusters '0;1-4;5-7;8-12'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cli.spec_options import parse_clusters
from core.calibrate.cka import linear_cka
from core.data import load_waveform, scan_audio
from core.models import load_model
from core.rules import dphubert_clusters


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("teacher", type=Path)
    p.add_argument("dataset", type=Path)
    p.add_argument("--clusters", required=True, help="SKILL's clusters, e.g. '0;1-4;5-7;8-12'")
    p.add_argument("--split", default="train")
    p.add_argument("--utterances", type=int, default=100)
    args = p.parse_args(argv)

    model = load_model(args.teacher).eval()
    num_layers = model.config.num_layers
    items = scan_audio(args.dataset).filter(split=args.split).items[: args.utterances]
    feats: list[list[np.ndarray]] = [[] for _ in range(num_layers + 1)]
    with torch.inference_mode():
        for item in items:
            reps, _ = model(torch.from_numpy(load_waveform(item, model.config.sample_rate))[None], None)
            for i, r in enumerate(reps):
                feats[i].append(r[0].double().numpy())
    x = [np.concatenate(f) for f in feats]  # (frames, dim) per representation
    clusters = parse_clusters(args.clusters)
    dphubert = [c[0] for c in dphubert_clusters(num_layers)]  # the layers a DPHuBERT run distils
    result = {
        "teacher": str(args.teacher),
        "utterances": len(items),
        "frames": int(x[0].shape[0]),
        "clusters": clusters,
        "dphubert_layers": dphubert,
        "target_vs_cluster_mean": {
            f"r{d} vs mean(r{c[0]}..r{c[-1]})": linear_cka(x[d], np.mean([x[i] for i in c], axis=0))
            for c, d in zip(clusters, dphubert, strict=False)
        },
        "adjacent": [linear_cka(x[i], x[i + 1]) for i in range(num_layers)],
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
