"""Text-side training: simulated CTC units stand in for audio (ctc-posterior only)."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import test_train
import torch

from speechllm.manifest import ManifestError
from speechllm.speechlm import LoraSpec, SpeechLLM
from speechllm.speechlm.simulated_units import (
    UnitNoise,
    UnitSimulator,
    confusable_units,
    simulated_output,
)
from speechllm.train import TextMix, TrainConfig, read_text_rows, train

pytestmark = pytest.mark.usefixtures("one_thread")
data, config = test_train.data, test_train.config  # the tiny models and audio of the trainer tests

TEXT_ROWS = [
    {"task": "sqa", "text": "on monday anna went to the market", "prompt": "where did anna go?",
     "answer": "the market"},
    {"task": "sqa", "text": "what is two plus two", "answer": "four"},
    {"task": "st", "text": "the weather", "source_text": "el tiempo"},
]


@pytest.fixture()
def ctc_posterior(data, tmp_path):
    run = config(data, tmp_path / "base", adapter="ctc-posterior",
                 adapter_options={"n_layers": 1, "d_ffn": 32, "bottleneck": 8, "top_k": 4},
                 lora=LoraSpec(rank=2, alpha=4.0))
    return SpeechLLM.build(run.model_config())


def whisper_hearing_run(data, folder):
    """A tiny ctc-posterior speech-LLM with a LoRA that hears through its encoder's Whisper."""
    return config(data, folder, adapter="ctc-posterior", hearing="whisper",
                  adapter_options={"n_layers": 1, "d_ffn": 32, "bottleneck": 8, "top_k": 4},
                  lora=LoraSpec(rank=2, alpha=4.0))


def test_clean_units_mix_exactly_the_tokens_of_the_text(ctc_posterior):
    model = ctc_posterior
    vocab = model.ctc_vocab
    sim = UnitSimulator(vocab, confusable_units(model.adapter, 4), UnitNoise.clean())
    ids, probs = sim("hello world", np.random.default_rng(0))
    assert ids[:, 0].tolist() == vocab.encode("hello world")
    assert torch.allclose(probs.sum(-1), torch.ones(len(ids)))
    out = simulated_output(model.adapter, [(ids, probs)])
    table = model.llm.get_input_embeddings()
    expected = table(model.adapter.token_ids[ids[:, 0] - 1])
    assert out.mask.all() and torch.allclose(out.embeddings[0], expected, atol=1e-6)


def test_noise_deletes_substitutes_and_softens(ctc_posterior):
    model = ctc_posterior
    vocab = model.ctc_vocab
    confusable = confusable_units(model.adapter, 4)
    assert (confusable[1:] != torch.arange(1, len(confusable))[:, None]).all()  # never itself
    assert (confusable[1:] > 0).all()  # never blank
    sim = UnitSimulator(vocab, confusable, UnitNoise(delete=0.3, substitute=0.3, insert=0.0, split=0.0))
    text = "one two three four five six seven eight nine ten " * 5
    clean = vocab.encode(text)
    noisy = sim.units(text, np.random.default_rng(1), severity=1.0)
    assert len(noisy) < len(clean) and noisy != clean
    _, probs = sim.posteriors(noisy, np.random.default_rng(2))
    assert (probs[:, 0] < 1).any() and torch.allclose(probs.sum(-1), torch.ones(len(noisy)), atol=1e-5)


def test_read_text_rows_reports_every_bad_row(tmp_path):
    path = tmp_path / "text.jsonl"
    path.write_text("\n".join([json.dumps(TEXT_ROWS[0]), "{bad", json.dumps({"task": "nope"}),
                               json.dumps({"task": "st", "text": "no source"})]) + "\n")
    with pytest.raises(ManifestError) as err:
        read_text_rows(path)
    assert [e.split(": ", 1)[0] for e in err.value.errors] == [f"{path}:{n}" for n in (2, 3, 4)]


