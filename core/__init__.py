"""skillkd's engine: SKILL / DPHuBERT compression of wav2vec 2.0-family speech encoders.

The public surface: `core.pipeline.run` (the whole job), `core.spec.CompressionSpec` (what to do),
`core.models.load_model` / `core.export.load_student` (the ways in and out), `core.errors` (what can go wrong).
"""

__version__ = "0.1.0"
