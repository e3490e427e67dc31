"""Configuration of a skillkd student exported for transformers (`AutoConfig` with trust_remote_code=True).

A pruned student keeps the wav2vec 2.0 / HuBERT / WavLM architecture but each transformer layer may keep a
different number of attention heads and FFN units, and each conv layer a different number of channels, so
those are lists here (one entry per layer) where transformers' own configs have one number.

This file is self-contained: it needs only transformers.
"""

from __future__ import annotations

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
        kwargs.pop("num_hidden_layers", None)
        super().__init__(**kwargs)