def test_text_mix_is_reproducible_and_counts_speech_batches():
    mix = TextMix(0.5, seed=3)
    picks = [mix.is_text(m) for m in range(200)]
    assert 60 < sum(picks) < 140 and picks == [TextMix(0.5, 3).is_text(m) for m in range(200)]
    assert mix.speech_before(200) == 200 - sum(picks)
    assert TextMix(1.0, 0).is_text(5) and not TextMix(0.0, 0).is_text(5)


def test_text_side_training_lowers_the_loss_and_resumes(data, tmp_path):
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps(r) + "\n" for r in TEXT_ROWS))
    run = config(data, tmp_path / "run", adapter="ctc-posterior",
                 adapter_options={"n_layers": 1, "d_ffn": 32, "bottleneck": 8, "top_k": 4},
                 text_train=str(text), text_share=1.0, steps=20, lr=5e-3, save_every=10,
                 text_noise={"delete": 0.0, "substitute": 0.0, "insert": 0.0, "split": 0.0})
    result = train(run)
    assert np.mean(result.losses[-3:]) < 0.9 * np.mean(result.losses[:3]), result.losses
    resumed = train(replace(run, steps=22, resume=True))
    assert resumed.start_step == 20 and len(resumed.losses) == 2


def test_text_rows_need_the_ctc_posterior_adapter(data, tmp_path):
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps(TEXT_ROWS[1]) + "\n")
    with pytest.raises(ValueError, match="ctc-posterior"):
        train(config(data, tmp_path / "run", text_train=str(text), text_share=1.0, steps=1))
    assert TrainConfig(train="x", out="y").text_share == 0.0


def test_text_rows_alone_need_no_speech_manifest(data, tmp_path):
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps(r) + "\n" for r in TEXT_ROWS))
    run = config(data, tmp_path / "run", train="", adapter="ctc-posterior",
                 adapter_options={"n_layers": 1, "d_ffn": 32, "bottleneck": 8, "top_k": 4},
                 text_train=str(text), text_share=1.0, steps=2)
    assert train(run).step == 2
    with pytest.raises(ValueError, match="training manifest"):
        train(replace(run, text_share=0.5))


def test_text_rows_and_text_side_finetune_from_the_command_line(tmp_path, capsys):
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.apps.cli import main
    from speechllm.speechlm import SpeechLLMConfig, load_speechlm, save_speechlm

    rows = tmp_path / "text.jsonl"
    assert main(["data", "text", "--recipe", "sqa:40", "--out", str(rows), "--seed", "3"]) == 0
    drawn = [json.loads(line) for line in rows.read_text().splitlines()]
    assert len(drawn) == 40 and all(r["task"] == "sqa" and r["answer"] for r in drawn)
    assert len({(r["text"], r.get("prompt")) for r in drawn}) == 40  # distinct texts
    from speechllm.data_recipes.recipes import split_of

    assert all(split_of(r["text"]) == "train" for r in drawn if r["source"] == "passage")
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(tmp_path / "w")),
                             llm=str(make_tiny_llm(tmp_path / "l")), adapter="ctc-posterior",
                             adapter_options={"n_layers": 1, "d_ffn": 32, "bottleneck": 8, "top_k": 4})
    base = save_speechlm(SpeechLLM.build(config), tmp_path / "base")
    out = tmp_path / "tuned"
    code = main(["finetune", "--text-train", str(rows), "--base", str(base), "--lora-rank", "2",
                 "--freeze-adapter", "--out", str(out), "--steps", "2", "--batch-size", "4", "-q"])
    assert code == 0, capsys.readouterr().err
    assert load_speechlm(out).has_lora
    assert main(["finetune", "--out", str(tmp_path / "x"), "--steps", "1"]) == 1
    assert "--text-train" in capsys.readouterr().err


def test_reply_loss_equals_the_full_sequence_loss(ctc_posterior):
    model = ctc_posterior
    sim = UnitSimulator(model.ctc_vocab, confusable_units(model.adapter, 4))
    rng = np.random.default_rng(0)
    units = simulated_output(model.adapter, [sim("a short one", rng), sim("a much longer passage here", rng)])
    spliced = model._spliced_targets(units, ["Answer it.", "Answer this: who?"], ["yes", "anna and bo"])
    full = model.llm(inputs_embeds=spliced.embeds, attention_mask=spliced.attention_mask,
                     position_ids=spliced.position_ids, labels=spliced.labels, use_cache=False).loss
    assert torch.allclose(model.reply_loss(spliced), full, atol=1e-5)


