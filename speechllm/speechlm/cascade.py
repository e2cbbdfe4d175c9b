"""A speech-LLM that hears through Whisper's own decoder: audio -> Whisper transcript -> the LLM.

The adapter route (``SpeechLLM``: encoder -> CTC units -> the LLM's embeddings) carries only what
its CTC head writes, English tokens so far; this route carries any of Whisper's ~100 languages as
text. Whisper (``whisper-base``, multilingual) writes what was said in the language it hears; a
multilingual LLM (Gemma 3 270M) is then prompted few-shot with the task: translation, a question
about the passage, a spoken question, or the transcript itself. Its folder is a ``config.json``::

    {"format": "speechllm", "pipeline": "transcript", "asr": "whisper-base",
     "llm": "gemma3-270m", "quant": "auto", "language": null,
     "memory": {"Spanish-English": "memory-es-en.tsv.gz"}, "memory_k": 8, "memory_min_score": 15.0}

``language`` fixes the audio's language (``null``: Whisper detects it per clip). ``memory`` names a
translation memory per language pair (:mod:`~speechllm.speechlm.memory`; a path relative to the
folder): a sentence whose nearest pairs there score at least ``memory_min_score`` is translated with
the ``memory_k`` nearest as demonstrations, any other with the fixed ones. It answers the
same ``generate(audio, instructions, options)`` calls as :class:`~speechllm.speechlm.model.SpeechLLM`,
so ``speechllm translate``/``ask`` and :class:`SpeechLLMTranscriber` run it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from speechllm.device import pick_device
from speechllm.generation.options import Generation, GenerationOptions
from speechllm.speechlm.memory import TranslationMemory
from speechllm.speechlm.skills import check_skills, recording_skill, skill_reply
from speechllm.speechlm.tasks import LANGUAGES, language_name, parse_instruction, question_about_audio

SAMPLE_RATE = 16_000
DEFAULT_OPTIONS = GenerationOptions()


@dataclass(frozen=True)
class CascadeConfig:
    asr: str = "whisper-base"
    llm: str = "gemma3-270m"
    quant: str = "auto"
    language: str | None = None  # the audio's language; None: detected per clip
    memory: tuple[tuple[str, str], ...] = ()  # ("Spanish-English", file) per language pair
    memory_k: int = 8
    memory_min_score: float = 15.0
    skills: tuple[str, ...] = ()  # spoken questions they answer exactly (speechllm.speechlm.skills)

    def __post_init__(self) -> None:
        check_skills(self.skills)

    @classmethod
    def from_dict(cls, raw: dict, folder: str | Path | None = None) -> CascadeConfig:
        fields = ("asr", "llm", "quant", "language", "memory_k", "memory_min_score")
        known = {k: raw[k] for k in fields if k in raw}
        root = Path(folder) if folder is not None else Path()
        memory = tuple((pair, str(root / file)) for pair, file in (raw.get("memory") or {}).items())
        return cls(**known, memory=memory, skills=tuple(raw.get("skills", ())))


# few-shot demonstrations per task: (what was said, the text prompt, the reply)
_SPANISH_ENGLISH = (
    ("Mi hermano trabaja en un hospital grande.", "My brother works in a big hospital."),
    ("¿A qué hora sale el tren para Madrid?", "What time does the train to Madrid leave?"),
    ("Por favor, apaga las luces antes de salir.", "Please turn off the lights before leaving."),
    ("Y dijo Dios: Sea la luz; y fué la luz.", "God said, Let there be light, and there was light."),
)
# (source, target) -> demonstrations; other pairs are asked zero-shot
_TRANSLATION_DEMOS = {
    ("Spanish", "English"): _SPANISH_ENGLISH,
    ("English", "Spanish"): tuple((en, es) for es, en in _SPANISH_ENGLISH[:3]),
}
_PASSAGE_DEMOS = (
    (
        "The library opens at nine and closes at six. On Sundays it is closed.",
        "When does the library close?",
        "At six.",
    ),
    (
        "Maria bought three notebooks and a blue pen for her brother Daniel.",
        "Who was the pen for?",
        "Her brother Daniel.",
    ),
)
_QUESTION_DEMOS = (
    ("What is the capital of France?", "Paris."),
    ("How many days are in a week?", "Seven."),
    ("What is four plus five?", "Nine."),
)


def _translation_prompt(
    said: str, source: str, target: str, demos: Sequence[tuple[str, str]] | None = None
) -> str:
    """Few-shot: ``demos`` (nearest last) when given, else the fixed demonstrations of the pair."""
    demos = _TRANSLATION_DEMOS.get((source, target), ()) if not demos else demos
    lines = [f"{source}: {s}\n{target}: {t}\n" for s, t in demos]
    return "\n".join(lines + [f"{source}: {said}\n{target}:"])


def _passage_prompt(said: str, question: str) -> str:
    lines = [f"Passage: {p}\nQuestion: {q}\nAnswer: {a}\n" for p, q, a in _PASSAGE_DEMOS]
    return "\n".join(lines + [f"Passage: {said}\nQuestion: {question}\nAnswer:"])


def _question_prompt(said: str) -> str:
    lines = [f"Question: {q}\nAnswer: {a}\n" for q, a in _QUESTION_DEMOS]
    return "\n".join(lines + [f"Question: {said}\nAnswer:"])


def _free_prompt(said: str, instruction: str) -> str:
    return f'Someone said: "{said}"\nInstruction: {instruction}\nReply:'


def line_end_ids(tokenizer) -> tuple[int, ...]:
    """The end token and every token that starts a new line: a reply here is one line."""
    vocab = tokenizer.get_vocab()  # byte-level BPE writes "\n" as "Ċ"; sentencepiece as itself or "<0x0A>"
    ids = {i for piece, i in vocab.items() if piece.startswith(("\n", "Ċ", "<0x0A>"))}
    return tuple(sorted(ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())))


class TranscriptSpeechLLM:
    """Whisper + a text LLM behind the speech-LLM's ``generate`` (see the module doc)."""

    max_seconds = 30.0  # one Whisper window per generate() item; the transcriber cuts longer audio

    def __init__(self, config: CascadeConfig, device: str | torch.device = "cpu") -> None:
        from speechllm.llm import load_llm
        from speechllm.transcriber import WhisperTranscriber

        self.config, self.device = config, pick_device(device)
        self.asr = WhisperTranscriber(
            config.asr, device=str(self.device), language=config.language, segmenter="fixed"
        )
        self.llm, self.tokenizer = load_llm(config.llm, quant=config.quant, device=self.device)
        self._memories: dict[tuple[str, str], TranslationMemory | None] = {}
        self._line_ends: tuple[int, ...] | None = None  # line_end_ids, built on first use

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device | None = None) -> TranscriptSpeechLLM:
        import json

        raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        return cls(CascadeConfig.from_dict(raw, folder), device or "cpu")

    def eval(self) -> TranscriptSpeechLLM:
        return self

    # -- hearing -----------------------------------------------------------------------------------

    def hear(self, audio: Sequence[np.ndarray]) -> list[tuple[str, str]]:
        """``(transcript, language name)`` per clip."""
        heard = []
        for clip in audio:
            transcript = self.asr.transcribe(np.asarray(clip, np.float32))  # 16 kHz mono
            code = getattr(transcript, "language", None) or self.config.language or "en"
            heard.append((transcript.text.strip(), LANGUAGES.get(code, language_name(code))))
        return heard

    # -- answering ---------------------------------------------------------------------------------

    def prompt(self, said: str, language: str, instruction: str) -> str | None:
        """The LLM prompt for one clip, or None when the reply is the transcript itself."""
        request = parse_instruction(instruction)
        if request is None:
            return _free_prompt(said, instruction)
        if request.task == "transcribe":
            return None
        if request.task == "translate":
            target = language_name(request.target)
            return _translation_prompt(said, language, target, self.demonstrations(said, language, target))
        if request.task == "passage-question":
            return _passage_prompt(said, request.prompt or "")
        if request.task == "spoken-question":
            return _question_prompt(said)
        return _free_prompt(said, instruction)

    def memory(self, source: str, target: str) -> TranslationMemory | None:
        """The translation memory of a language pair (either direction of a configured one), loaded once."""
        if (source, target) not in self._memories:
            files = dict(self.config.memory)
            if f"{source}-{target}" in files:
                memory = TranslationMemory.read(files[f"{source}-{target}"])
            elif f"{target}-{source}" in files:
                memory = self.memory(target, source).reversed()
            else:
                memory = None
            self._memories[(source, target)] = memory
        return self._memories[(source, target)]

    def demonstrations(self, said: str, source: str, target: str) -> list[tuple[str, str]] | None:
        """The memory's nearest pairs for a sentence, nearest last; None when nothing is near enough."""
        memory = self.memory(source, target)
        if memory is None or self.config.memory_k <= 0:
            return None
        nearest = memory.nearest(said, self.config.memory_k, self.config.memory_min_score)
        return nearest[::-1] or None

    @torch.no_grad()
    def complete(
        self, prompts: Sequence[str], max_new_tokens: int, stop_repetition: bool = True,
        options: GenerationOptions = DEFAULT_OPTIONS,
    ) -> list[Generation]:
        """Greedy continuations on the decoding engine (:func:`speechllm.generation.generate`), each one
        line: it ends at the end token or a new line, or after a loop's first pass
        (``stop="repetition"``, the speech-LLM's :class:`RepetitionGuard`). ``options``: the rest (the
        engine, speculative drafts)."""
        from speechllm.generation import generate

        if self._line_ends is None:
            self._line_ends = line_end_ids(self.tokenizer)
        options = replace(options, max_new_tokens=max_new_tokens, stop_repetition=stop_repetition,
                          eos_token_id=self._line_ends)
        out = []
        for prompt in prompts:
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(self.device)
            result = generate(self.llm, ids, options)
            text = self.tokenizer.decode(result.tokens, skip_special_tokens=True)
            stop = "end" if "\n" in text else result.stop  # a line break inside a token ends it too
            out.append(Generation(tuple(result.tokens), text.split("\n")[0].strip(), 0.0, stop))
        return out

    def generate(
        self,
        audio: Sequence[np.ndarray] | None,
        instructions: Sequence[str] | str,
        options: GenerationOptions = DEFAULT_OPTIONS,
    ) -> list[Generation]:
        if audio is None:
            raise ValueError("this speech-LLM answers about audio; text-only prompts need the LLM itself")
        instructions = [instructions] * len(audio) if isinstance(instructions, str) else list(instructions)
        heard = self.hear(audio)
        answers = [self.skill_reply(said, i) for (said, _), i in zip(heard, instructions, strict=True)]
        replies = {i: Generation((), answer, 0.0, "end") for i, answer in enumerate(answers) if answer}
        prompts = [
            self.prompt(said, lang, instr) for (said, lang), instr in zip(heard, instructions, strict=True)
        ]
        asked = [i for i, p in enumerate(prompts) if p is not None and i not in replies]
        completed = self.complete([prompts[i] for i in asked], options.max_new_tokens,
                                  options.stop_repetition, options)
        replies.update(zip(asked, completed, strict=True))
        return [replies.get(i) or Generation((), heard[i][0], 0.0, "end") for i in range(len(prompts))]

    def skill_reply(self, said: str, instruction: str) -> str | None:
        """A skill's reply to a question asked in the audio (``said``), or to a question about the
        recording as a whole (``gist``: from what it says), or None."""
        request = parse_instruction(instruction)
        if not self.config.skills or request is None:
            return None
        if request.task == "spoken-question":
            return skill_reply(said, self.config.skills)
        question = question_about_audio(instruction)
        answer = recording_skill(question, self.config.skills) if question else None
        return answer(said) if answer else None

    def translate_text(
        self, texts: Sequence[str], source: str = "Spanish", target: str = "English"
    ) -> list[str]:
        """The LLM alone on given source text (the ceiling any hearing can reach)."""
        prompts = [_translation_prompt(t, source, target, self.demonstrations(t, source, target))
                   for t in texts]
        return [g.text for g in self.complete(prompts, 64)]
