"""Interleaved text-speech LM (IST-LM, Yang et al., 2024): the LLM backbone + a TTS LoRA +
speech-token embeddings and head, trained on ``n`` text tokens then ``m`` speech tokens, repeated.

    [START] t1..tn s1..sm t(n+1)..t(2n) s(m+1)..s(2m) ... t_last [TEXT_END] s.. s.. [EOS]

Text tokens enter through the backbone's own embedding, speech tokens (and the three markers)
through ``speech_emb``; ``head`` predicts the next speech token (or EOS) from the hidden state
wherever a speech token comes next. Because a group of ``m`` speech tokens only ever needs the
text seen so far, synthesis can start after ``n`` text tokens and go on as text arrives
(:meth:`TextSpeechLM.stream`): the ratio n:m sets how far text runs ahead of speech.

The backbone comes through :func:`load_tts_backbone` (the zoo's LLM via
``speechllm.speechlm.backbone.load_backbone``, so ``quant=`` reaches the low-bit loader), cut
to its first ``n_layers`` decoder layers: on two CPU cores a full 30-layer pass per 40 ms of
speech would be slower than real time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.speechlm.model import LoraSpec
from speechllm.zoo import DEFAULT_LLM

IGNORE = -100


@dataclass(frozen=True)
class LMConfig:
    backbone: str = DEFAULT_LLM
    quant: str | None = None  # None: fp32; else a speechllm.llm format name ("int4", "int8")
    n_layers: int | None = 6  # first N decoder layers of the backbone (None: all)
    n_speech: int = 1000  # speech-token vocabulary (the tokenizer's)
    text_chunk: int = 3  # n
    speech_chunk: int = 9  # m
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                     "gate_proj", "up_proj", "down_proj")

    @property
    def eos(self) -> int:
        return self.n_speech

    @property
    def text_end(self) -> int:
        return self.n_speech + 1

    @property
    def start(self) -> int:
        return self.n_speech + 2


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.8
    top_k: int = 20
    seed: int = 0
    max_tokens_per_text_token: float = 20.0  # cap on speech length: a stuck model still stops
    first_yield: int = 0  # yield the first group's first k tokens at once (earlier first audio); 0: off


def load_tts_backbone(name: str, quant: str | None = None, n_layers: int | None = None):
    """(decoder stack with its first ``n_layers`` layers, tokenizer); the dropped layers are not kept."""
    from speechllm.speechlm.backbone import load_backbone

    causal_lm, tokenizer = load_backbone(name, quant=quant)
    return truncate(causal_lm.model, n_layers), tokenizer


def truncate(decoder: nn.Module, n_layers: int | None) -> nn.Module:
    if n_layers is None or n_layers >= len(decoder.layers):
        return decoder
    cut = copy.copy(decoder)  # shares every kept submodule with the original
    cut._modules = dict(decoder._modules)
    cut.layers = nn.ModuleList(list(decoder.layers)[:n_layers])
    cut.config = copy.deepcopy(decoder.config)
    cut.config.num_hidden_layers = n_layers
    if getattr(cut.config, "layer_types", None):
        cut.config.layer_types = cut.config.layer_types[:n_layers]
    return cut


def interleave(text: list[int], speech: list[int], config: LMConfig) -> tuple[list[int], list[bool]]:
    """The training sequence (ids, is_speech) for one utterance: groups of n text then m speech tokens."""
    n, m = config.text_chunk, config.speech_chunk
    ids, is_speech = [config.start], [True]
    ti = si = 0
    while ti < len(text) or si < len(speech):
        if ti < len(text):
            group = text[ti:ti + n]
            ids += group
            is_speech += [False] * len(group)
            ti += len(group)
            if ti == len(text):
                ids.append(config.text_end)
                is_speech.append(True)
        group = speech[si:si + m] if ti < len(text) else speech[si:]
        ids += group
        is_speech += [True] * len(group)
        si += len(group)
    ids.append(config.eos)
    is_speech.append(True)
    return ids, is_speech


class TextSpeechLM(nn.Module):
    def __init__(self, config: LMConfig, decoder: nn.Module, tokenizer):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.decoder = decoder
        hidden = decoder.config.hidden_size
        self.speech_emb = nn.Embedding(config.n_speech + 3, hidden)
        self.head = nn.Linear(hidden, config.n_speech + 1)
        table = decoder.embed_tokens  # a float or a low-bit (QuantEmbedding) table
        weight = table.qweight.dequantize() if hasattr(table, "qweight") else table.weight
        nn.init.normal_(self.speech_emb.weight, std=weight.std().item())
        self._add_lora()

    @classmethod
    def build(cls, config: LMConfig, decoder: nn.Module | None = None, tokenizer=None) -> TextSpeechLM:
        if decoder is None:
            decoder, tokenizer = load_tts_backbone(config.backbone, config.quant, config.n_layers)
        return cls(config, decoder, tokenizer)

    def _add_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        from speechllm.quant.lora import register

        c = self.config
        self.decoder.requires_grad_(False)
        spec = LoraSpec(rank=c.lora_rank, alpha=c.lora_alpha, target_modules=c.lora_targets)
        lora = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                          target_modules=list(spec.target_modules), bias="none")
        self.decoder = inject_adapter_in_model(register(lora), self.decoder)  # float or QuantLinear bases

    def saved_state(self) -> dict[str, Tensor]:
        """What a TTS LM folder holds: LoRA, speech embeddings and head (the backbone loads by name)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("decoder.") or "lora_" in k}

    def load_saved_state(self, state: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"TTS LM weights do not fit the model, e.g. {unexpected[0]}")
        mine = [k for k in missing if not k.startswith("decoder.") or "lora_" in k]
        if mine:
            raise ValueError(f"TTS LM weights are missing {mine[0]}")

    # -- inference
    def merge_lora(self) -> TextSpeechLM:
        """Fold the LoRA into the base linears (a copy of their weights: the backbone the loader
        returned may be shared) and drop the adapters: decoding then runs plain linears."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.decoder.named_modules()):
            if isinstance(module, LoraLayer):
                base = module.get_base_layer()
                merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
                delta = module.get_delta_weight("default")
                merged.weight = nn.Parameter(base.weight.detach() + delta.detach(), requires_grad=False)
                if base.bias is not None:
                    merged.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
                parent_name, _, child = name.rpartition(".")
                parent = self.decoder.get_submodule(parent_name) if parent_name else self.decoder
                setattr(parent, child, merged)
        return self

    def quantize_linears(self, quant: str) -> TextSpeechLM:
        """After :meth:`merge_lora`: the decoder's linears in a low-bit format of ``speechllm.quant``
        ("int8": per-channel, activations may be quantized too; "int4": groups of 32, weight-only)."""
        from speechllm.quant.formats import INT4, INT8
        from speechllm.quant.linear import QuantLinear

        specs = {"int8": (INT8, False), "int4": (INT4, True)}
        if quant not in specs:
            raise ValueError(f"unknown TTS LM quantization {quant!r} (known: {', '.join(specs)})")
        spec, exact = specs[quant]
        for name, module in list(self.decoder.named_modules()):
            if type(module) is nn.Linear:
                parent_name, _, child = name.rpartition(".")
                parent = self.decoder.get_submodule(parent_name) if parent_name else self.decoder
                setattr(parent, child, QuantLinear.from_linear(module, spec, exact=exact))
        return self

    # -- text
    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    # -- training
    def embed(self, ids: Tensor, is_speech: Tensor) -> Tensor:
        text = self.decoder.embed_tokens(torch.where(is_speech, 0, ids))
        speech = self.speech_emb(torch.where(is_speech, ids, 0))
        return torch.where(is_speech[..., None], speech, text)

    def loss(self, ids: Tensor, is_speech: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy on speech targets; also returns next-token accuracy on them."""
        valid = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        out = self.decoder(inputs_embeds=self.embed(ids, is_speech), attention_mask=valid.long())
        hidden = out.last_hidden_state
        targets = ids[:, 1:].masked_fill(~(is_speech[:, 1:] & valid[:, 1:]), IGNORE)
        targets = targets.masked_fill(targets > self.config.eos, IGNORE)  # markers are inputs, not targets
        logits = self.head(hidden[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE)
        keep = targets != IGNORE
        accuracy = (logits.argmax(-1)[keep] == targets[keep]).float().mean()
        return loss, accuracy

    # -- synthesis
    def as_causal_lm(self) -> SpeechOutputLM:
        """The decoder with the speech head as its output layer, for the decoding engines (kept while
        the decoder and head stay the same modules, so the engine built on it is reused)."""
        held = self.__dict__.get("_as_causal_lm")
        if held is None or held.model is not self.decoder or held.lm_head is not self.head:
            held = SpeechOutputLM(self.decoder, self.head)
            self.__dict__["_as_causal_lm"] = held  # not a submodule: its weights are this module's
        return held

    @torch.no_grad()
    def stream(self, text_pieces: Iterable[str], options: SamplingOptions = SamplingOptions()
               ) -> Iterator[Tensor]:
        """Text pieces in (any split, e.g. an LLM's token stream) → speech-token chunks out.

        Text is committed word by word (up to the last space seen), so BPE sees the same pieces it
        would see on the whole text; each group of ``n`` committed text tokens is followed by ``m``
        generated speech tokens, yielded at once. After the text ends, speech runs to EOS. The decoder
        runs on ``speechllm.generation``'s engine (the static KV cache for the Llama family).
        """
        from speechllm.generation import GenerationOptions, open_state
        from speechllm.generation.decoders import TokenChooser

        c = self.config
        device = self.head.weight.device
        choose = TokenChooser(GenerationOptions(temperature=options.temperature, top_k=options.top_k,
                                                seed=options.seed), device)
        pending, committed = "", []
        n_text = n_speech = 0
        pieces = iter(text_pieces)
        text_done = False
        state = None

        def feed(ids: list[int], speech: bool) -> Tensor:
            """The next-token logits after ``ids``."""
            nonlocal state
            t = torch.tensor([ids], device=device)
            embeds = self.embed(t, torch.full_like(t, speech, dtype=torch.bool))
            if state is None:
                positions = torch.arange(len(ids), device=device)[None]
                state = open_state(self.as_causal_lm(), embeds, torch.ones_like(t), positions)
                return state.logits[0]
            return state.feed(embeds)[0]

        def pull(k: int) -> list[int]:
            """Up to k committed text tokens (fewer only at the end of the text). Reads one token
            further when it can, so that the end of the text is known right after its last group
            (training puts TEXT_END straight after the last text token)."""
            nonlocal pending, text_done
            while len(committed) <= k and not text_done:
                piece = next(pieces, None)
                if piece is None:
                    text_done = True
                    committed.extend(self.text_ids(pending))
                    pending = ""
                    break
                pending += re.sub(r"\s+", " ", piece)
                cut = pending.rfind(" ")
                if cut > 0:
                    committed.extend(self.text_ids(pending[:cut]))
                    pending = pending[cut:]
            group = committed[:k]
            del committed[:k]
            return group

        next_logits = feed([c.start], True)
        text_ended = False
        while True:
            group = [] if text_ended else pull(c.text_chunk)
            if group:
                next_logits = feed(group, False)
                n_text += len(group)
            if not text_ended and text_done and not committed:
                next_logits = feed([c.text_end], True)
                text_ended = True
            limit = int(options.max_tokens_per_text_token * max(n_text, 1)) + 25
            out = []
            for _ in range(c.speech_chunk):
                logits = next_logits.float().clone()
                if not text_ended:
                    logits[c.eos] = float("-inf")
                token = int(choose(logits))
                if token == c.eos or n_speech >= limit:
                    if out:
                        yield torch.tensor(out)
                    return
                out.append(token)
                n_speech += 1
                if n_speech == options.first_yield and len(out) < c.speech_chunk:
                    yield torch.tensor(out)
                    out = []
                next_logits = feed([token], True)
            if out:
                yield torch.tensor(out)


class SpeechOutputLM(nn.Module):
    """A decoder stack and the speech head in the shape of a Hugging Face causal LM (``model``,
    ``lm_head``, ``config``, ``forward(inputs_embeds=...)`` with ``logits``): what the decoding engines
    take."""

    def __init__(self, decoder: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.lm_head, self.config = decoder, head, decoder.config

    def forward(self, inputs_embeds: Tensor, logits_to_keep: int = 0, **kwargs):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        out = self.model(inputs_embeds=inputs_embeds, **kwargs)
        hidden = out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state
        return CausalLMOutputWithPast(logits=self.lm_head(hidden), past_key_values=out.past_key_values)


def split_words(text: str) -> list[str]:
    """Text as a stream of word pieces (each with its leading space), for callers holding whole text."""
    return re.findall(r"\s*\S+", text)
