"""Export: the student as people use it.

student.py    save_student        skillkd's own format (read back by core.models.load_student)
hf.py         save_hf_export      a transformers model directory (remote code in hf_template/)
onnx.py       export_onnx_variants  fp32 / fp16 / int8 ONNX, each verified against PyTorch fp32
for_users.py  export_for_users    the Hugging Face export and the ONNX variants, checked on a job's audio
report.py     build_report        report.json: teacher, student, targets, clusters, losses, speed
"""
