"""The transcript speech-LLM (Whisper hears, a text LLM answers) and the everyday bilingual sentences."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_llm, make_tiny_whisper

import speechllm
from speechllm.data_recipes.everyday import SUBJECTS, everyday_pairs
from speechllm.speechlm.tasks import (
    TASKS,
    Request,
    instruction,
    parse_instruction,
    question_about_audio,
    task_of,
)


def test_every_task_instruction_parses_back_to_its_task():
    for name, task in TASKS.items():
        prompt = "What is on the table?" if "{prompt}" in task.instruction else None
        text = instruction(name, prompt, "German")
        parsed = parse_instruction(text)
        assert parsed is not None and parsed.task == name, (name, text)
        if prompt:
            assert parsed.prompt == prompt
        if "{target}" in task.instruction:
            assert parsed.target == "German"
    free = parse_instruction("Tell me a joke about the audio.")
    assert free is None or free.prompt == "Tell me a joke about the audio."
    assert parse_instruction(instruction("translate", None, "English")) == Request(
        "translate", None, "English"
    )


def test_a_chats_earlier_turns_in_front_leave_the_task_and_the_question_as_they_are():
    history = "Earlier in this conversation:\nUser: hi\n\nthere\nAssistant: Answer this\n\n"
    asked = instruction("passage-question", "Who is speaking?")
    assert task_of(history + asked) == "passage-question" and question_about_audio(history + asked) == (
        "Who is speaking?")
    assert task_of(history + instruction("spoken-question")) == "spoken-question"
    assert task_of(history + "Summarise this") == "instruct"
    assert question_about_audio(history + "Summarise this") == history + "Summarise this"
    assert question_about_audio(history + instruction("translate", None, "English")) is None


def test_everyday_pairs_are_distinct_repeatable_and_agree():
    pairs = everyday_pairs(300, seed=3)
    assert len(pairs) == 300 and len({es for es, _ in pairs}) == 300
    assert pairs == everyday_pairs(300, seed=3) and pairs != everyday_pairs(300, seed=4)
    for es, en in pairs:
        assert es[0].isupper() or es[0] in "¿¡" and en[0].isupper()
        assert " a el " not in es and " de el " not in es  # contracted to al / del
    third_person = {en for _, en, person in SUBJECTS if person == 2}
    for _, en in pairs:
        for subject in third_person:
            if en.startswith(subject[:1].upper() + subject[1:] + " "):
                verb = en.split()[len(subject.split())]
                assert verb.endswith("s") or verb in ("is",), en


@pytest.fixture(scope="module")
def cascade_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    folder = root / "model"
    folder.mkdir()
    config = {
        "format": "speechllm",
        "pipeline": "transcript",
        "asr": str(make_tiny_whisper(root / "whisper")),
        "llm": str(make_tiny_llm(root / "llm")),
        "quant": "none",
        "language": "en",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_transcript_pipeline_loads_as_a_speechllm_and_answers(cascade_folder, make_tone):
    audio = make_tone(1.5)
    asr = speechllm.load(str(cascade_folder), task="transcribe", segmenter="fixed")
    heard = asr.model.hear([audio])[0][0]
    assert asr.transcribe(audio).text.strip() == heard  # transcribe: the transcript itself, no LLM
    model = speechllm.load(str(cascade_folder), task="translate", target="es", segmenter="fixed")
    prompt = model.model.prompt(heard, "English", model.instruction)
    assert prompt.endswith(f"English: {heard}\nSpanish:")
    result = model.transcribe(audio)
    generated = model.model.complete([prompt], 24)[0]  # the length budget of 1.5 s of audio
    assert result.text.strip() == generated.text and "\n" not in result.text
    assert generated.stop in ("end", "length")


def test_asking_about_audio_builds_the_passage_prompt(cascade_folder):
    model = speechllm.load(
        str(cascade_folder), task="passage-question", prompt="Who came?", segmenter="fixed"
    )
    prompt = model.model.prompt("Anna came at noon.", "English", model.instruction)
    assert prompt.endswith("Passage: Anna came at noon.\nQuestion: Who came?\nAnswer:")
    with pytest.raises(ValueError, match="answers about audio"):
        model.model.generate(None, model.instruction)
    assert isinstance(model.model.generate([np.zeros(16000, np.float32)], model.instruction)[0].text, str)


def test_translation_memory_supplies_the_nearest_demonstrations(cascade_folder, tmp_path):
    folder = tmp_path / "with-memory"
    folder.mkdir()
    config = json.loads((cascade_folder / "config.json").read_text())
    config.update(memory={"Spanish-English": "memory.tsv"}, memory_k=2, memory_min_score=0.3)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "memory.tsv").write_text(
        "El perro come carne.\tThe dog eats meat.\n"
        "El gato duerme en la casa.\tThe cat sleeps in the house.\n"
        "Mañana llueve en la ciudad.\tTomorrow it rains in the city.\n",
        encoding="utf-8",
    )
    model = speechllm.load(str(folder), task="translate", target="en", segmenter="fixed").model
    prompt = model.prompt("El perro duerme.", "Spanish", instruction("translate", None, "English"))
    demos = prompt.split("\n\n")[:-1]
    assert len(demos) == 2 and "perro come carne" in demos[0] + demos[1] and "Mañana" not in prompt
    assert prompt.endswith("Spanish: El perro duerme.\nEnglish:")
    # no word in common with the memory: the fixed demonstrations
    unrelated = model.prompt("Hola amigos.", "Spanish", instruction("translate", None, "English"))
    assert "Mi hermano trabaja en un hospital grande." in unrelated
    # the other direction reads the same memory reversed
    back = model.prompt("The dog sleeps.", "English", instruction("translate", None, "Spanish"))
    assert "English: The dog eats meat.\nSpanish: El perro come carne." in back


def test_skills_answer_a_spoken_sum_without_the_llm(cascade_folder, tmp_path):
    from speechllm.speechlm.cascade import DEFAULT_OPTIONS, TranscriptSpeechLLM

    folder = tmp_path / "with-skills"
    folder.mkdir()
    config = json.loads((cascade_folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "skills": ["arithmetic"]}))
    model = TranscriptSpeechLLM.from_folder(folder)
    said = {16000: "What is sixty nine plus thirty nine?", 8000: "Who wrote Hamlet?"}
    model.hear = lambda audio: [(said[len(a)], "English") for a in audio]
    clips = [np.zeros(16000, np.float32), np.zeros(8000, np.float32)]
    asked = instruction("spoken-question")
    replies = model.generate(clips, [asked, asked])
    assert replies[0].text == "69 plus 39 is 108."
    budget = DEFAULT_OPTIONS.max_new_tokens
    assert replies[1].text == model.complete([model.prompt(said[8000], "English", asked)], budget)[0].text
    # a sum in a passage is the passage's, not a question to the calculator
    passage = model.generate(clips[:1], instruction("passage-question", "What was asked?"))[0].text
    assert passage != "69 plus 39 is 108."
    # a question about the whole recording: its opening sentences, with the gist skill only
    about = instruction("passage-question", "What is this recording about?")
    assert model.generate(clips[1:], about)[0].text != said[8000]
    (folder / "config.json").write_text(json.dumps({**config, "skills": ["arithmetic", "gist"]}))
    model = TranscriptSpeechLLM.from_folder(folder)
    model.hear = lambda audio: [(said[len(a)], "English") for a in audio]
    assert model.generate(clips[1:], about)[0].text == said[8000]
    with pytest.raises(ValueError, match="unknown skill"):
        TranscriptSpeechLLM.from_folder(folder).config.__class__(skills=("weather",))


def test_a_looping_reply_ends_after_its_first_pass(cascade_folder, monkeypatch):
    import speechllm.generation as generation

    model = speechllm.load(str(cascade_folder), task="translate", target="es", segmenter="fixed").model
    loop = [7, 8, 9] * 12
    end = model.tokenizer.eos_token_id

    class Looping:  # an engine state whose LLM writes the loop, then its end token
        row_exact = False

        def __init__(self, *args, **kwargs):
            self.fed = 0
            self.logits = self._next()

        def _next(self):
            logits = torch.zeros(1, len(model.tokenizer))
            logits[0, loop[self.fed] if self.fed < len(loop) else end] = 1.0
            return logits

        def step(self, tokens):
            self.fed += 1
            self.logits = self._next()
            return self.logits

    monkeypatch.setattr(generation, "open_state", Looping)
    reply = model.complete(["English: hello\nSpanish:"], 64)[0]
    assert reply.stop == "repetition" and list(reply.tokens) == [7, 8, 9]
    reply = model.complete(["English: hello\nSpanish:"], 64, stop_repetition=False)[0]
    assert reply.stop == "end" and len(reply.tokens) == len(loop)  # under the budget: not a length cut


def test_the_callers_decoding_options_reach_the_engine(cascade_folder, make_tone, monkeypatch):
    """generate(audio, instruction, options): the engine and drafts asked for decode the LLM's line (the
    cascade sets only the budget, the repetition guard and its line ends)."""
    import speechllm.generation as generation
    from speechllm.generation import GenerationOptions

    model = speechllm.load(str(cascade_folder), task="translate", target="es", segmenter="fixed").model
    engines = []
    opened = generation.open_state

    def spy(*args, **kwargs):
        engines.append(args[4])
        return opened(*args, **kwargs)

    monkeypatch.setattr(generation, "open_state", spy)
    audio = make_tone(1.5)
    asked = instruction("translate", None, "Spanish")
    forced = model.generate([audio], asked, GenerationOptions(max_new_tokens=8, engine="hf"))[0]
    default = model.generate([audio], asked, GenerationOptions(max_new_tokens=8))[0]
    assert engines == ["hf", "auto"] and len(forced.tokens) <= 8 and forced.text == default.text
