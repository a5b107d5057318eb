"""The hybrid attention/convolution backbone of a model genome, as Hugging Face models (SPEC 6).

    embeddings (word + position + token type, LayerNorm)
    -> per genome layer:  x = LN(x + mixer(x));  x = LN(x + FFN(x))     (post-LN, as BERT)
       mixer = attention (the layer's graph per head) | light convolution
    -> heads: masked LM (tied to the word embeddings) or sequence classification

Padding (attention_mask 0) never changes a real token's output, wherever the padded
tokens are: attention graphs run with the executor's delete-the-padded-tokens semantics,
convolutions run on the real tokens moved together, and position ids count real tokens
only. Everything else is per token. A given mask is always applied, all ones or not: no
branch depends on its values, so the models export (`torch.export`) and never wait on the
device to look at a mask.

Hugging Face conventions: `output_hidden_states`, `output_attentions` and `return_dict`
left None fall back to the config. A genome's graph has no probability matrix, so
`output_attentions=True` gives one None per layer (as transformers' SDPA attention does).
Gradient checkpointing (`gradient_checkpointing_enable()`) recomputes each layer.
"""

from __future__ import annotations

import logging

import torch
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, MaskedLMOutput, SequenceClassifierOutput

from genomec.genome import AttentionGenome, AttentionLayer, ConvLayer, GenomeError
from genomec.ir import lower

from .attention_backend import attention_function
from .configuration import GenomeBertConfig

try:  # transformers 5: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4: weights are initialised before loading
    from torch.nn import init

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

logger = logging.getLogger("genomec.models")


# -- embeddings --------------------------------------------------------------------------------


class GenomeBertEmbeddings(nn.Module):
    def __init__(self, config: GenomeBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, real=None):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if position_ids is None:
            if real is None:
                position_ids = torch.arange(length, device=inputs_embeds.device).expand(batch, length)
            else:  # count real tokens only, so padding anywhere leaves real positions unchanged
                position_ids = (real.long().cumsum(dim=1) - 1).clamp(min=0)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, length, dtype=torch.long, device=inputs_embeds.device)
        x = inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


# -- token mixers: attention and light convolution -------------------------------------------------


class AttentionProjections(nn.Module):
    """The parameters of an attention layer, apart from its graph (a graph adds none): the
    projections of the inputs it reads and the output projection. The search's super-net
    holds one with all of q, k, v per layer position."""

    def __init__(self, config: GenomeBertConfig, inputs):
        super().__init__()
        self.projections = nn.ModuleDict({name: nn.Linear(config.hidden_size, config.hidden_size) for name in inputs})
        self.output = nn.Linear(config.hidden_size, config.hidden_size)