def test_whisper_hearing_feeds_the_transcript_as_clean_units(data, tmp_path):
    from speechllm.speechlm import instruction
    from speechllm.speechlm.hearing import Heard, transcript_units

    run = whisper_hearing_run(data, tmp_path / "hearing")
    model = SpeechLLM.build(run.model_config()).eval()
    heard = ["It costs 12 dollars.", ""]
    model.whisper.heard = lambda audio: [Heard(t, "en") for t in heard[: len(audio)]]  # not tiny noise
    clips = [np.zeros(8000, np.float32), np.zeros(4000, np.float32)]
    # the transcribe instruction: Whisper's transcript itself, no LLM
    replies = model.generate(clips, instruction("transcribe"))
    assert [r.text for r in replies] == heard
    # any other instruction: the transcript in spoken form, one certain unit per vocabulary piece
    units = transcript_units(model.adapter, model.ctc_vocab, [Heard(t, "en") for t in heard])
    expected = model.ctc_vocab.encode("It costs twelve dollars.")
    assert int(units.mask[0].sum()) == len(expected) and int(units.mask[1].sum()) == 0
    table = model.llm.get_input_embeddings()
    first = table(model.adapter.token_ids[torch.tensor(expected) - 1])
    assert torch.allclose(units.embeddings[0, : len(expected)], first, atol=1e-6)
    spliced, seeds, _ = model._prefill_seeded(clips, [instruction("spoken-question")] * 2)
    assert len(seeds[0]) > len(seeds[1])  # the drafter's seed holds the heard tokens
    assert len(model.generate(clips, instruction("spoken-question"))) == 2
    with pytest.raises(ValueError, match="hearing='whisper' needs"):
        run.model_config().__class__(adapter="alignformer", hearing="whisper")



def test_a_question_is_about_the_whole_recording_and_its_answer_quotes_it(data, tmp_path):
    from speechllm.generation import GenerationOptions
    from speechllm.speechlm import SpeechLLMTranscriber, instruction
    from speechllm.speechlm.hearing import Heard
    from speechllm.speechlm.tasks import NOT_STATED

    model = SpeechLLM.build(whisper_hearing_run(data, tmp_path / "hearing").model_config()).eval()
    said, clips = "anna went to the market on monday", []
    model.whisper.heard = lambda audio: clips.extend(map(len, audio)) or [Heard(said, "en") for _ in audio]
    with torch.no_grad():  # LoRA B starts at zero: make the tiny model's choices its own
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    audio = (0.1 * np.sin(np.arange(70 * 16000) / 16000 * 2 * np.pi * 220)).astype(np.float32)
    asking = SpeechLLMTranscriber(model, task="passage-question", prompt="Where did Anna go?",
                                  segmenter="fixed", max_new_tokens=12)
    result = asking.transcribe(audio)
    assert len(clips) == 1 and clips[0] > 60 * 16000  # heard at once, answered once
    assert len(result.segments) == 1
    assert result.text in said or NOT_STATED.startswith(result.text)  # a quote (or the refusal, maybe cut)
    asked = instruction("passage-question", "Where did Anna go?")
    replies = [model.generate([audio], asked, GenerationOptions(max_new_tokens=12, **o))[0].text
               for o in ({"speculative": False}, {"speculative": True}, {"engine": "hf"})]
    streamed = "".join(model.stream(audio, asked, GenerationOptions(max_new_tokens=12)))
    assert replies == [result.text] * 3 and streamed == result.text  # quoted the same on every path
    history = "Earlier in this conversation:\nUser: hi\nAssistant: hello\n\n"  # the chat's earlier turns
    chat = "".join(model.stream(audio, history + asked, GenerationOptions(max_new_tokens=12)))
    assert chat in said or NOT_STATED.startswith(chat)  # quoted too
    free = SpeechLLMTranscriber(model, task="passage-question", prompt="Where did Anna go?",
                                segmenter="fixed", max_new_tokens=12, quote_answers=False)
    assert free.transcribe(audio).text != result.text  # the tiny LLM left free writes something else
    clips.clear()
    translating = SpeechLLMTranscriber(model, task="translate", segmenter="fixed", max_new_tokens=4)
    assert len(translating.transcribe(audio).segments) >= 3  # a translation follows the audio
    assert len(clips) >= 3 and max(clips) <= 30 * 16000


