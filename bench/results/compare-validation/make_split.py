"""The validation split used for the investigation in ../compare.md: tts-dev's train rows only, 20% of each
speaker's utterances (seeded shuffle) relabelled `val`; the audio folder is copied next to the manifest.

    python3 bench/results/compare-validation/make_split.py ../shared/data/tts-dev runs/tts-val
"""

import collections
import json
import random
import shutil
import sys
from pathlib import Path

source, dest = Path(sys.argv[1]), Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
if not (dest / "audio").exists():
    shutil.copytree(source / "audio", dest / "audio")
rows = [json.loads(line) for line in (source / "manifest.jsonl").read_text().splitlines() if line.strip()]
by_speaker = collections.defaultdict(list)
for row in rows:
    if row["split"] == "train":
        by_speaker[row["speaker"]].append(row)
rng = random.Random(0)
out = []
for _speaker, items in sorted(by_speaker.items()):
    rng.shuffle(items)
    n_val = max(1, round(0.2 * len(items)))
    out += [{**row, "split": "val" if i < n_val else "train"} for i, row in enumerate(items)]
with open(dest / "manifest.jsonl", "w") as f:
    for row in sorted(out, key=lambda r: r["id"]):
        f.write(json.dumps(row) + "\n")
print(collections.Counter(r["split"] for r in out))
