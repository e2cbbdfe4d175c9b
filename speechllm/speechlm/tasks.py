"""What a speech-LLM is asked to do: one registry of tasks.

Each :class:`Task` carries everything known about it: its instruction, which manifest rows teach
it (and how a row becomes an :class:`Example`: instruction, reply, what the audio says), how its
replies are scored, and which instruction-following test its replies face. A new task is one
``register_task(Task(...))``.

Instruction-following rate (IFR), per reply: the reply is non-empty and does the kind of thing
asked. We know what the audio says (the transcript, or the source text for translation); call
*closeness* the character error rate of the reply against it. Where the reply should be that
transcript (``reply_is_transcript``: transcribe) it follows when closeness < 0.5 and it is at most
twice the transcript's length (+10 characters); for every other task it follows when it is *not*
merely a transcript of the audio: closeness >= 0.5 (the SLAM-LLM failure mode: an ASR-trained model
transcribes whatever it is asked). Replies to audio whose text is unknown follow when non-empty.
QA accuracy: the normalised answer appears, as whole words, in the normalised reply; a question that the
audio does not answer has the answer :data:`NOT_STATED`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speechllm.manifest import ManifestRow

Metric = Callable[[str, list[str], list[str]], dict[str, Any]]  # (task, references, replies) -> scores


@dataclass(frozen=True)
class Example:
    task: str  # a TASKS name
    instruction: str
    reply: str
    spoken: str | None  # what the audio says, when known: CTC target and IFR reference
    heard: bool = False  # spoken is what a hearing model wrote (a ``heard_by`` row): read exactly, not noised


def _always(row: ManifestRow) -> bool:
    return True


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str  # may use {prompt} (the row's text prompt) and {target} (a language)
    description: str = ""
    rows: tuple[str, ...] = ()  # manifest tasks (speechllm.manifest) whose rows teach it
    accepts: Callable[[ManifestRow], bool] = _always  # which of those rows (sqa: with a prompt or not)
    example: Callable[[Task, ManifestRow], Example] | None = None  # a row as instruction and reply
    metric: Metric | None = None  # scores beyond IFR
    reply_is_transcript: bool = False  # IFR: the reply should say what the audio says
    # the reply is a span of what the audio says, or NOT_STATED (decoding holds it to that)
    quotes_audio: bool = False
    # its prompt is the user's own question or request about the audio (skills may know it: "gist")
    prompt_asks: bool = False


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


LANGUAGES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian",
             "pt": "Portuguese"}


def language_name(code_or_name: str) -> str:
    """``en`` → ``English``; a name passes through (capitalised)."""
    return LANGUAGES.get(code_or_name.lower(), code_or_name[:1].upper() + code_or_name[1:])


def instruction(task: str, prompt: str | None = None, target: str = "English") -> str:
    """The instruction text of a registered task."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    if "{prompt}" in TASKS[task].instruction and not prompt:
        raise ValueError(f"task {task!r} needs a prompt")
    return TASKS[task].instruction.format(prompt=prompt or "", target=target)


@dataclass(frozen=True)
class Request:
    task: str
    prompt: str | None = None
    target: str = "English"


@cache
def _instruction_pattern(template: str) -> re.Pattern:
    pattern = (
        re.escape(template).replace(r"\{prompt\}", "(?P<prompt>.+)").replace(r"\{target\}", "(?P<target>.+)")
    )
    return re.compile(f"^{pattern}$", re.S)


def parse_instruction(text: str) -> Request | None:
    """The task an instruction text asks for (inverse of :func:`~speechllm.speechlm.tasks.instruction`)."""

    def literal(item) -> int:  # most specific first: a bare "{prompt}" (free instructions) matches anything
        return len(item[1].instruction.replace("{prompt}", "").replace("{target}", ""))

    for name, task in sorted(TASKS.items(), key=literal, reverse=True):
        match = _instruction_pattern(task.instruction).match(text)
        if match:
            groups = match.groupdict()
            return Request(name, groups.get("prompt"), groups.get("target") or "English")
    return None


def spoken_question_context(text: str) -> str | None:
    """The text before the ``spoken-question`` instruction when ``text`` ends with it (a chat turn's
    history and system text come first, as ``Earlier in this conversation: ...``), "" when it is
    that instruction alone; None when the text asks for something else."""
    asked = TASKS["spoken-question"].instruction
    if text == asked:
        return ""
    if text.endswith("\n" + asked):
        return text[: -len(asked)]
    return None


def request_of(text: str) -> Request | None:
    """What an instruction text asks for, after any context in front of the instruction (a chat's earlier
    turns, ``Earlier in this conversation: ...``, end with a newline before it); with none that matches,
    :func:`parse_instruction` of the whole text (a free instruction)."""
    request = parse_instruction(text)
    if request is None or request.task != "instruct":
        return request
    for start in (i + 1 for i, c in enumerate(text) if c == "\n"):
        after = parse_instruction(text[start:])
        if after is not None and after.task != "instruct":
            return after
    return request


def question_about_audio(text: str) -> str | None:
    """The user's own question or request about the audio in an instruction text (a passage question's,
    or a free instruction itself), or None for a task that asks none (``Task.prompt_asks``)."""
    request = request_of(text)
    return request.prompt if request is not None and TASKS[request.task].prompt_asks else None


def task_of(text: str) -> str:
    """The registered task an instruction text asks for, context in front aside (a free instruction:
    ``instruct``)."""
    request = request_of(text)
    return request.task if request is not None else "instruct"