def test_heard_rows_are_read_exactly_as_the_model_reads_its_transcript(ctc_posterior):
    from speechllm.manifest import ManifestRow
    from speechllm.speechlm.hearing import Heard, transcript_units
    from speechllm.speechlm.tasks import example_of
    from speechllm.train import _text_loss

    model = ctc_posterior.eval()
    row = ManifestRow(audio="", task="sqa", text="anna went to the market", prompt="where did anna go?",
                      answer="the market")
    plain = example_of(row)
    real = example_of(replace(row, text="anna went to the marquee", extra={"heard_by": "speechllm-starter"}))
    assert real.heard and not plain.heard and real.spoken == "anna went to the marquee"
    simulator = UnitSimulator(model.ctc_vocab, confusable_units(model.adapter, 4))
    with torch.no_grad():
        noised = [float(_text_loss(model, simulator, [plain], [s]).loss) for s in (1, 2)]
        exact = [float(_text_loss(model, simulator, [real], [s]).loss) for s in (1, 2)]
        units = transcript_units(model.adapter, model.ctc_vocab, [Heard(real.spoken, "en")])
        inference = float(model.forward_units(units, [real.instruction], [real.reply]).loss)
    assert noised[0] != noised[1]  # simulated errors drawn per seed
    assert exact[0] == exact[1] == pytest.approx(inference, abs=1e-5)  # what the model reads at inference


