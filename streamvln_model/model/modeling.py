"""`StreamVLNForCausalLM`: Qwen2 + SigLIP + mlp2x_gelu projector with memory/image splicing.

A sample's token stream holds one `<memory>` placeholder (when it has history) and one `<image>`
placeholder per current frame. Its frames arrive in order: the first `num_history` are history
(pooled and concatenated into one memory segment), the rest are current frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2ForCausalLM, Qwen2Model
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel

from streamvln_model.model.configuration import StreamVLNConfig
from streamvln_model.model.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, MEMORY_TOKEN_INDEX
from streamvln_model.model.vision import (
    SiglipTower,
    build_projector,
    pool_2d,
    resolve_vision_config,
    tokens_per_frame,
)

Frames = torch.Tensor | Sequence[torch.Tensor]


class StreamVLNModel(Qwen2Model):
    """The Qwen2 decoder plus the multimodal modules, named as in LLaVA checkpoints."""

    config_class = StreamVLNConfig

    def __init__(self, config: StreamVLNConfig):
        super().__init__(config)
        vision_config = resolve_vision_config(config)
        self.vision_tower = SiglipTower(
            vision_config,
            select_layer=config.mm_vision_select_layer,
            select_feature=config.mm_vision_select_feature,
            dropped_layers=config.mm_vision_tower_dropped_layers,
        )
        self.mm_projector = build_projector(vision_config.hidden_size, config.hidden_size)
        if "unpad" in (config.mm_patch_merge_type or ""):
            # Loaded so LLaVA-Video checkpoints round-trip; the navigation forward does not use it.
            self.image_newline = nn.Parameter(torch.zeros(config.hidden_size))
        self.post_init()


class StreamVLNForCausalLM(Qwen2ForCausalLM):
    config_class = StreamVLNConfig
    _no_split_modules = ("Qwen2DecoderLayer", "SiglipEncoderLayer")

    def __init__(self, config: StreamVLNConfig):
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = StreamVLNModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_vision_tower(self) -> SiglipTower:
        return self.model.vision_tower

    def unused_parameter_names(self) -> list[str]:
        """Parameters the navigation forward never uses, so they never receive a gradient.

        The published trainer marks them trainable too; they stay unchanged there (no gradient),
        but under DDP with gradient checkpointing (the published default), where transformers
        turns off DDP's unused-parameter search, a trainable parameter without a gradient stops
        the first backward. The worker keeps them frozen: the same training, without the error.
        """
        unused = [f"model.vision_tower.{name}" for name in self.get_vision_tower().unused_parameter_names()]
        return unused + (["model.image_newline"] if hasattr(self.model, "image_newline") else [])

    @property
    def tokens_per_frame(self) -> int:
        return tokens_per_frame(self.get_vision_tower().num_patches_per_side, *self._pool_args())

    def _pool_args(self) -> tuple[int, str]:
        return self.config.mm_spatial_pool_stride, self.config.mm_spatial_pool_mode

    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[frames, 3, S, S]` -> `[frames, tokens_per_frame, llm_hidden]` (project, then pool)."""
        tower = self.get_vision_tower()
        features = self.model.mm_projector(tower(pixel_values))
        return pool_2d(features, tower.num_patches_per_side, *self._pool_args())

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: Frames,
        time_ids: Sequence | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Replace placeholders by visual tokens; returns (embeds, attention_mask, position_ids, labels)."""
        frames = list(images)
        if len(frames) != input_ids.shape[0]:
            raise ValueError(f"got {len(frames)} frame stacks for a batch of {input_ids.shape[0]} sequences")
        features = self.encode_frames(torch.cat(frames)).split([f.shape[0] for f in frames])
        embed = self.get_input_embeddings()
        sequences, sequence_labels = [], []
        for b, ids in enumerate(input_ids):
            keep = (
                attention_mask[b].bool()
                if attention_mask is not None
                else torch.ones_like(ids, dtype=torch.bool)
            )
            ids = ids[keep]
            lab = labels[b][keep] if labels is not None else torch.full_like(ids, IGNORE_INDEX)
            visual = self._visual_segments(b, ids, features[b], time_ids)
            text = embed(ids.clamp(min=0))
            pieces, piece_labels, start = [], [], 0
            for position, segment in zip(torch.nonzero(ids < 0).flatten().tolist(), visual, strict=True):
                pieces += [text[start:position], segment.to(text.dtype)]
                piece_labels += [lab[start:position], lab.new_full((segment.shape[0],), IGNORE_INDEX)]
                start = position + 1
            pieces.append(text[start:])
            piece_labels.append(lab[start:])
            sequences.append(torch.cat(pieces))
            sequence_labels.append(torch.cat(piece_labels))
        embeds, mask, positions, new_labels = self._pad(sequences, sequence_labels)
        return embeds, mask, positions, (new_labels if labels is not None else None)

    def _visual_segments(
        self, b: int, ids: torch.Tensor, features: torch.Tensor, time_ids: Sequence | None
    ) -> list[torch.Tensor]:
        """Visual token blocks for the placeholders of sample `b`, in the order they occur."""
        placeholders = ids[ids < 0].tolist()
        unknown = set(placeholders) - {IMAGE_TOKEN_INDEX, MEMORY_TOKEN_INDEX}
        if unknown:
            raise ValueError(f"sample {b}: unknown negative token ids {sorted(unknown)}")
        n_memory = placeholders.count(MEMORY_TOKEN_INDEX)
        n_images = placeholders.count(IMAGE_TOKEN_INDEX)
        if n_memory > 1:
            raise ValueError(f"sample {b}: {n_memory} <memory> placeholders; a sample holds at most one")
        n_history = (self.config.num_history or 0) if n_memory else 0
        if features.shape[0] != n_history + n_images:
            raise ValueError(
                f"sample {b}: {n_images} <image> and {n_memory} <memory> placeholders need "
                f"{n_history + n_images} frames (num_history={self.config.num_history}), "
                f"got {features.shape[0]}"
            )
        if time_ids is not None and time_ids[b] is not None and len(time_ids[b]) > 0:
            starts_later = int(time_ids[b][0]) > 0
            if starts_later != bool(n_memory):
                raise ValueError(
                    f"sample {b}: time_ids start at {int(time_ids[b][0])} but n_memory={n_memory}"
                )
        memory = features[:n_history].flatten(0, 1)
        current = iter(features[n_history:])
        return [memory if p == MEMORY_TOKEN_INDEX else next(current) for p in placeholders]

    def _pad(
        self, sequences: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Truncate to tokenizer_model_max_length, pad per tokenizer_padding_side, positions 0..len-1."""
        limit = self.config.tokenizer_model_max_length
        if limit:
            sequences = [s[:limit] for s in sequences]
            labels = [lab[:limit] for lab in labels]
        batch, longest = len(sequences), max(s.shape[0] for s in sequences)
        ref = sequences[0]
        embeds = ref.new_zeros((batch, longest, ref.shape[1]))
        new_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long, device=ref.device)
        mask = torch.zeros((batch, longest), dtype=torch.long, device=ref.device)
        positions = torch.zeros((batch, longest), dtype=torch.long, device=ref.device)
        left = self.config.tokenizer_padding_side == "left"
        for i, (seq, lab) in enumerate(zip(sequences, labels, strict=True)):
            n = seq.shape[0]
            span = slice(longest - n, longest) if left else slice(0, n)
            embeds[i, span] = seq
            new_labels[i, span] = lab
            mask[i, span] = 1
            positions[i, span] = torch.arange(n, device=ref.device)
        return embeds, mask, positions, new_labels

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        images: Frames | None = None,
        depths: torch.Tensor | None = None,
        poses: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        image_sizes: list | None = None,
        return_dict: bool | None = None,
        modalities: list[str] | None = None,
        time_ids: Sequence | None = None,
        task_ids: Sequence | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Keeps the published call signature; depths/poses/intrinsics/task_ids are accepted and unused."""
        kwargs.pop("task_type", None)
        cache = kwargs.pop("cache", None) or past_key_values  # transformers 5 name / published name
        if inputs_embeds is None and images is not None:
            inputs_embeds, attention_mask, position_ids, labels = self.prepare_multimodal_inputs(
                input_ids, attention_mask, labels, images, time_ids
            )
            input_ids = None
        if self.training and labels is not None and cache is None and not output_hidden_states:
            return self._labelled_positions_loss(
                input_ids, attention_mask, position_ids, inputs_embeds, labels, **kwargs
            )
        if output_attentions is not None:
            kwargs["output_attentions"] = output_attentions
        if output_hidden_states is not None:
            kwargs["output_hidden_states"] = output_hidden_states
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _labelled_positions_loss(
        self,
        input_ids,
        attention_mask,
        position_ids,
        inputs_embeds,
        labels,
        num_items_in_batch=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Training loss projecting only positions that predict a label onto the vocabulary.

        Visual and prompt tokens (~90% of a navigation sample) carry no label; skipping their
        152k-way projection gives the same loss and gradients at a fraction of the cost. Logits
        are not returned (the Trainer does not use them in training).
        """
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        ).last_hidden_state
        targets = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].to(hidden.device)
        keep = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[keep]).float()
        loss = nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
        denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
        if torch.is_tensor(denominator):
            denominator = denominator.to(loss.device)
        return CausalLMOutputWithPast(loss=loss / denominator)

    @torch.no_grad()
    def generate(
        self, input_ids=None, images: Frames | None = None, time_ids=None, attention_mask=None, **kwargs
    ):
        """Greedy/sampled decoding from a multimodal prompt; returns only the new tokens."""
        if images is None:
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        embeds, mask, _, _ = self.prepare_multimodal_inputs(input_ids, attention_mask, None, images, time_ids)
        return super().generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)


AutoConfig.register(StreamVLNConfig.model_type, StreamVLNConfig)
AutoModelForCausalLM.register(StreamVLNConfig, StreamVLNForCausalLM)