# ---------------------------------------------------------------- manifest rows → examples


def row_tasks() -> tuple[str, ...]:
    """The manifest tasks that some registered task trains on, in registry order."""
    return tuple(dict.fromkeys(name for task in TASKS.values() if task.example for name in task.rows))


def example_of(row: ManifestRow) -> Example:
    """The example a manifest row teaches; ``ValueError`` for a row no task trains on."""
    for task in TASKS.values():
        if task.example is not None and row.task in task.rows and task.accepts(row):
            example = task.example(task, row)
            return replace(example, heard=True) if row.extra.get("heard_by") else example
    raise ValueError(f"task {row.task!r} is not trained here (known: {', '.join(row_tasks())})")


def _reply(row: ManifestRow) -> str:
    return (row.answer or row.text or "").strip()


def _transcript(task: Task, row: ManifestRow) -> Example:
    return Example(task.name, instruction(task.name), row.text.strip(), row.text)


def _translation(task: Task, row: ManifestRow) -> Example:
    target = LANGUAGES.get(row.extra.get("target_lang", "en"), "English")
    return Example(task.name, instruction(task.name, row.prompt, target=target), row.text.strip(),
                   row.extra.get("source_text"))


def translation_examples(pairs: Sequence[tuple[str, str]], source: str, target: str) -> str:
    """A translation memory's pairs (nearest last) as the ``translate-by-example`` prompt: one
    ``Source: ...`` / ``Target: ...`` line pair each, languages by name."""
    return "\n".join(f"{language_name(source)}: {s}\n{language_name(target)}: {t}" for s, t in pairs)


def _answer(task: Task, row: ManifestRow) -> Example:
    spoken = row.text if row.answer else None  # with an answer, text is what the audio says
    return Example(task.name, instruction(task.name, row.prompt), _reply(row), spoken)


def _free(task: Task, row: ManifestRow) -> Example:
    return Example(task.name, instruction(task.name, row.prompt), _reply(row), row.extra.get("transcript"))


# ---------------------------------------------------------------- scoring


def error_rates(task: str, refs: list[str], hyps: list[str]) -> dict[str, Any]:
    from speechllm.metrics import char_error_rate, word_error_rate

    return {"wer": word_error_rate(refs, hyps).rate, "cer": char_error_rate(refs, hyps).rate}


def bleu(task: str, refs: list[str], hyps: list[str]) -> dict[str, Any]:
    from speechllm.metrics_bleu import corpus_bleu

    score = corpus_bleu(refs, hyps)
    return {"bleu": score.score, "bleu_signature": score.signature}  # sacrebleu's, to print beside it


def answer_correct(answer: str, reply: str) -> bool:
    from speechllm.text_normalize import normalize

    a, r = normalize(answer).split(), normalize(reply).split()
    return bool(a) and any(r[i : i + len(a)] == a for i in range(len(r) - len(a) + 1))


NOT_STATED = "The recording does not say."  # the reply to a question about audio that does not answer it


def qa_accuracy(task: str, refs: list[str], hyps: list[str]) -> dict[str, Any]:
    """Accuracy, and the share of replies saying :data:`NOT_STATED` (right where the reference says so)."""
    correct = [answer_correct(r, h) for r, h in zip(refs, hyps, strict=True)]
    not_stated = [answer_correct(NOT_STATED, h) for h in hyps]
    return {f"qa_acc/{task}": sum(correct) / len(correct) if correct else 0.0,
            f"qa_not_stated/{task}": sum(not_stated) / len(not_stated) if not_stated else 0.0}


def follows_instruction(task: str, reply: str, spoken: str | None) -> bool:
    """The IFR test of one reply to ``task`` (see the module docstring)."""
    from speechllm.metrics import char_error_rate
    from speechllm.text_normalize import normalize

    if not normalize(reply):
        return False
    if not spoken or not normalize(spoken):
        return True
    closeness = char_error_rate([spoken], [reply]).rate
    if TASKS[task].reply_is_transcript:
        return closeness < 0.5 and len(normalize(reply)) <= 2 * len(normalize(spoken)) + 10
    return closeness >= 0.5


# ---------------------------------------------------------------- the registry

for _task in (
    Task("transcribe", "Transcribe the speech.", "speech recognition", rows=("asr", "tts"),
         example=_transcript, metric=error_rates, reply_is_transcript=True),
    Task("translate", "Translate the speech into {target}.", "speech translation", rows=("st",),
         accepts=lambda row: not row.prompt, example=_translation, metric=bleu),
    # the same, with a translation memory's nearest pairs as examples (translation_examples)
    Task("translate-by-example", "Translate the speech into {target}, as these similar sentences are "
         "translated:\n{prompt}", "speech translation with examples from a translation memory", rows=("st",),
         accepts=lambda row: bool(row.prompt), example=_translation, metric=bleu),
    Task("spoken-question", "Answer the question asked in the speech.", "spoken question answering",
         rows=("sqa",), accepts=lambda row: not row.prompt, example=_answer, metric=qa_accuracy),
    Task("passage-question", "Answer this question about the speech: {prompt}",
         "text question about a spoken passage", rows=("sqa",), accepts=lambda row: bool(row.prompt),
         example=_answer, metric=qa_accuracy, quotes_audio=True, prompt_asks=True),
    Task("instruct", "{prompt}", "any free instruction", rows=("instruct",), example=_free, prompt_asks=True),
):
    register_task(_task)