def test_data_heard_writes_text_rows_as_the_model_hears_them_and_resumes(data, tmp_path, monkeypatch, capsys):
    import soundfile

    from speechllm.apps.cli import main
    from speechllm.speechlm import save_speechlm
    from speechllm.speechlm.hearing import Heard, WhisperHearing

    folder = save_speechlm(SpeechLLM.build(whisper_hearing_run(data, tmp_path / "m").model_config()),
                           tmp_path / "model")
    rows = [{"audio": "a.wav", "text": "paris", "task": "sqa", "prompt": "where?", "answer": "paris"},
            {"audio": "b.wav", "text": "hello world", "task": "asr"},
            {"audio": "c.wav", "text": "the weather", "task": "st", "source_text": "el tiempo"},
            {"audio": "d.wav", "text": "who?", "task": "sqa", "answer": "me"}]
    for n, row in enumerate(rows):
        soundfile.write(tmp_path / row["audio"], np.zeros(8000 * (n + 1), np.float32), 16000)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = {8000: "It costs 12 dollars.", 24000: "el tiempo, el tiempo", 32000: ""}  # by clip length
    monkeypatch.setattr(WhisperHearing, "heard", lambda _, audio: [Heard(said[len(a)], "en") for a in audio])
    out = tmp_path / "heard.jsonl"
    assert main(["data", "heard", str(manifest), "--by", str(folder), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["It costs twelve dollars.", "the weather"]
    err = capsys.readouterr().err
    assert "1 row(s) of tasks whose reply is the transcript (asr) left out" in err
    assert "d.wav: nothing heard" in err
    assert rows[0]["said"] == "paris" and rows[0]["answer"] == "paris" and rows[0]["prompt"] == "where?"
    assert rows[1]["source_text"] == "el tiempo, el tiempo" and rows[1]["said"] == "el tiempo"
    assert {r["heard_by"] for r in rows} == {str(folder)}
    assert len(read_text_rows(out)) == 2  # finetune --text-train takes them
    assert main(["data", "heard", str(manifest), "--by", str(folder), "--out", str(out)]) == 1
    assert "--resume" in capsys.readouterr().err
    out.write_text(out.read_text().splitlines()[0] + "\n" + '{"task": "st", "te')  # killed mid-row
    assert main(["data", "heard", str(manifest), "--by", str(folder), "--out", str(out), "--resume"]) == 0
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == [r["text"] for r in rows]
    assert "1 rows heard" in capsys.readouterr().out
    # "where?" -> "paris", heard as "It costs twelve dollars.": its answer is lost, the translation kept
    assert main(["data", "heard", str(manifest), "--by", str(folder), "--out", str(out), "--resume",
                 "--drop-lost-answers"]) == 0
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["the weather"]
    assert "0 rows heard" in capsys.readouterr().out  # nothing heard again
    assert main(["data", "heard", str(manifest), "--by", str(data[3]), "--out", str(tmp_path / "x")]) == 1
    assert "not a speech-LLM" in capsys.readouterr().err


def test_spoken_questions_as_text_answer_what_was_heard_as_a_typed_message(data, tmp_path):
    from speechllm.generation import GenerationOptions
    from speechllm.speechlm import SpeechLLMConfig, instruction
    from speechllm.speechlm.hearing import Heard

    run = whisper_hearing_run(data, tmp_path / "typed")
    model = SpeechLLM.build(replace(run.model_config(), spoken_questions="text")).eval()
    torch.manual_seed(0)  # the LoRA drawn below, whatever ran before
    with torch.no_grad():  # a LoRA that changes replies: the typed path must run without it
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    heard = {8000: "what should I cook tonight", 4000: ""}
    model.whisper.heard = lambda audio: [Heard(heard[len(a)], "en") for a in audio]
    clips = [np.zeros(8000, np.float32), np.zeros(4000, np.float32)]
    asked = instruction("spoken-question")
    history = "Earlier in this conversation:\nUser: hi\nAssistant: hello\n\n" + asked
    options = GenerationOptions(max_new_tokens=6)
    replies = model.generate(clips + clips[:1], [asked, asked, history], options)
    # what was heard, typed; nothing heard: the instruction itself; a chat's history stays in front
    typed = ["What should I cook tonight", asked,  # capitalised as typed text is
             "Earlier in this conversation:\nUser: hi\nAssistant: hello\n\nWhat should I cook tonight"]
    assert [r.text for r in replies] == [model.generate(None, t, options)[0].text for t in typed]
    assert "".join(model.stream(clips[0], history, options)) == replies[2].text
    model.config = replace(model.config, spoken_questions="lora")  # the LoRA reads the heard units
    assert [r.text for r in model.generate(clips[:1], asked, options)] != [replies[0].text]
    # other instructions with audio still go to the LoRA; a transcript is still Whisper's
    assert model.generate(clips[:1], instruction("transcribe"))[0].text == heard[8000]
    model.config = replace(model.config, spoken_questions="text")  # hearing through the adapter, the LLM
    assert model.hear_through_adapter().config.spoken_questions == "lora"  # writing transcripts: the LoRA
    with pytest.raises(ValueError, match="spoken_questions='text' needs a transcript without the LLM"):
        SpeechLLMConfig(spoken_questions="text", asr_decoder="llm")
    with pytest.raises(ValueError, match="'lora' or 'text'"):
        SpeechLLMConfig(spoken_questions="typed")


def test_skills_answer_the_questions_they_know_typed_or_spoken(data, tmp_path):
    import json

    from speechllm.generation import GenerationOptions
    from speechllm.speechlm import SpeechLLMConfig, instruction
    from speechllm.speechlm.hearing import Heard

    run = whisper_hearing_run(data, tmp_path / "skills")
    plain = SpeechLLM.build(replace(run.model_config(), spoken_questions="text")).eval()
    skilled = replace(plain.config, skills=("arithmetic", "clock"))
    model = SpeechLLM.build(skilled, encoder=plain.encoder).eval()
    model.load_state_dict(plain.state_dict())
    heard = {8000: "what is sixty nine plus thirty nine", 4000: "what should I cook tonight"}
    for m in (plain, model):
        m.whisper.heard = lambda audio: [Heard(heard[len(a)], "en") for a in audio]
    clips = [np.zeros(8000, np.float32), np.zeros(4000, np.float32)]
    asked = instruction("spoken-question")
    history = "Earlier in this conversation:\nUser: hi\nAssistant: hello\n\n" + asked
    options = GenerationOptions(max_new_tokens=6)
    spoken = model.generate(clips + clips[:1], [asked, asked, history], options)
    typed = model.generate(None, ["What is 7 x 8?", "What should I cook tonight?"], options)
    llm_reply = plain.generate(clips[1:], asked, options)[0].text
    assert [r.text for r in spoken] == ["69 plus 39 is 108.", llm_reply, "69 plus 39 is 108."]
    assert typed[0].text == "7 times 8 is 56." and typed[0].stop == "end"
    assert model.tokenizer.decode(list(typed[0].tokens)) == typed[0].text
    assert typed[1].text == plain.generate(None, "What should I cook tonight?", options)[0].text
    assert "".join(model.stream(clips[0], history, options)) == "69 plus 39 is 108."
    assert "".join(model.stream(None, "What is 7 x 8?", options)) == "7 times 8 is 56."
    assert plain.generate(None, "What is 7 x 8?", options)[0].text != "7 times 8 is 56."  # no skills: the LLM
    saved = json.loads(json.dumps(model.config.to_dict()))
    assert SpeechLLMConfig.from_dict(saved).skills == ("arithmetic", "clock")
    with pytest.raises(ValueError, match="unknown skill"):
        SpeechLLMConfig(skills=("weather",))


def test_gist_answers_a_question_about_the_whole_clip_from_its_transcript(data, tmp_path):
    from speechllm.generation import GenerationOptions
    from speechllm.speechlm import instruction
    from speechllm.speechlm.hearing import Heard

    run = whisper_hearing_run(data, tmp_path / "gist")
    plain = SpeechLLM.build(run.model_config()).eval()
    model = SpeechLLM.build(replace(plain.config, skills=("gist",)), encoder=plain.encoder).eval()
    model.load_state_dict(plain.state_dict())
    said = "Please send me the report before the meeting. It is due on Friday."
    for m in (plain, model):
        m.whisper.heard = lambda audio: [Heard(said, "en") for _ in audio]
    clip = [np.zeros(8000, np.float32)]
    options = GenerationOptions(max_new_tokens=6)
    about = [instruction("passage-question", "What is this recording about?"), "Summarize this."]
    asked = instruction("passage-question", "When is the report due?")
    replies = model.generate(clip * 3, [*about, asked], options)
    assert [r.text for r in replies[:2]] == [said, said] and replies[0].stop == "end"
    assert replies[2].text == plain.generate(clip, asked, options)[0].text  # one thing in it: the LLM
    assert "".join(model.stream(clip[0], about[0], options)) == said
    history = "Earlier in this conversation:\nUser: hi\nAssistant: hello\n\n"  # the chat's earlier turns
    assert "".join(model.stream(clip[0], history + about[0], options)) == said
    assert plain.generate(clip, about[0], options)[0].text != said  # without the skill: the LLM


def test_a_whisper_hears_a_clip_once_while_it_remembers_it(tmp_path):
    """A chat's spoken turn is heard for its answer and again for the history: one transcription, until
    the clip is among the oldest of more than ``remembered``, or the options change."""
    from tiny_models import make_tiny_whisper

    from speechllm.speechlm.hearing import WhisperHearing

    hearing = WhisperHearing(str(make_tiny_whisper(tmp_path / "w")))
    hearing.remembered = 2
    calls = []
    transcribe = hearing.asr.transcribe
    hearing.asr.transcribe = lambda clip: calls.append(len(clip)) or transcribe(clip)
    clips = [np.full(n, 0.01 * i, np.float32) for i, n in enumerate((4000, 4800, 5600), 1)]
    first = hearing.heard([clips[0], clips[0].copy()])
    assert first[0] == first[1] and calls == [4000]  # the same samples: heard once
    hearing.heard(clips[1:])  # two more: the first clip is forgotten
    hearing.heard(clips[:1])
    assert calls == [4000, 4800, 5600, 4000]
    hearing.asr.options = replace(hearing.asr.options, beam_size=2)  # other options: heard again
    hearing.heard(clips[:1])
    assert calls[-1] == 4000 and len(calls) == 5
    hearing.forget()  # nothing remembered: heard again
    hearing.heard(clips[:1])
    assert len(calls) == 6


def test_a_clip_heard_ahead_is_not_heard_again_for_its_answer(data, tmp_path):
    """``SpeechLLM.prehear`` (a hands-free turn at its first pause): the answer, typed or through the
    LoRA, and the history's transcript then hear nothing new."""
    from speechllm.generation import GenerationOptions
    from speechllm.speechlm import instruction

    run = whisper_hearing_run(data, tmp_path / "ahead")
    model = SpeechLLM.build(run.model_config()).eval()
    calls = []
    transcribe = model.whisper.asr.transcribe
    model.whisper.asr.transcribe = lambda clip: calls.append(len(clip)) or transcribe(clip)
    clip, options = np.full(6000, 0.02, np.float32), GenerationOptions(max_new_tokens=3)
    model.prehear(clip)
    assert calls == [6000]
    for spoken in ("lora", "text"):
        model.config = replace(model.config, spoken_questions=spoken)
        model.generate([clip.copy()], instruction("spoken-question"), options)
    model.generate([clip], instruction("transcribe"), options)
    assert calls == [6000]


def test_hearing_models_hear_a_task_with_another_whisper_loaded_on_first_use(tmp_path):
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.generation import GenerationOptions
    from speechllm.speechlm import SpeechLLMConfig, instruction
    from speechllm.speechlm.hearing import Heard, WhisperHearing

    multilingual = str(make_tiny_whisper(tmp_path / "multi"))
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(tmp_path / "w")),
                             llm=str(make_tiny_llm(tmp_path / "l")), adapter="ctc-posterior",
                             hearing="whisper", hearing_models={"translate": multilingual},
                             adapter_options={"n_layers": 1, "d_ffn": 32, "bottleneck": 8, "top_k": 4})
    model = SpeechLLM.build(config).eval()
    assert model._hearings == {}  # nothing loaded before a clip of its task
    model.whisper.heard = lambda audio: [Heard("own", "en") for _ in audio]
    translate, ask = instruction("translate", target="English"), instruction("spoken-question")
    other = model.hearing_for("translate")
    assert isinstance(other, WhisperHearing) and other is not model.whisper
    assert model.hearing_for("spoken-question") is model.whisper and model.hearing_for("translate") is other
    model.hear_in("en", "translate")  # --language: the Whisper that hears the task is told
    assert other.asr.options.language == "en" and model.whisper.asr.options.language == "en"
    with pytest.raises(ValueError, match="English-only"):  # both tiny Whispers are
        model.hear_in("es", "translate")
    other.heard = lambda audio: [Heard("el otro", "es") for _ in audio]
    clips = [np.zeros(4000, np.float32)] * 3
    heard = model.hear(clips, [translate, ask, translate])
    assert [h.text for h in heard] == ["el otro", "own", "el otro"]
    assert [r.text for r in model.generate(clips[:1], instruction("transcribe"))] == ["own"]
    options = GenerationOptions(max_new_tokens=4)
    replies = model.generate(clips, [translate, ask, translate], options)
    # the ceiling: the exact text, read as a perfect hearing hands it over, decodes the same way
    assert model.translate_text(["el otro"], "Spanish", "English", options) == [replies[0].text]
    with pytest.raises(ValueError, match="unknown task"):
        SpeechLLMConfig(adapter="ctc-posterior", hearing="whisper", hearing_models={"sing": "whisper-base"})
    with pytest.raises(ValueError, match="needs hearing='whisper'"):
        SpeechLLMConfig(hearing_models={"translate": "whisper-base"})


