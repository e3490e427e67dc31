"""Helpers shared by the tests, imported by name (`from tests.utils.models import tiny_pair`); fixtures stay
in the conftest.py files and are built from these.

    paths       REPO, SHARED, DEMO_TEACHER, DEMO_AUDIO
    models      tiny transformers teachers saved to disk, mask spreading, pruned students, teacher/student
                pairs
    audio       a folder of short synthetic WAV utterances
    pipeline    the settings of a tiny compression run (SPEC)
    evaluation  a transformers model with the representation-model interface, labelled synthetic datasets
    venv        a Python environment without skillkd, to run what a user of an export runs
"""
