"""Evaluation of speech encoders: SUPERB-style probes (phoneme recognition, speaker identification) on frozen
features, model facts (parameters, MACs per second of audio, real-time factor, CKA to the teacher), and the
method comparison behind `skillkd compare`.

    load_probe_data(dataset)            -> ProbeData        labels and splits from manifest.jsonl
    extract_features(model, items)      -> FeatureSet       every representation, float16, once per dataset
    train_phone_probe / train_speaker_probe                 weighted layer sum + CTC / linear head
    finetune.finetune(model, data, "ctc"|"speaker") -> FinetuneResult   the whole model fine-tuned briefly
    count_macs, real_time_factor, cluster_cka               model facts
    evaluate(model, dataset)            -> dict             all of the above for one model (+ FBANK)
    compare(teacher, dataset)           -> dict             compress with each method x seed, evaluate all

The CLI commands (`skillkd evaluate`, `skillkd compare`) live in `cli/evaluate.py`.
"""

from core.evaluation.compare import compare, write_split_view
from core.evaluation.dataset import TASKS, ProbeData, load_probe_data
from core.evaluation.facts import (
    MacCounter,
    MacReport,
    SpeedReport,
    cluster_cka,
    count_macs,
    count_parameters,
    real_time_factor,
)
from core.evaluation.fbank import Fbank, mel_filterbank
from core.evaluation.features import FeatureSet, RepresentationModel, extract_features
from core.evaluation.finetune import FINETUNE_TASKS, FinetuneConfig, FinetuneResult
from core.evaluation.per import ctc_collapse, ctc_greedy_decode, edit_distance, error_rate
from core.evaluation.probes import (
    PhoneProbe,
    PhoneProbeConfig,
    PhoneProbeResult,
    PhoneVocabulary,
    SpeakerProbe,
    SpeakerProbeConfig,
    SpeakerProbeResult,
    WeightedLayerSum,
    train_phone_probe,
    train_speaker_probe,
)
from core.evaluation.run import evaluate

__all__ = [
    "FINETUNE_TASKS",
    "TASKS",
    "FeatureSet",
    "Fbank",
    "FinetuneConfig",
    "FinetuneResult",
    "MacCounter",
    "MacReport",
    "PhoneProbe",
    "PhoneProbeConfig",
    "PhoneProbeResult",
    "PhoneVocabulary",
    "ProbeData",
    "RepresentationModel",
    "SpeakerProbe",
    "SpeakerProbeConfig",
    "SpeakerProbeResult",
    "SpeedReport",
    "WeightedLayerSum",
    "cluster_cka",
    "compare",
    "count_macs",
    "count_parameters",
    "ctc_collapse",
    "ctc_greedy_decode",
    "edit_distance",
    "error_rate",
    "evaluate",
    "extract_features",
    "load_probe_data",
    "mel_filterbank",
    "real_time_factor",
    "train_phone_probe",
    "train_speaker_probe",
    "write_split_view",
]
