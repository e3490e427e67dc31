"""Configuration of a skillkd student exported for transformers (`AutoConfig` with trust_remote_code=True).

A pruned student keeps the wav2vec 2.0 / HuBERT / WavLM architecture but each transformer layer may keep a
different number of attention heads and FFN units, and each conv layer a different number of channels, so
those are lists here (one entry per layer) where transformers' own configs have one number.

This file is self-contained: it needs only transformers.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig


class SkillkdConfig(PretrainedConfig):
    """Everything `SkillkdModel` needs to rebuild a student, per layer.

    architecture:                "wav2vec2", "hubert" or "wavlm"
    conv_dim/conv_kernel/conv_stride: per conv layer of the waveform feature extractor
    conv_output_scale:           per conv layer: a fixed per-channel scale (a buffer) follows its GELU
    feat_extract_norm:           "group" (GroupNorm on the first conv, Base layout) or "layer" (LayerNorm on
                                 every conv, Large layout)
    feat_proj_layer_norm:        LayerNorm before the feature projection
    feat_proj_phantom_channels:  channels pruned from the last conv that this LayerNorm still counts as zeros
    layer_num_heads:             attention heads kept in each transformer layer
    layer_intermediate_size:     FFN units kept in each transformer layer
    layer_head_indices:          WavLM only: which original heads each layer keeps (the relative-position
                                 table and its gates are per original head)
    gate_heads:                  WavLM only: the original number of heads
    do_stable_layer_norm:        pre-LN ("Large") layout, else post-LN ("Base")

    Fine-tuning and task heads, with the names, meanings and defaults of transformers' Wav2Vec2Config (so the
    keyword arguments of a fine-tuning recipe apply unchanged, e.g. `from_pretrained(dir, vocab_size=40,
    mask_time_prob=0.05, layerdrop=0.0)`):

    hidden_dropout, attention_dropout, activation_dropout, feat_proj_dropout, final_dropout, layerdrop
                                 dropouts and LayerDrop, active in training mode only
    apply_spec_augment, mask_time_prob/length/min_masks, mask_feature_prob/length/min_masks
                                 SpecAugment on the projected features in training mode (a learned
                                 `masked_spec_embed` replaces masked frames; masked features are zeroed)
    vocab_size, pad_token_id, ctc_loss_reduction, ctc_zero_infinity     CTC head (SkillkdForCTC)
    use_weighted_layer_sum, classifier_proj_size                         classification heads
    tdnn_dim, tdnn_kernel, tdnn_dilation, xvector_output_dim             x-vector head (SkillkdForXVector)
    """

    model_type = "skillkd"

    def __init__(
        self,
        architecture: str = "hubert",
        conv_dim: list[int] | None = None,
        conv_kernel: list[int] | None = None,
        conv_stride: list[int] | None = None,
        conv_output_scale: list[bool] | None = None,
        conv_bias: bool = False,
        feat_extract_norm: str = "group",
        feat_proj_layer_norm: bool = True,
        feat_proj_phantom_channels: int = 0,
        hidden_size: int = 768,
        head_dim: int = 64,
        layer_num_heads: list[int] | None = None,
        layer_intermediate_size: list[int] | None = None,
        layer_head_indices: list[list[int]] | None = None,
        gate_heads: int = 0,
        num_conv_pos_embeddings: int = 128,
        num_conv_pos_embedding_groups: int = 16,
        do_stable_layer_norm: bool = False,
        layer_norm_eps: float = 1e-5,
        num_buckets: int = 320,
        max_bucket_distance: int = 800,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        feat_proj_dropout: float = 0.0,
        final_dropout: float = 0.1,
        layerdrop: float = 0.1,
        apply_spec_augment: bool = True,
        mask_time_prob: float = 0.05,
        mask_time_length: int = 10,
        mask_time_min_masks: int = 2,
        mask_feature_prob: float = 0.0,
        mask_feature_length: int = 10,
        mask_feature_min_masks: int = 0,
        vocab_size: int | None = 32,
        ctc_loss_reduction: str = "sum",
        ctc_zero_infinity: bool = False,
        use_weighted_layer_sum: bool = False,
        classifier_proj_size: int = 256,
        tdnn_dim: list[int] | tuple[int, ...] = (512, 512, 512, 512, 1500),
        tdnn_kernel: list[int] | tuple[int, ...] = (5, 3, 3, 1, 1),
        tdnn_dilation: list[int] | tuple[int, ...] = (1, 2, 3, 1, 1),
        xvector_output_dim: int = 512,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        **kwargs,
    ) -> None:
        self.architecture = architecture
        self.conv_dim = list(conv_dim if conv_dim is not None else [512] * 7)
        self.conv_kernel = list(conv_kernel if conv_kernel is not None else [10, 3, 3, 3, 3, 2, 2])
        self.conv_stride = list(conv_stride if conv_stride is not None else [5, 2, 2, 2, 2, 2, 2])
        self.conv_output_scale = list(
            conv_output_scale if conv_output_scale is not None else [False] * len(self.conv_dim)
        )
        self.conv_bias = conv_bias
        self.feat_extract_norm = feat_extract_norm
        self.feat_proj_layer_norm = feat_proj_layer_norm
        self.feat_proj_phantom_channels = feat_proj_phantom_channels
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.layer_num_heads = list(layer_num_heads if layer_num_heads is not None else [12] * 12)
        self.layer_intermediate_size = list(
            layer_intermediate_size
            if layer_intermediate_size is not None
            else [3072] * len(self.layer_num_heads)
        )
        self.layer_head_indices = layer_head_indices
        self.gate_heads = gate_heads
        self.num_hidden_layers = len(self.layer_num_heads)
        self.num_conv_pos_embeddings = num_conv_pos_embeddings
        self.num_conv_pos_embedding_groups = num_conv_pos_embedding_groups
        self.do_stable_layer_norm = do_stable_layer_norm
        self.layer_norm_eps = layer_norm_eps
        self.num_buckets = num_buckets
        self.max_bucket_distance = max_bucket_distance
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.feat_proj_dropout = feat_proj_dropout
        self.final_dropout = final_dropout
        self.layerdrop = layerdrop
        self.apply_spec_augment = apply_spec_augment
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.mask_time_min_masks = mask_time_min_masks
        self.mask_feature_prob = mask_feature_prob
        self.mask_feature_length = mask_feature_length
        self.mask_feature_min_masks = mask_feature_min_masks
        self.vocab_size = vocab_size
        self.ctc_loss_reduction = ctc_loss_reduction
        self.ctc_zero_infinity = ctc_zero_infinity
        self.use_weighted_layer_sum = use_weighted_layer_sum
        self.classifier_proj_size = classifier_proj_size
        self.tdnn_dim = list(tdnn_dim)
        self.tdnn_kernel = list(tdnn_kernel)
        self.tdnn_dilation = list(tdnn_dilation)
        self.xvector_output_dim = xvector_output_dim
        lengths = {
            len(self.conv_dim),
            len(self.conv_kernel),
            len(self.conv_stride),
            len(self.conv_output_scale),
        }
        if len(lengths) != 1:
            raise ValueError("conv_dim, conv_kernel, conv_stride and conv_output_scale differ in length")
        if len(self.layer_intermediate_size) != self.num_hidden_layers:
            raise ValueError("layer_num_heads and layer_intermediate_size differ in length")
        if len({len(self.tdnn_dim), len(self.tdnn_kernel), len(self.tdnn_dilation)}) != 1:
            raise ValueError("tdnn_dim, tdnn_kernel and tdnn_dilation differ in length")
        kwargs.pop("num_hidden_layers", None)
        super().__init__(**kwargs)
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Waveform samples per output frame (the product of the conv strides), as transformers' pipelines
        read it."""
        return math.prod(self.conv_stride)