def test_translation_memory_prompts_the_second_hearing_and_gives_examples(tmp_path):
    from types import SimpleNamespace

    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.speechlm import SpeechLLMConfig, instruction
    from speechllm.speechlm.io import load_speechlm, save_speechlm
    from speechllm.speechlm.memory import TranslationMemory
    from speechllm.speechlm.tasks import parse_instruction

    TranslationMemory([("y dijo dios sea la luz", "God said, let there be light"),
                       ("el pan de cada dia", "our daily bread")]).write(tmp_path / "memory.tsv.gz")
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(tmp_path / "w")),
                             llm=str(make_tiny_llm(tmp_path / "l")), adapter="ctc-posterior",
                             hearing="whisper", memory={"English-French": "memory.tsv.gz"},
                             memory_min_score=0.5, memory_examples=1,
                             adapter_options={"n_layers": 1, "d_ffn": 32, "bottleneck": 8, "top_k": 4})
    save_speechlm(SpeechLLM.build(config).loaded_from(tmp_path), tmp_path / "model")
    assert (tmp_path / "model" / "memory.tsv.gz").read_bytes() == (tmp_path / "memory.tsv.gz").read_bytes()
    model = load_speechlm(tmp_path / "model")
    asr = model.whisper.asr
    first = {"a": "y dijo dio sea la lu", "b": "good morning"}  # clip a is near a memory sentence

    def transcribe(clip):
        said, prompt = "ab"[int(clip[0])], asr.options.initial_prompt
        text = first[said] if prompt is None else f"{said} after {prompt}"
        return SimpleNamespace(text=text, language="en")

    asr.transcribe = transcribe
    clips = [np.zeros(4000, np.float32), np.ones(4000, np.float32)]
    heard = model.whisper.heard(clips)
    assert [h.text for h in heard] == ["a after y dijo dios sea la luz", "good morning"]
    assert asr.options.initial_prompt is None  # the prompt was for the second hearing only
    # translated into French (the memory's target): the nearest pair is the example
    asked = instruction("translate", target="French")
    request = parse_instruction(model.with_examples(asked, heard[0]))
    assert request.task == "translate-by-example" and request.target == "French"
    assert request.prompt == "English: y dijo dios sea la luz\nFrench: God said, let there be light"
    assert model.with_examples(asked, heard[1]) == asked  # nothing near enough
    assert model.with_examples(instruction("translate", target="German"), heard[0]).endswith("German.")
    spliced, *_ = model._prefill_seeded(clips, [asked, asked])
    assert spliced.embeds.shape[0] == 2
    # a run resumed from a checkpoint outlives it: the rotated-out checkpoint's files are not read again
    from speechllm.train import TrainConfig, save_checkpoint

    resumed, optimizer = load_speechlm(tmp_path / "model"), torch.optim.SGD([torch.zeros(1)], lr=0.1)
    for step in (1, 2):
        save_checkpoint(resumed, optimizer, tmp_path / "run", step, TrainConfig(train="x", out="run"), keep=1)
        if step == 1:
            shutil.move(tmp_path / "model", tmp_path / "rotated-out")
    assert (tmp_path / "run" / "memory.tsv.gz").read_bytes() == (tmp_path / "memory.tsv.gz").read_bytes()
    shutil.move(tmp_path / "rotated-out", tmp_path / "model")
    (tmp_path / "model" / "memory.tsv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="translation memory for 'English-French'"):
        load_speechlm(tmp_path / "model")
    with pytest.raises(ValueError, match="memory needs hearing='whisper'"):
        SpeechLLMConfig(memory={"Spanish-English": "memory.tsv.gz"})


def test_a_recording_answered_in_pieces_gives_what_the_pieces_said():
    from speechllm.speechlm.tasks import NOT_STATED
    from speechllm.speechlm.transcriber import answer_of_pieces
    from speechllm.transcriber import Segment, Transcript

    def pieces(*texts):
        return Transcript(" ".join(texts), tuple(Segment(600.0 * i, 600.0 * (i + 1), t)
                                                 for i, t in enumerate(texts)), 600.0 * len(texts))

    assert answer_of_pieces(pieces(NOT_STATED, "Leeds", NOT_STATED)).text == "Leeds"
    assert answer_of_pieces(pieces("Leeds", "on Monday")).text == "Leeds on Monday"
    both = answer_of_pieces(pieces(NOT_STATED, "Oslo"))
    assert [s.text for s in both.segments] == [NOT_STATED, "Oslo"]  # each piece keeps its own answer
    assert answer_of_pieces(pieces(NOT_STATED)).text == NOT_STATED