class GenomeAttention(AttentionProjections):
    """Projections for the inputs the graph reads, the graph per head, output projection."""

    def __init__(self, config: GenomeBertConfig, graph: AttentionGenome):
        compiled = lower(graph)
        super().__init__(config, compiled.simplified.inputs)
        self.compiled = compiled
        self.ir = compiled.simplified
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.backend = config.attention_backend
        self._functions: dict[tuple[str, str], object] = {}  # (backend, device type) -> attention function

    def set_backend(self, backend: str) -> None:
        self.backend = backend

    def runs_on(self) -> list[tuple[str, str | None]]:
        """What ran this layer's graph so far: (backend, why not the fused kernels) per
        device used, backend "triton" (fused kernels) or "reference"."""
        return [(fn.backend, fn.reason) for fn in self._functions.values()]

    def forward(self, x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        batch, length, hidden = x.shape
        heads = {
            name: projection(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, d]
            for name, projection in self.projections.items()
        }
        key = (self.backend, x.device.type)
        if key not in self._functions:
            self._functions[key] = attention_function(self.compiled, self.backend, x.device)
        out = self._functions[key](heads.get("q"), heads.get("k"), heads.get("v"), mask=real)
        return self.output(out.transpose(1, 2).reshape(batch, length, hidden))


class LightConv(nn.Module):
    """SPEC 6.2 "light": Linear(H -> 2H) + GLU, depthwise conv over tokens (same padding),
    Linear(H -> H). Padding follows SPEC 2.4 exactly, wherever the padded tokens are: the
    real tokens are moved to the front in order (as if the padded ones were deleted),
    convolved with zeros after them, and moved back."""

    def __init__(self, config: GenomeBertConfig, kernel_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.input_projection = nn.Linear(hidden, 2 * hidden)
        self.depthwise = nn.Conv1d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.output_projection = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        h = nn.functional.glu(self.input_projection(x), dim=-1)
        if real is None:
            return self.output_projection(self.depthwise(h.transpose(1, 2)).transpose(1, 2))
        order = torch.argsort((~real).to(torch.uint8), dim=1, stable=True)  # real tokens first, in order
        gather_index = order[..., None].expand_as(h)
        compact = h.gather(1, gather_index).masked_fill(~real.gather(1, order)[..., None], 0.0)
        mixed = self.depthwise(compact.transpose(1, 2)).transpose(1, 2)
        return self.output_projection(torch.empty_like(mixed).scatter(1, gather_index, mixed))


# -- layers --------------------------------------------------------------------------------------


class GenomeBertLayer(nn.Module):
    def __init__(self, config: GenomeBertConfig, layer):
        super().__init__()
        if isinstance(layer, AttentionLayer):
            self.mixer = GenomeAttention(config, layer.graph)
        elif isinstance(layer, ConvLayer):
            if layer.variant != "light":
                raise ValueError(f"conv variant {layer.variant!r} is not implemented (variants: light)")
            self.mixer = LightConv(config, layer.kernel_size)
        else:
            raise TypeError(f"unknown layer {layer!r}")
        self.mixer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        x = self.mixer_norm(x + self.dropout(self.mixer(x, real)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation of one module: N(0, std) weights, zero biases, unit norms."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)


# -- Hugging Face models ---------------------------------------------------------------------------


class GenomeBertPreTrainedModel(PreTrainedModel):
    config_class = GenomeBertConfig
    base_model_prefix = "genome_bert"
    supports_gradient_checkpointing = True
    # The genome's graph is the attention: transformers' attention implementations (SDPA,
    # flash, flex, the attention-backend interface) never run, so the config stays "eager".
    _supports_sdpa = False
    _supports_flash_attn = False  # transformers 5
    _supports_flash_attn_2 = False  # transformers 4
    _supports_flex_attn = False
    _supports_attention_backend = False

    def _init_weights(self, module):
        init_bert_weights(module, self.config.initializer_range)

    def set_attention_backend(self, backend: str) -> None:
        """Force the attention backend of every attention layer ("auto", "reference", "triton")."""
        self.config.attention_backend = backend
        for module in self.modules():
            if isinstance(module, GenomeAttention):
                module.set_backend(backend)

    def _output_options(self, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
        """The forward arguments, each falling back to the config when None (as in every
        transformers model)."""
        config = self.config
        return (
            output_attentions if output_attentions is not None else bool(getattr(config, "output_attentions", False)),
            output_hidden_states if output_hidden_states is not None else bool(getattr(config, "output_hidden_states", False)),
            return_dict if return_dict is not None else getattr(config, "return_dict", True),
        )


_no_attention_maps_logged = False


def _no_attention_maps(num_layers: int) -> tuple[None, ...]:
    """What `output_attentions=True` returns: one None per layer. A genome's graph (and a
    conv layer) has no [N, N] probability matrix to return; transformers' SDPA attention
    answers the same way."""
    global _no_attention_maps_logged
    if not _no_attention_maps_logged:
        _no_attention_maps_logged = True
        logger.warning("output_attentions: genome layers have no attention probabilities; attentions are None per layer")
    return (None,) * num_layers


def _real_tokens(attention_mask, like: torch.Tensor) -> torch.Tensor | None:
    """attention_mask (1 = real) -> bool [B, N]; None without a mask. An all-ones mask is
    applied like any other (equal to no mask up to rounding): looking at its values would
    be a data-dependent branch, which `torch.export` refuses and which syncs the device."""
    if attention_mask is None:
        return None
    return attention_mask.to(device=like.device, dtype=torch.bool)


def check_heads(config: GenomeBertConfig) -> None:
    """hidden_size must split into num_heads heads; checked when a model is built (a config
    accepts any sizes, as transformers' configs do)."""
    if config.hidden_size % config.num_heads:
        raise GenomeError(f"config: hidden_size {config.hidden_size} is not a multiple of num_heads {config.num_heads}")


class GenomeBertModel(GenomeBertPreTrainedModel):
    """The encoder: embeddings and the genome's layers; `pooler_output` is the first real
    token through Linear + tanh (as BERT's pooler) when `add_pooling_layer`."""

    gradient_checkpointing = False  # set by gradient_checkpointing_enable(), with _gradient_checkpointing_func

    def __init__(self, config: GenomeBertConfig, add_pooling_layer: bool = True):
        check_heads(config)
        super().__init__(config)
        self.embeddings = GenomeBertEmbeddings(config)
        self.layers = nn.ModuleList(GenomeBertLayer(config, layer) for layer in config.model_genome.layers)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        output_attentions, output_hidden_states, return_dict = self._output_options(
            output_attentions, output_hidden_states, return_dict
        )
        like = input_ids if input_ids is not None else inputs_embeds
        real = _real_tokens(attention_mask, like)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, real=real)
        all_hidden = [x] if output_hidden_states else None
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            # x positional: reentrant checkpointing only sees gradients of positional tensors
            x = self._gradient_checkpointing_func(layer.__call__, x, real) if checkpointing else layer(x, real)
            if all_hidden is not None:
                all_hidden.append(x)
        pooled = None
        if self.pooler is not None:
            first_real = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if real is None else real.long().argmax(dim=1)
            pooled = torch.tanh(self.pooler(x[torch.arange(x.shape[0], device=x.device), first_real]))
        output = BaseModelOutputWithPooling(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=_no_attention_maps(len(self.layers)) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()


class MaskedLMHead(nn.Module):
    """BERT's MLM head: Linear + GELU + LayerNorm, then the decoder tied to the word embeddings."""

    def __init__(self, config: GenomeBertConfig):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, x):
        return self.decoder(self.LayerNorm(nn.functional.gelu(self.transform(x))))


class GenomeBertForMaskedLM(GenomeBertPreTrainedModel):
    # transformers 5 maps tied parameters to their source; 4.x lists them.
    if TRANSFORMERS_MAJOR >= 5:
        _tied_weights_keys = {"lm_head.decoder.weight": "genome_bert.embeddings.word_embeddings.weight"}
    else:
        _tied_weights_keys = ["lm_head.decoder.weight"]

    def __init__(self, config: GenomeBertConfig):
        super().__init__(config)
        self.genome_bert = GenomeBertModel(config, add_pooling_layer=False)
        self.lm_head = MaskedLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        output_attentions, output_hidden_states, return_dict = self._output_options(
            output_attentions, output_hidden_states, return_dict
        )
        outputs = self.genome_bert(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:  # -100 marks tokens that are not predicted
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return output if return_dict else output.to_tuple()


class GenomeBertForSequenceClassification(GenomeBertPreTrainedModel):
    """Pooled first real token -> dropout -> Linear(num_labels). One label is regression
    (mean squared error), more are single-label classification (cross-entropy)."""

    def __init__(self, config: GenomeBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.genome_bert = GenomeBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        output_attentions, output_hidden_states, return_dict = self._output_options(
            output_attentions, output_hidden_states, return_dict
        )
        outputs = self.genome_bert(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                self.config.problem_type = "regression" if self.num_labels == 1 else "single_label_classification"
            if self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
            elif self.config.problem_type == "single_label_classification":
                loss = nn.functional.cross_entropy(logits, labels.view(-1))
            else:  # multi_label_classification
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()
