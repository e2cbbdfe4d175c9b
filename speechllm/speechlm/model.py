"""The speech-LLM: frozen speech encoder (optionally its top layers fine-tuned) → trainable adapter →
frozen causal LM (+ optional LoRA).

Read top-down: options (prompt format, LoRA, the model config; the tasks are ``tasks.py``'s) →
prompt building → splicing → the module.

Audio embeddings go inside the LLM's own chat template. The user turn holds the instruction
and an audio marker; the rendered prompt is split at the marker and each side tokenized
alone, so the marker itself never reaches the tokenizer::

    <|im_start|>user\\n [audio embeddings] \\nTranscribe the speech.<|im_end|>\\n<|im_start|>assistant\\n

``PromptFormat.audio_first`` puts the audio before the instruction (the default: AlignFormer
found higher instruction following that way) or after it. The target is the reply followed by
the template's end of turn. Without audio the LLM answers as itself: LoRA is switched off, as
in Granite-speech, so text chat stays exactly the base model.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.adapters import Adapter, AdapterOutput, adapter_class, build_adapter
from speechllm.generation import (
    Generation,
    GenerationOptions,
    HeadDrafter,
    PhraseBook,
    Reply,
    decode_text,
    open_state,
    run_decoder,
    token_stream,
)
from speechllm.generation.constraints import QuoteConstraint, token_bytes
from speechllm.speechlm.backbone import SpeechEncoder, load_backbone, load_encoder
from speechllm.speechlm.ctc_beam import (
    CTCBeamOptions,
    CTCPrefixBeamSearch,
    LLMPrefixScorer,
    document_start_id,
)
from speechllm.speechlm.hearing import HEARINGS, Heard, WhisperHearing, transcript_units
from speechllm.speechlm.memory import TranslationMemory
from speechllm.speechlm.skills import Answerer, check_skills, recording_skill, skill_reply
from speechllm.speechlm.tasks import (  # noqa: F401  (re-exported: the task registry lives in tasks.py)
    LANGUAGES,
    NOT_STATED,
    TASKS,
    Task,
    instruction,
    language_name,
    parse_instruction,
    question_about_audio,
    register_task,
    spoken_question_context,
    task_of,
    translation_examples,
)
from speechllm.zoo import DEFAULT_ENCODER, DEFAULT_LLM

# ---------------------------------------------------------------- options

DEFAULT_OPTIONS = GenerationOptions()


@dataclass(frozen=True)
class PromptFormat:
    audio_first: bool = True  # audio, then the instruction, in the user turn
    system: str | None = None  # None: whatever the chat template does without a system turn
    separator: str = "\n"  # between audio and instruction
    audio_marker: str = "<|speechllm-audio|>"  # split point, never tokenized


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class SpeechLLMConfig:
    """Everything needed to rebuild the model; models are referred to by zoo name or path."""

    encoder: str = DEFAULT_ENCODER
    encoder_kind: str = "whisper"  # an ENCODERS name
    encoder_trainable_layers: int = 0  # top encoder blocks fine-tuned with the adapter (0: frozen encoder)
    adapter: str = "alignformer"  # an ADAPTERS name
    adapter_options: dict[str, Any] = field(default_factory=dict, hash=False)  # beyond the two dims
    llm: str = DEFAULT_LLM
    quant: str | None = None  # None: fp32 transformers; else speechllm.llm's format name
    lora: LoraSpec | None = None
    prompt: PromptFormat = PromptFormat()
    # "ctc": the transcribe instruction is answered by the adapter's own CTC path over the LLM's
    # tokens (ctc-posterior trained without the LLM's loss: exact and fast); "llm": by generation
    asr_decoder: str = "llm"
    # how the "ctc" decoder searches (CTCBeamOptions' fields): greedy by default; beam_size > 1
    # runs a prefix beam search with the LLM as language model
    ctc_beam: dict[str, Any] = field(default_factory=dict, hash=False)
    # "adapter": the LLM reads the adapter's output; "whisper": the encoder's own Whisper decoder
    # hears, and the LLM reads its transcript as clean units (speechllm.speechlm.hearing)
    hearing: str = "adapter"
    # under hearing="whisper": task -> the Whisper that hears audio given for it (loaded on first use),
    # e.g. {"translate": "whisper-base"}; every other task is heard by the encoder's own Whisper
    hearing_models: dict[str, str] = field(default_factory=dict, hash=False)
    # their language detection picks among these (e.g. ["es", "en"]: the languages the LoRA learned;
    # empty: all of Whisper's)
    hearing_languages: tuple[str, ...] = ()
    # under hearing="whisper": a file in the model folder with the hearing Whisper's decoder fine-tuned on
    # the user's recordings (speechllm finetune; speechllm.whisper.finetune): it replaces the
    # checkpoint's decoder weights when the model loads, and is written from them when it is saved
    hearing_decoder: str = ""
    # under hearing="whisper": translation memories, "Spanish-English" -> a file of source<TAB>target pairs
    # in the model folder (speechllm.speechlm.memory; keyed as in speechllm-translate's config). A clip
    # whose transcript shares enough words with a pair's source (memory_min_score) is heard again with
    # that sentence as Whisper's prompt (memory_hearing), and translated with the memory_examples
    # nearest pairs as examples ("translate-by-example"; 0: plain "translate")
    memory: dict[str, str] = field(default_factory=dict, hash=False)
    memory_min_score: float = 15.0
    memory_hearing: bool = True
    memory_examples: int = 0
    # who answers a question asked in the audio (the spoken-question task, also a chat's spoken turn):
    # "lora", the LLM with its LoRA reading the audio; "text", the LLM without its LoRA reading the
    # clip's transcript (Whisper's under hearing="whisper", else the CTC path's) as a typed message (a
    # LoRA trained on short quiz answers otherwise answers "three" to "give me three ideas for dinner")
    spoken_questions: str = "lora"
    # a phrase book in the model folder: replies the LLM wrote to other prompts, which speculative decoding
    # drafts from where the prompt offers nothing (speechllm.generation.speculative.PhraseBook; "": none)
    phrases: str = ""
    # a draft head in the model folder: an MLP over the LLM's hidden states trained on its own replies, which
    # drafts where neither the prompt nor the phrase book does (speechllm.generation.draft_head; "": none)
    draft_head: str = ""
    # questions answered exactly without the LLM writing (speechllm.speechlm.skills: "arithmetic",
    # "clock"), in typed messages and in the transcripts of spoken questions answered as typed
    skills: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.asr_decoder not in ("llm", "ctc"):
            raise ValueError(f"asr_decoder must be 'llm' or 'ctc', not {self.asr_decoder!r}")
        if self.hearing not in HEARINGS:
            raise ValueError(f"hearing must be one of {', '.join(HEARINGS)}, not {self.hearing!r}")
        if self.hearing == "whisper" and (self.encoder_kind != "whisper" or self.adapter != "ctc-posterior"):
            raise ValueError("hearing='whisper' needs a Whisper encoder and the ctc-posterior adapter "
                             "(its units carry the transcript)")
        if self.spoken_questions not in ("lora", "text"):
            raise ValueError(f"spoken_questions must be 'lora' or 'text', not {self.spoken_questions!r}")
        if self.spoken_questions == "text" and self.hearing != "whisper" and self.asr_decoder != "ctc":
            raise ValueError("spoken_questions='text' needs a transcript without the LLM: hearing='whisper' "
                             "or asr_decoder='ctc'")
        for name in ("hearing_models", "memory", "hearing_decoder"):
            if getattr(self, name) and self.hearing != "whisper":
                raise ValueError(f"{name} needs hearing='whisper'")
        unknown = set(self.hearing_models) - set(TASKS)
        if unknown:
            raise ValueError(f"hearing_models: unknown task(s) {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(TASKS)})")
        for pair in self.memory:
            if len(pair.split("-")) != 2:
                raise ValueError(f"memory: {pair!r} is not a language pair like 'Spanish-English'")
        CTCBeamOptions(**self.ctc_beam)  # unknown or bad options fail here, not at the first transcript
        check_skills(self.skills)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpeechLLMConfig:
        values = dict(values)
        lora = values.pop("lora", None)
        if lora is not None:
            lora = LoraSpec(**{**lora, "target_modules": tuple(lora.get("target_modules", ()))})
        prompt = PromptFormat(**values.pop("prompt", {}))
        languages = tuple(values.pop("hearing_languages", ()))
        skills = tuple(values.pop("skills", ()))
        return cls(**values, lora=lora, prompt=prompt, hearing_languages=languages, skills=skills)


@dataclass(frozen=True)
class SpeechLLMOutput:
    loss: Tensor  # lm_loss + ctc_weight * aux_loss
    lm_loss: Tensor
    aux_loss: Tensor | None
    n_tokens: int  # target tokens in the batch


@dataclass(frozen=True)
class Spliced:
    """LLM input for a left-padded batch: prompt pieces, audio and target in one sequence."""

    embeds: Tensor  # [B, L, D]
    attention_mask: Tensor  # [B, L] long
    position_ids: Tensor  # [B, L]
    labels: Tensor | None  # [B, L], -100 outside the targets


# ---------------------------------------------------------------- the module


class SpeechLLM(nn.Module):
    def __init__(self, config: SpeechLLMConfig, encoder: SpeechEncoder, adapter: Adapter, llm: nn.Module,
                 tokenizer: Any, whisper: WhisperHearing | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder.eval().requires_grad_(False)
        self.encoder.set_trainable_layers(config.encoder_trainable_layers)
        self.adapter = adapter
        self.llm = llm
        self.tokenizer = tokenizer
        self._end_of_turn, self._stop_ids = self._end_of_turn_parts()
        self._prompt_cache: dict[tuple[str, bool], tuple[list[int], list[int]]] = {}
        if config.hearing == "whisper" and whisper is None:
            whisper = WhisperHearing(config.encoder, next(llm.parameters()).device)
        self.whisper = whisper  # the encoder's own Whisper, when it hears
        self._hearings: dict[str, WhisperHearing] = {}  # hearing_models' Whispers, loaded on first use
        self.folder: Path | None = None  # the model folder it was loaded from (its memory files)
        self._memories: dict[str, TranslationMemory] = {}  # config.memory's, read on first use
        self._phrases: PhraseBook | None = None  # config.phrases, read on first use
        self._draft_head: HeadDrafter | None = None  # config.draft_head, read on first use
        if whisper is not None:
            whisper.prompt_for = self.hearing_prompt

    @classmethod
    def build(cls, config: SpeechLLMConfig, encoder: SpeechEncoder | None = None,
              llm: nn.Module | None = None, tokenizer: Any = None, prepare: bool = True) -> SpeechLLM:
        """A new model with a freshly initialised adapter (and LoRA); loads what is not given.
        ``prepare=False``: a loaded LLM's quantized kernels are chosen later (``prepare_kernels``)."""
        whisper = None
        if encoder is None and config.hearing == "whisper":  # the Whisper that hears lends its encoder
            whisper = WhisperHearing(config.encoder)
            encoder = whisper.encoder()
        elif encoder is None:
            encoder = load_encoder(config.encoder, config.encoder_kind)
        elif config.encoder_trainable_layers:  # its top layers are this model's own: never alter a shared one
            encoder = copy.deepcopy(encoder)
        if llm is None:
            llm, tokenizer = load_backbone(config.llm, config.quant, prepare=prepare)
        llm.requires_grad_(False)
        options = dict(config.adapter_options)
        fields = adapter_class(config.adapter).Config.__dataclass_fields__
        if options.get("vocab", getattr(fields.get("vocab"), "default", None)) == "llm":
            options.setdefault("vocab_size", len(tokenizer) + 1)  # a saved model may use a subset
        llm_dim = llm.get_input_embeddings().embedding_dim
        adapter = build_adapter(config.adapter, options, encoder_dim=encoder.dim, llm_dim=llm_dim)
        adapter.attach_llm(llm.get_input_embeddings())
        if config.lora is not None:
            llm = apply_lora(llm, config.lora)
        device = next(llm.parameters()).device
        return cls(config, encoder.to(device), adapter.to(device), llm, tokenizer, whisper)

    # -- properties and modes

    @property
    def device(self) -> torch.device:
        return next(self.adapter.parameters()).device

    @property
    def ctc_vocab(self):
        """The adapter's CTC target vocabulary (None without a CTC head)."""
        return self.adapter.ctc_vocabulary(self.tokenizer)

    @property
    def has_lora(self) -> bool:
        return hasattr(self.llm, "disable_adapter")

    def train(self, mode: bool = True) -> SpeechLLM:
        super().train(mode)
        self.encoder.eval()  # no dropout, fixed statistics (its fine-tuned top layers, if any, too)
        return self

    def hear_through_adapter(self) -> SpeechLLM:
        """From now on the adapter hears (``hearing="adapter"``): e.g. while it is being fine-tuned. Spoken
        questions stay typed where the CTC path writes the transcript they need."""
        spoken = self.config.spoken_questions if self.config.asr_decoder == "ctc" else "lora"
        self.config = replace(self.config, hearing="adapter", hearing_models={}, memory={},
                              hearing_decoder="", spoken_questions=spoken)
        self.whisper = None
        self._hearings = {}
        return self

    def prehear(self, clip: np.ndarray) -> None:
        """Hear ``clip`` ahead of a question about it (a hands-free turn that may be ending): Whisper
        remembers the transcript, and the answer's own hearing of the same samples takes no time.
        Nothing to do for a model that hears through its adapter."""
        if self.whisper is not None:
            self.whisper.heard([clip])

    def hearing_for(self, task: str) -> WhisperHearing:
        """The Whisper that hears audio given for ``task`` (``hearing="whisper"``):
        ``config.hearing_models``' for it, else the encoder's own."""
        name = self.config.hearing_models.get(task, self.config.encoder)
        if name == self.config.encoder:
            return self.whisper
        if name not in self._hearings:
            self._hearings[name] = WhisperHearing(name, self.device, self.config.hearing_languages)
            self._hearings[name].prompt_for = self.hearing_prompt
        return self._hearings[name]

    # -- translation memory

    def _in_folder(self, name: str) -> Path:
        """A file the config names, in the folder the model was loaded from."""
        return Path(self.folder or ".") / name

    def memory_files(self) -> dict[str, Path]:
        """``config.memory``'s files, by language pair, where they are (relative to the model folder)."""
        return {pair: self._in_folder(file) for pair, file in self.config.memory.items()}

    def loaded_from(self, folder: Path) -> SpeechLLM:
        """Record the folder the model was loaded from: its ``memory``, ``phrases`` and ``draft_head`` files
        are there."""
        self.folder, self._memories, self._phrases, self._draft_head = folder, {}, None, None
        return self

    def folder_files(self) -> dict[str, Path]:
        """The files a saved model folder carries beside its weights (memories, phrase book, draft head):
        name in the folder -> where it is now."""
        extras = (self.config.phrases, self.config.draft_head)
        names = [*self.config.memory.values(), *(name for name in extras if name)]
        return {name: self._in_folder(name) for name in names}

    def phrase_book(self) -> PhraseBook | None:
        """``config.phrases``, read on first use (None: the model has none)."""
        if self.config.phrases and self._phrases is None:
            self._phrases = PhraseBook.read(self._in_folder(self.config.phrases))
        return self._phrases

    def draft_head(self) -> HeadDrafter | None:
        """``config.draft_head``, read (and bound to the LLM) on first use (None: the model has none)."""
        if self.config.draft_head and self._draft_head is None:
            self._draft_head = HeadDrafter.read(self._in_folder(self.config.draft_head), self.llm)
        return self._draft_head

    def translation_memory(self, source: str, target: str | None = None) -> TranslationMemory | None:
        """The memory from language ``source`` (to ``target``; None: to any; codes or names), read on
        first use."""
        source, target = language_name(source), target and language_name(target)
        pairs = [p for p in self.config.memory if p.split("-")[0] == source
                 and (target is None or p.split("-")[1] == target)]
        if not pairs:
            return None
        if pairs[0] not in self._memories:
            self._memories[pairs[0]] = TranslationMemory.read(self.memory_files()[pairs[0]])
        return self._memories[pairs[0]]

    def hearing_prompt(self, heard: Heard) -> str | None:
        """The memory sentence nearest a first hearing, near enough to hear the clip again with it as
        Whisper's prompt (``memory_hearing``); None: heard once."""
        memory = self.translation_memory(heard.language) if self.config.memory_hearing else None
        nearest = memory.nearest(heard.text, 1, self.config.memory_min_score) if memory and heard.text else []
        return nearest[0][0] if nearest else None

    def with_examples(self, instruction_text: str, heard: Heard) -> str:
        """A translate instruction as ``translate-by-example`` with the memory's ``memory_examples``
        pairs nearest what was heard (unchanged without a memory, examples or a pair near enough)."""
        request = parse_instruction(instruction_text)
        if self.config.memory_examples <= 0 or request is None or request.task != "translate":
            return instruction_text
        memory = self.translation_memory(heard.language, request.target)
        pairs = memory.nearest(heard.text, self.config.memory_examples, self.config.memory_min_score) if (
            memory and heard.text) else []
        if not pairs:
            return instruction_text
        examples = translation_examples(pairs[::-1], heard.language, request.target)
        return instruction("translate-by-example", examples, request.target)

    def hear_in(self, language: str, task: str) -> None:
        """Audio for ``task`` is in ``language`` (a Whisper code; ``--language``): the Whisper that
        hears it transcribes in that language instead of detecting one."""
        if self.whisper is None:
            raise ValueError(f"--language {language}: this speech-LLM hears through its adapter, which "
                             "takes no language")
        self.hearing_for(task).set_language(language)

    def hear(self, audio: Sequence[np.ndarray], instructions: Sequence[str]) -> list[Heard]:
        """What each clip says, by the Whisper that hears its instruction's task."""
        hearings = [self.hearing_for(task_of(text)) for text in instructions]
        heard: list[Heard | None] = [None] * len(audio)
        for hearing in {id(h): h for h in hearings}.values():
            rows = [i for i, h in enumerate(hearings) if h is hearing]
            for i, item in zip(rows, hearing.heard([audio[i] for i in rows]), strict=True):
                heard[i] = item
        return heard

    @contextmanager
    def text_mode(self) -> Iterator[None]:
        """Context in which the LLM is the base model (LoRA off). It flips each LoRA layer's switch, as
        peft's ``disable_adapter()`` does, without that context's walk over the whole model for its
        status (about 20 ms a typed turn on the starter) or its turning gradients back on."""
        layers = self._lora_layers()
        were = [layer._disable_adapters for layer in layers]
        for layer in layers:
            layer._disable_adapters = True
        try:
            yield
        finally:
            for layer, was in zip(layers, were, strict=True):
                layer._disable_adapters = was

    def _lora_layers(self) -> list[nn.Module]:
        """The LLM's LoRA layers, found once per LLM object (a walk over its ~16k modules took ~3 ms a typed
        turn on the starter); peft makes a new object whenever it wraps or unwraps a model."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        cached = getattr(self, "_lora_cache", None)
        if cached is None or cached[0]() is not self.llm:
            layers = [m for m in self.llm.modules() if isinstance(m, BaseTunerLayer)] if self.has_lora else []
            cached = self._lora_cache = (weakref.ref(self.llm), layers)
        return cached[1]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Adapter weights (``adapter.*``), fine-tuned encoder layers (``encoder.*``) and LoRA weights
        (``lora.*``, peft's names)."""
        state = {f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}
        if self.encoder.trainable_layers:
            top = self.encoder.top_layers(self.encoder.trainable_layers)
            state.update({f"encoder.{k}": v for k, v in top.state_dict().items()})
        if self.has_lora:
            from peft import get_peft_model_state_dict

            state.update({f"lora.{k}": v for k, v in get_peft_model_state_dict(self.llm).items()})
        return state

    # -- prompts

    def _end_of_turn_parts(self) -> tuple[str, tuple[int, ...]]:
        """Text that closes an assistant turn (e.g. ``<|im_end|>``) and the token ids that stop generation."""
        sentinel = "\x00REPLY\x00"
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}], tokenize=False)
        end = text[text.index(sentinel) + len(sentinel):].rstrip()
        stops = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        if end:
            stops.add(self.tokenizer.encode(end, add_special_tokens=False)[0])
        return end, tuple(sorted(stops))

    def prompt_ids(self, instruction_text: str, has_audio: bool = True) -> tuple[list[int], list[int]]:
        """Token ids before and after the audio in the rendered chat prompt (after is empty without audio)."""
        key = (instruction_text, has_audio)
        if key not in self._prompt_cache:
            if len(self._prompt_cache) >= 4096:  # per-row questions: keep it bounded
                self._prompt_cache.clear()
            self._prompt_cache[key] = self._render_prompt(instruction_text, has_audio)
        return self._prompt_cache[key]

    def _render_prompt(self, instruction_text: str, has_audio: bool) -> tuple[list[int], list[int]]:
        fmt = self.config.prompt
        content = instruction_text
        if has_audio:
            content = (fmt.audio_marker + fmt.separator + instruction_text if fmt.audio_first
                       else instruction_text + fmt.separator + fmt.audio_marker)
        messages = ([{"role": "system", "content": fmt.system}] if fmt.system else []) + [
            {"role": "user", "content": content}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before, _, after = text.partition(fmt.audio_marker) if has_audio else (text, "", "")
        encode = self.tokenizer.encode
        return encode(before, add_special_tokens=False), encode(after, add_special_tokens=False)

    def target_ids(self, reply: str) -> list[int]:
        return self.tokenizer.encode(reply.strip() + self._end_of_turn, add_special_tokens=False)

    def ctc_targets(self, texts: Sequence[str | None]) -> tuple[Tensor, Tensor] | None:
        """Padded CTC targets and lengths (0 = no transcript) for a CTC adapter, else None."""
        if self.ctc_vocab is None:
            return None
        ids = [self.ctc_vocab.encode(t) if t else [] for t in texts]
        targets = torch.zeros(len(ids), max(1, max(map(len, ids))), dtype=torch.long)
        for i, seq in enumerate(ids):
            targets[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return targets.to(self.device), torch.tensor([len(s) for s in ids], device=self.device)

    # -- audio

    def encode_audio(self, audio: Tensor, lengths: Tensor, ctc_targets: Tensor | None = None,
                     ctc_lengths: Tensor | None = None) -> AdapterOutput:
        """Padded 16 kHz audio [B, T] + lengths → adapter output (LLM-sized embeddings)."""
        return self.adapter(*self.encode_frames(audio, lengths), ctc_targets, ctc_lengths)

    def encode_frames(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Padded 16 kHz audio [B, T] + lengths → the encoder's (hidden [B, F, D], mask [B, F])."""
        return self.encoder.finish(*self.encoder.frames(audio, lengths, self.device))

    def train_encoder_layers(self, n: int) -> SpeechLLM:
        """Fine-tune the encoder's top ``n`` blocks from now on (recorded in the config, so saved)."""
        self.encoder.requires_grad_(False).set_trainable_layers(n)
        self.config = replace(self.config, encoder_trainable_layers=n)
        return self

    # -- splicing

    def splice(self, before: Sequence[Sequence[int]], audio: AdapterOutput | None,
               after: Sequence[Sequence[int]], targets: Sequence[Sequence[int]] | None = None) -> Spliced:
        """Left-padded ``before | audio | after | target`` per item (audio rows may be None)."""
        batch = len(before)
        n_audio = audio.mask.sum(1).tolist() if audio is not None else [0] * batch
        targets = targets if targets is not None else [()] * batch
        lengths = [len(b) + n + len(a) + len(t)
                   for b, n, a, t in zip(before, n_audio, after, targets, strict=True)]
        width = max(lengths)
        ids = torch.zeros(batch, width, dtype=torch.long)
        is_audio = torch.zeros(batch, width, dtype=torch.bool)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        for i in range(batch):
            pos = width - lengths[i]
            for part, kind in ((before[i], "text"), (n_audio[i], "audio"), (after[i], "text"),
                               (targets[i], "target")):
                size = part if kind == "audio" else len(part)
                if kind == "audio":
                    is_audio[i, pos : pos + size] = True
                else:
                    ids[i, pos : pos + size] = torch.tensor(part, dtype=torch.long)
                    if kind == "target":
                        labels[i, pos : pos + size] = ids[i, pos : pos + size]
                pos += size
        device = self.device
        embed = self.llm.get_input_embeddings()
        embeds = embed(ids.to(device))
        if audio is not None and bool(is_audio.any()):
            embeds = embeds.masked_scatter(is_audio.to(device)[..., None],
                                           audio.embeddings[audio.mask].to(embeds.dtype))
        attention = (torch.arange(width) >= width - torch.tensor(lengths)[:, None]).long()
        positions = (attention.cumsum(1) - 1).clamp(min=0)
        labels = labels.to(device) if any(len(t) for t in targets) else None
        return Spliced(embeds, attention.to(device), positions.to(device), labels)

    # -- training

    def forward(self, audio: Tensor, lengths: Tensor, instructions: Sequence[str], replies: Sequence[str],
                transcripts: Sequence[str | None] | None = None, ctc_weight: float = 1.0,
                lm_weight: float = 1.0, frames: tuple[Tensor, Tensor] | None = None) -> SpeechLLMOutput:
        """Teacher-forced loss on a batch; ``transcripts`` feed a CTC adapter's auxiliary loss.

        ``lm_weight=0`` trains on the CTC loss alone and never runs the LLM (for adapters whose
        output is defined by their CTC posteriors, e.g. ``ctc-posterior``). ``frames``: the
        encoder's (hidden, mask) for this batch when already known (``speechllm.encoder_cache``).
        """
        ctc = self.ctc_targets(transcripts) if transcripts is not None else None
        if frames is None:
            hidden, mask = self.encode_frames(audio, lengths)
        else:
            hidden, mask = self.encoder.finish(*frames)
        if lm_weight == 0:
            if ctc is None:
                raise ValueError(f"lm_weight=0 needs a CTC adapter; {self.config.adapter!r} has no CTC loss")
            aux = self.adapter.ctc_only_loss(hidden, mask, *ctc)
            if aux is None:  # no item of the batch has a transcript
                aux = sum(p.sum() for p in self.adapter.parameters() if p.requires_grad) * 0.0
            zero = aux.detach() * 0.0
            return SpeechLLMOutput(ctc_weight * aux, zero, aux.detach(), 0)
        encoded = self.adapter(hidden, mask, *(ctc or (None, None)))
        spliced = self._spliced_targets(encoded, instructions, replies)
        reply_loss = self.reply_loss(spliced)
        aux = encoded.aux_loss
        lm_loss = lm_weight * reply_loss
        loss = lm_loss if aux is None else lm_loss + ctc_weight * aux
        return SpeechLLMOutput(loss, reply_loss.detach(), None if aux is None else aux.detach(),
                               int((spliced.labels != -100).sum()))

    def forward_units(self, units: AdapterOutput, instructions: Sequence[str],
                      replies: Sequence[str]) -> SpeechLLMOutput:
        """Teacher-forced LLM loss with ``units`` standing in for the adapter's output (text-side
        training: :mod:`speechllm.speechlm.simulated_units`)."""
        spliced = self._spliced_targets(units, instructions, replies)
        loss = self.reply_loss(spliced)
        return SpeechLLMOutput(loss, loss.detach(), None, int((spliced.labels != -100).sum()))

    def _spliced_targets(self, audio: AdapterOutput, instructions: Sequence[str],
                         replies: Sequence[str]) -> Spliced:
        prompts = [self.prompt_ids(text, True) for text in instructions]
        return self.splice([p[0] for p in prompts], audio, [p[1] for p in prompts],
                           [self.target_ids(r) for r in replies])

    def reply_loss(self, spliced: Spliced) -> Tensor:
        """Mean cross-entropy of the reply tokens. Replies sit at the end of the left-padded rows, so
        the output layer (49k tokens wide for SmolLM2) runs only over the last positions, not the
        whole prompt and audio."""
        labels = spliced.labels
        first = int((labels != -100).any(0).nonzero()[0])
        keep = labels.shape[1] - first + 1  # from the position that predicts the first reply token
        out = self.llm(inputs_embeds=spliced.embeds, attention_mask=spliced.attention_mask,
                       position_ids=spliced.position_ids, use_cache=False, logits_to_keep=keep)
        logits = out.logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, first:].reshape(-1),
                               ignore_index=-100)

    # -- inference

    def _prefill(self, audio: Sequence[np.ndarray] | None, instructions: Sequence[str]) -> Spliced:
        return self._prefill_seeded(audio, instructions)[0]

    def _prefill_seeded(self, audio: Sequence[np.ndarray] | None, instructions: Sequence[str],
                        options: GenerationOptions = DEFAULT_OPTIONS,
                        ) -> tuple[Spliced, list[list[int]], list[QuoteConstraint | None]]:
        """The spliced batch; per row, the token ids its reply may copy from (the speculative
        drafter's seed): the prompt's text (a typed passage or question) with, in place of the
        audio, the adapter's own hypothesis of it when it writes one (``ctc-posterior``: the CTC
        units, so a transcript or a quote of the audio is drafted from the CTC head); and per row the
        constraint its reply is held to (:meth:`quote_constraints`)."""
        if audio is None:
            before = [self.prompt_ids(text, False)[0] for text in instructions]
            return self.splice(before, None, [[] for _ in before]), before, [None] * len(before)
        if len(audio) != len(instructions):
            raise ValueError(f"{len(audio)} audio inputs but {len(instructions)} instructions")
        asked = list(instructions)
        if self.whisper is not None:
            heard = self.hear(audio, instructions)
            instructions = [self.with_examples(text, h) for text, h in zip(instructions, heard, strict=True)]
            encoded = transcript_units(self.adapter, self.ctc_vocab, heard)
        else:
            encoded = self.encode_audio(*pad_audio(audio))
        prompts = [self.prompt_ids(text, True) for text in instructions]
        before, after = [p[0] for p in prompts], [p[1] for p in prompts]
        spliced, seeds, heard_ids = self._splice_seeded(before, encoded, after)
        return spliced, seeds, self.quote_constraints(asked, heard_ids, options)

    def _splice_seeded(self, before: list[list[int]], encoded: AdapterOutput,
                       after: list[list[int]]) -> tuple[Spliced, list[list[int]], list[list[int] | None]]:
        """The spliced batch, the drafter's seeds and, per row, the token ids that stand for the audio
        (None where the adapter's output has none)."""
        heard = [None for _ in before] if encoded.tokens is None else [
            row[m].tolist() for row, m in zip(encoded.tokens, encoded.mask, strict=True)]
        seeds = [b + (h or []) + a for b, h, a in zip(before, heard, after, strict=True)]
        return self.splice(before, encoded, after), seeds, heard

    def quote_constraints(self, instructions: Sequence[str], heard_ids: Sequence[Sequence[int] | None],
                          options: GenerationOptions) -> list[QuoteConstraint | None]:
        """Per row: for a task whose reply quotes the audio (``Task.quotes_audio``: a question about
        the recording) heard through Whisper, a constraint to spans of the transcript the LLM was
        handed (its exact units' text) or :data:`NOT_STATED`. None for other rows, for
        ``options.quote_answers=False`` and for a model that hears through its adapter (its units are a
        mix the LLM reads, not text: their likeliest tokens misspell what the LLM may still read right)."""
        constraints: list[QuoteConstraint | None] = []
        for text, ids in zip(instructions, heard_ids, strict=True):
            task = TASKS.get(task_of(text))
            quoted = options.quote_answers and task is not None and task.quotes_audio
            if not (quoted and ids is not None and self.whisper is not None):
                constraints.append(None)
                continue
            spans = [decode_text(self.tokenizer, ids)] if ids else []
            vocab = token_bytes(self.tokenizer)
            constraints.append(QuoteConstraint(vocab, spans, [NOT_STATED], self._stop_ids))
        return constraints

    def ctc_transcripts(self, audio: Sequence[np.ndarray], beam_size: int = 1) -> list[Generation]:
        """Transcripts from the adapter's CTC path over LLM tokens: greedy, or the prefix beam
        search with the LLM as language model that ``config.ctc_beam`` sets (a ``beam_size`` > 1
        here overrides its beam size)."""
        if not hasattr(self.adapter, "greedy_units"):
            raise ValueError(f"asr_decoder='ctc' needs an adapter with CTC units over the LLM's tokens, "
                             f"not {self.config.adapter!r}")
        padded, lengths = pad_audio(audio)
        hidden, mask = self.encode_frames(padded, lengths)
        options = CTCBeamOptions(**self.config.ctc_beam)
        if beam_size > 1:
            options = replace(options, beam_size=beam_size)
        if options.beam_size == 1:
            units = self.adapter.greedy_units(hidden, mask)
        else:
            log_probs, mask = self.adapter.frame_log_probs(hidden, mask)
            search = CTCPrefixBeamSearch(options, lambda items: LLMPrefixScorer(
                self.llm, self.adapter.token_ids, items, document_start_id(self.tokenizer)),
                rewarded_units=self.ctc_vocab.spoken_units())
            with self.text_mode():
                units = search.decode([lp[m] for lp, m in zip(log_probs, mask, strict=True)])
        vocab = self.ctc_vocab
        return [Generation(tuple(vocab.subset[u - 1] if vocab.subset else u - 1 for u in item),
                           vocab.decode(item).strip(), 0.0) for item in units]

    @torch.no_grad()
    def translate_text(self, sources: Sequence[str], source: str, target: str,
                       options: GenerationOptions = DEFAULT_OPTIONS) -> list[str]:
        """Translations of given texts read as a perfect hearing would hand them over (clean units of
        the exact text): the ceiling any hearing of the same sentences can reach. Needs the
        ``ctc-posterior`` adapter's units (``hearing="whisper"`` models have them)."""
        code = {name: c for c, name in LANGUAGES.items()}.get(language_name(source), source)
        asked = instruction("translate", target=language_name(target))
        replies = []
        for text in sources:
            heard = Heard(text, code)
            prompt = self.prompt_ids(self.with_examples(asked, heard), True)
            encoded = transcript_units(self.adapter, self.ctc_vocab, [heard])
            spliced, seeds, _ = self._splice_seeded([prompt[0]], encoded, [prompt[1]])
            results = run_decoder(self._open(spliced, options), self._stop_ids, options, seeds[0],
                                  self.phrase_book(), self.draft_head())
            replies.append(decode_text(self.tokenizer, results[0][0]))
        return replies

    def whisper_transcripts(self, audio: Sequence[np.ndarray], beam_size: int = 1) -> list[Generation]:
        """Transcripts from the encoder's own Whisper decoder (``hearing="whisper"``; greedy with
        Whisper's temperature fallback, ``beam_size`` aside)."""
        texts = [h.text for h in self.hear(audio, [instruction("transcribe")] * len(audio))]
        ids = [self.tokenizer(text, add_special_tokens=False).input_ids for text in texts]
        return [Generation(tuple(i), text, 0.0) for i, text in zip(ids, texts, strict=True)]

    @torch.no_grad()
    def generate(self, audio: Sequence[np.ndarray] | None, instructions: Sequence[str] | str,
                 options: GenerationOptions = DEFAULT_OPTIONS) -> list[Generation]:
        """Replies for a batch of 16 kHz clips (or, with ``audio=None``, text-only prompts)."""
        instructions = [instructions] * (len(audio) if audio is not None else 1) if isinstance(
            instructions, str) else list(instructions)
        if audio is None and (rows := [i for i, text in enumerate(instructions) if self.skill_reply(text)]):
            return self._apart(audio, instructions, rows, options,
                               lambda _, texts: [self._as_generation(self.skill_reply(t)) for t in texts])
        if audio is not None:
            transcriber, asr = self.transcriber, instruction("transcribe")
            rows = [i for i, text in enumerate(instructions) if text == asr]
            if transcriber is not None and rows:
                return self._apart(audio, instructions, rows, options,
                                   lambda clips, _: transcriber(clips, options.beam_size))
            if rows := [i for i, text in enumerate(instructions) if self._asks_as_typed(text)]:
                typed = self.as_typed
                return self._apart(audio, instructions, rows, options,
                                   lambda clips, texts: self.generate(None, typed(clips, texts), options))
            if rows := [i for i, text in enumerate(instructions) if self.recording_answer(text)]:
                return self._apart(audio, instructions, rows, options, self._answers_from_transcripts)
        with self.text_mode() if audio is None else nullcontext():
            spliced, seeds, quotes = self._prefill_seeded(audio, instructions, options)
            state = self._open(spliced, options)
            results = run_decoder(state, self._stop_ids, options, seeds[0] if len(seeds) == 1 else (),
                                  self.phrase_book(), self.draft_head(), quotes)
        return [Generation(tuple(tokens), decode_text(self.tokenizer, tokens), logprob, stop)
                for tokens, logprob, stop in results]

    @property
    def transcriber(self):
        """What answers the transcribe instruction without the LLM writing: the encoder's own Whisper
        (``hearing="whisper"``), the adapter's CTC path (``asr_decoder="ctc"``), or None."""
        if self.whisper is not None:
            return self.whisper_transcripts
        return self.ctc_transcripts if self.config.asr_decoder == "ctc" else None

    def _apart(self, audio: Sequence[np.ndarray] | None, instructions: list[str], rows: list[int],
               options: GenerationOptions, answer) -> list[Generation]:
        """Replies where ``rows`` are answered by ``answer(clips, instructions)`` and the others as usual
        (clips: None for text-only prompts)."""
        def clips(idx: list[int]) -> list[np.ndarray] | None:
            return None if audio is None else [audio[i] for i in idx]

        answers = answer(clips(rows), [instructions[i] for i in rows])
        replies = dict(zip(rows, answers, strict=True))
        if rest := [i for i in range(len(instructions)) if i not in replies]:
            others = self.generate(clips(rest), [instructions[i] for i in rest], options)
            replies.update(zip(rest, others, strict=True))
        return [replies[i] for i in range(len(instructions))]

    def skill_reply(self, prompt: str) -> str | None:
        """The reply of one of the model's skills to a text prompt (its last paragraph), or None."""
        return skill_reply(prompt, self.config.skills) if self.config.skills else None

    def recording_answer(self, instruction_text: str) -> Answerer | None:
        """How one of the model's skills answers the question about a whole clip in ``instruction_text``
        from the clip's transcript (``gist``: what it is about), or None: the LLM answers. None for a model
        with no transcript of its own (:attr:`transcriber`)."""
        question = question_about_audio(instruction_text)
        if question is None or not self.config.skills or self.transcriber is None:
            return None
        return recording_skill(question, self.config.skills)

    def _answers_from_transcripts(self, audio: Sequence[np.ndarray],
                                  instructions: Sequence[str]) -> list[Generation]:
        heard = self.transcriber(audio)
        return [self._as_generation(self.recording_answer(text)(said.text))
                for text, said in zip(instructions, heard, strict=True)]

    def _as_generation(self, text: str) -> Generation:
        return Generation(tuple(self.tokenizer(text, add_special_tokens=False).input_ids), text, 0.0)

    def _asks_as_typed(self, instruction_text: str) -> bool:
        """Whether this model answers ``instruction_text`` about a clip as a typed message
        (``config.spoken_questions == "text"``, and the text asks the question spoken in the clip)."""
        asked_in_clip = spoken_question_context(instruction_text) is not None
        return self.config.spoken_questions == "text" and asked_in_clip

    def as_typed(self, audio: Sequence[np.ndarray], instructions: Sequence[str]) -> list[str]:
        """Spoken-question instructions as the typed messages that stand for them: the text before the
        instruction (a chat's history), then the clip's transcript (:attr:`transcriber`), capitalised as
        typed text is (Whisper tiny.en often starts a short clip in lower case); the instruction itself
        where it heard nothing."""
        typed = []
        for text, heard in zip(instructions, self.transcriber(audio), strict=True):
            context = spoken_question_context(text)
            if context is None:
                raise ValueError(f"not a spoken-question instruction: {text[:60]!r}")
            said = heard.text.strip()
            typed.append(context + (said[:1].upper() + said[1:] if said else instruction("spoken-question")))
        return typed

    def _open(self, spliced: Spliced, options: GenerationOptions):
        """The decoding engine's state, prefilled from the spliced embeddings."""
        capacity = spliced.embeds.shape[1] + options.max_new_tokens + options.draft_tokens + 1
        return open_state(self.llm, spliced.embeds, spliced.attention_mask, spliced.position_ids,
                          options.engine, capacity)

    @torch.no_grad()
    def stream(self, audio: np.ndarray | None, instruction_text: str,
               options: GenerationOptions = DEFAULT_OPTIONS) -> Iterator[str]:
        """Greedy reply to one clip (or text prompt), yielded as text pieces as tokens arrive; a
        forming loop is held back, so the text shown never goes beyond where generate() cuts it."""
        if audio is not None and self._asks_as_typed(instruction_text):
            yield from self.stream(None, self.as_typed([audio], [instruction_text])[0], options)
            return
        if audio is None and (answer := self.skill_reply(instruction_text)):
            yield answer
            return
        if audio is not None and self.recording_answer(instruction_text):
            yield self._answers_from_transcripts([audio], [instruction_text])[0].text
            return
        with self.text_mode() if audio is None else nullcontext():
            clips = None if audio is None else [audio]
            spliced, seeds, quotes = self._prefill_seeded(clips, [instruction_text], options)
            state = self._open(spliced, options)
            reply = Reply(self._stop_ids, options)
            shown = ""
            for token, logprob in token_stream(state, self._stop_ids, options, seeds[0],
                                               phrases=self.phrase_book(), head=self.draft_head(),
                                               constraint=quotes[0]):
                if not reply.add(token, logprob):
                    break
                text = decode_text(self.tokenizer, reply.tokens[:reply.settled()], strip=False).lstrip()
                if not text.endswith("\ufffd") and len(text) > len(shown):  # whole characters only
                    yield text[len(shown):]
                    shown = text
            text = decode_text(self.tokenizer, reply.tokens)
            if len(text) > len(shown):
                yield text[len(shown):]


def pad_audio(clips: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(c) for c in clips])
    audio = torch.zeros(len(clips), int(lengths.max()))
    for i, clip in enumerate(clips):
        audio[i, : len(clip)] = torch.as_tensor(np.asarray(clip, dtype=np.float32))
    return audio, lengths


def apply_lora(llm: nn.Module, spec: LoraSpec) -> nn.Module:
    from speechllm.quant.lora import LoraConfig, get_peft_model  # also wraps QuantLinear (QLoRA)

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), bias="none")
    return get_peft_model(llm, config)
