"""The two Python files of a Hugging Face export (`configuration_skillkd.py`, `modeling_skillkd.py`).

They are copied as they are into every export directory and loaded there by transformers with
`trust_remote_code=True`, so they import only torch and transformers, never skillkd. `core.export.hf` also
imports them from here to build the module it exports to ONNX.
"""
