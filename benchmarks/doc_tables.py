"""The registry of benchmarks/render_tables.py: every table and figure the docs show, and where it comes from.

A table names its results file (benchmarks/results/), the rows it takes and its columns (a header, a
dotted path in the row or a function of it, a format); a figure names its file and one value. Labels
that the results files do not hold (what a run folder was) are written here, next to their rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from render_tables import Column, Figure, Table, fixed, get, labelled, millions, minutes, one, pct, text


def maybe(key: str) -> Callable[[dict], Any]:
    """A field that only some rows have (None, shown as '–', in the others)."""
    return lambda row: row.get(key)


def pair(a: str, b: str, fmt: Callable[[Any], str], sep: str = " / ") -> Callable[[dict], str]:
    """Two fields of a row in one cell: '99.7 % / 2.5 %'."""
    return lambda row: f"{fmt(get(row, a))}{sep}{fmt(get(row, b))}"


SYSTEMS = {  # benchmarks/asr.py's system names, as the tables write them
    "speechllm-whisper fp32": "Whisper tiny.en, the project's decoder",
    "faster-whisper int8": "faster-whisper (same tiny.en weights, int8)",
    "speech-LLM speechllm-starter": "speech-LLM starter, its adapter's CTC + LLM beam search",
    "speech-LLM runs/starter-conv": "+ 1,500 steps on 10 h asr + 5.3 h converted voices (`starter-conv`)",
    "speech-LLM runs/starter-conv2": "+ 1,500 more on 10 h asr + 11.6 h converted (`starter-conv2`)",
    "speech-LLM runs/starter-conv3": "+ 1,200 more on 10 h asr + 17.8 h converted (`starter-conv3`)",
}
VOICES = (Column("flite awb", "wer_by_speaker.flite:awb", pct(), True),
          Column("flite slt", "wer_by_speaker.flite:slt", pct(), True),
          Column("Piper joe", "wer_by_speaker.piper:joe", pct(), True))
ASK_MODELS = {  # benchmarks/results/ask.json was run before the starter shipped with its LoRA
    "speechllm-starter": "starter without LoRA (fp32 LLM from the GGUF)",
    "runs/cand-int4": "starter: LoRA from text, int4 LLM (the first LoRA: answer rows only)",
    "runs/cand-fp32": "same LoRA, fp32 LLM",
}
HEARING_ASK = {  # benchmarks/results/ask-hearing.json: the shipped starter, its LoRA on spoken questions,
    # and its adapter's hearing
    "speechllm-starter": "**starter (shipped): hears through Whisper tiny.en's decoder; spoken questions "
                         "typed to the LLM without its LoRA, sums and the time answered by its skills**",
    "runs/starter-no-skills": "same, `\"skills\": []`: every spoken question goes to the LLM",
    "runs/starter-spoken-lora": "same, `\"spoken_questions\": \"lora\"`: the LoRA answers spoken questions",
    "runs/starter-ctc": "same weights, `\"hearing\": \"adapter\"`: the LLM reads its CTC units "
                        "(spoken questions: the CTC transcript, typed)",
}
GROUNDED_ASK = {  # benchmarks/results/ask-grounded.json: the LoRA before the passages rows, with them, heard;
    # each with answers quoted (what `ask` does) and free (`ask --free-answer`)
    "runs/starter-before-passages": "starter before (LoRA taught answerable questions only), quoted",
    "runs/starter-before-passages (free answers)": "same, free",
    "runs/starter-run5": "+ 600 steps with the `passages` text rows, quoted",
    "runs/starter-run5 (free answers)": "same, free",
    "runs/starter-run6": "+ 400 steps with passages as its Whisper hears them, quoted",
    "runs/starter-run6 (free answers)": "same, free",
    "speechllm-starter": "**starter (shipped): + 400 steps with passages of five to nine facts, quoted**",
    "speechllm-starter (free answers)": "same, free",
}
LONG_ASK = {  # benchmarks/results/ask-long.json: the LoRA before and after the long passages' rows
    "runs/starter-run6": "starter before (passages of one to three facts), quoted",
    "runs/starter-run6 (free answers)": "same, free",
    "speechllm-starter": "**starter (shipped): + 400 steps with passages of five to nine facts, quoted**",
    "speechllm-starter (free answers)": "same, free",
}
STARTER_SYSTEMS = {  # benchmarks/results/asr-starter.json
    "speechllm-whisper fp32": "Whisper tiny.en, the project's decoder",
    "faster-whisper int8": "faster-whisper (same tiny.en weights, int8)",
    "speech-LLM speechllm-starter":
        "**speech-LLM starter (shipped), hears through Whisper tiny.en's decoder**",
    "speech-LLM runs/starter-ctc": "same starter, `\"hearing\": \"adapter\"`: CTC + LLM beam search",
}
TTS_VOICES = {  # benchmarks/results/tts.json: the shipped own voice beside its teacher
    "speechllm-joe": "**speechllm-joe (shipped): phonemes → acoustic model → vocoder**",
    "piper-joe": "Piper joe (onnxruntime), the teacher",
}
TTS_LM_FLOW_VOICES = {  # benchmarks/results/tts-lm-flow.json: the LM + flow route, not intelligible yet
    "runs/tts/voice-3-9": "LM + flow, text:speech 3:9, LM 260 steps",
    "runs/tts/voice-3-9-at80": "LM + flow, 3:9, LM 80 steps",
    "runs/tts/voice-2-10": "LM + flow, 2:10, LM 80 steps",
    "piper-joe": "Piper joe (onnxruntime)",
}


def _tts_voices(results: str, labels: dict[str, str]) -> Table:
    """A benchmarks/tts.py results file: one row per voice."""
    return Table(results, (
        Column("voice", labelled(labels, "voice")),
        Column("WER faster-whisper", "wer stream faster-whisper", pct(), True),
        Column("WER Whisper (ours)", "wer stream whisper", pct(), True),
        Column("first chunk median / p90",
               lambda r: f"{r['first_chunk_ms_median']} / {r['first_chunk_ms_p90']} ms", numeric=True),
        Column("RTF streaming", "rtf_stream", fixed(3), True),
        Column("RTF whole", "rtf_whole", fixed(3), True)),
        rows=lambda d: d["voices"])


def _ask_table(results: str, labels: dict[str, str], by_kind: bool = False) -> Table:
    """A benchmarks/ask.py results file: one row per model (``by_kind``: spoken sums and quiz questions
    apart, which files from before ask.py scored them so do not have)."""
    kinds = (Column("spoken: sums / quiz accuracy", pair("spoken.by_kind.arithmetic", "spoken.by_kind.quiz",
                                                         pct(1)), numeric=True),) if by_kind else ()
    return Table(results, (
        Column("model", labelled(labels, "model")),
        Column("passage question: accuracy", "passage.accuracy", pct(1), True),
        Column("spoken question: answered / accuracy", pair("spoken.answered", "spoken.accuracy", pct(1)),
               numeric=True),
        *kinds,
        Column("load", "load_s", fixed(1, " s"), True),
        Column("all answers", "answer_s", fixed(0, " s"), True)),
        rows=lambda d: d["results"])


def _passage_table(results: str, labels: dict[str, str]) -> Table:
    """A benchmarks/ask.py results file of passage questions some of which the passage does not answer."""
    return Table(results, (
        Column("model", labelled(labels, "model")),
        Column("answerable: right", "passage.by_kind.answered", pct(1), True),
        Column("answerable: says not stated", "passage.not_stated_by_kind.answered", pct(1), True),
        Column("not answerable: says not stated", "passage.by_kind.unanswered", pct(1), True),
        Column("all answers", "answer_s", fixed(0, " s"), True)),
        rows=lambda d: d["results"])


def _encoder_rows(data: dict) -> list[dict]:
    names = {"whisper-tiny.en": "Whisper tiny.en", "whisper-base": "Whisper base"}
    return [{"encoder": label, "step500": data["step500"][key], **data["step1000"][key]}
            for key, label in names.items()]


def _greedy_beam_rows(runs: list[list[dict]]) -> list[dict]:
    """One row per model from benchmarks/asr.py runs of its greedy and beam copies."""
    labels = {"runs/base-conv": "Whisper base, 3,500 steps on 20.3 h (`runs/base-conv`)",
              "runs/base-conv2": "Whisper base, 6,500 steps (`runs/base-conv2`)"}
    rows = []
    for run_ in runs:
        by_decoding = {r["system"].rsplit("-", 1)[-1]: r for r in run_}  # ".../base-conv-greedy"
        greedy, beam = by_decoding["greedy"], by_decoding["beam"]
        name = beam["system"].removeprefix("speech-LLM ").removesuffix("-beam")
        rows.append({"model": labels[name], "greedy": greedy, "beam": beam})
    return rows


TABLES: dict[str, Table] = {
    "adapters": Table("adapters.json", (
        Column("system", lambda r: f"`{r['adapter']}`" if "adapter" in r else SYSTEMS[r["system"]]),
        Column("test WER", "wer", pct(), True),
        Column("RTF", "rtf", fixed(3), True),
        Column("trainable params", maybe("params"), millions, True),
        Column("train wall (2 cores)", maybe("train_wall_s"), minutes, True),
        Column("LLM loss at the end", maybe("lm_loss_end"), fixed(2), True),
        Column("dev WER (30 rows)", maybe("eval_wer"), pct(), True))),
    "ask": _ask_table("ask.json", ASK_MODELS),
    "ask-hearing": _ask_table("ask-hearing.json", HEARING_ASK, by_kind=True),
    "ask-grounded": _passage_table("ask-grounded.json", GROUNDED_ASK),
    "ask-long": _passage_table("ask-long.json", LONG_ASK),
    "asr-starter": Table("asr-starter.json", (
        Column("system", labelled(STARTER_SYSTEMS, "system")),
        Column("test WER", "wer", pct(), True), *VOICES,
        Column("RTF", "rtf", fixed(3), True))),
    "asr-voices-60": Table("asr-converted-voices.json", (
        Column("system", labelled(SYSTEMS, "system")),
        Column("test WER", "wer", pct(), True), *VOICES,
        Column("RTF", "rtf", fixed(3), True))),
    "asr-voices-308": Table("asr-converted-voices-308.json", (
        Column("model", labelled(SYSTEMS, "system")),
        Column("test WER", "wer", pct(), True), *VOICES)),
    "encoder-base-vs-tiny": Table("encoder-base-vs-tiny.json", (
        Column("encoder", "encoder"),
        Column("test WER, step 500", "step500", pct(), True),
        Column("test WER, step 1000", "wer", pct(), True),
        Column("flite awb", "flite:awb", pct(), True),
        Column("flite slt", "flite:slt", pct(), True),
        Column("Piper joe", "piper:joe", pct(), True),
        Column("dev WER (60 rows), step 1000", "dev_wer_60", pct(), True)),
        rows=_encoder_rows),
    "encoder-base-steps": Table(("encoder-base-3500-steps.json", "encoder-base-6500-steps.json"), (
        Column("model", "model"),
        Column("greedy WER", "greedy.wer", pct(), True),
        Column("beam WER", "beam.wer", pct(), True),
        Column("flite awb (beam)", "beam.wer_by_speaker.flite:awb", pct(), True),
        Column("flite slt (beam)", "beam.wer_by_speaker.flite:slt", pct(), True),
        Column("Piper joe (beam)", "beam.wer_by_speaker.piper:joe", pct(), True),
        Column("RTF greedy / beam", pair("greedy.rtf", "beam.rtf", fixed(3)), numeric=True)),
        rows=_greedy_beam_rows),
    "tts-voices": _tts_voices("tts.json", TTS_VOICES),
    "tts-stages": Table("tts.json", (
        Column("audio (held-out sentences, the teacher's test split)", "input"),
        Column("WER faster-whisper", "wer faster-whisper", pct(), True),
        Column("WER Whisper (ours)", "wer whisper", pct(), True),
        Column("normalised-mel L1", maybe("mel l1"), fixed(3), True),
        Column("its audio's normalised-mel L1", maybe("audio mel l1"), fixed(3), True)),
        rows=lambda d: [s for s in d["stages"] if s["voice"] == d["voices"][0]["voice"]]),
    "tts-lm-flow-voices": _tts_voices("tts-lm-flow.json", TTS_LM_FLOW_VOICES),
    "tts-lm-flow-stages": Table("tts-lm-flow.json", (
        Column("audio (10 held-out Piper joe sentences)", "input"),
        Column("WER faster-whisper", "wer faster-whisper", pct(), True),
        Column("WER Whisper (ours)", "wer whisper", pct(), True)),
        rows=lambda d: d["stages"]),
}


def _split(name: str) -> Callable[[dict], str]:
    return lambda b: "{hours:.2f} h / {utterances} / {speakers}".format(**b["splits"][name])


TABLES["corpora"] = Table("corpora.json", (
    Column("corpus", lambda b: f"`corpora/{b['folder']}`"),
    Column("recipe", lambda b: f"`{b['recipe']}`"),
    Column("asked", "hours_requested", fixed(0, " h"), True),
    Column("train: hours / utterances / speakers", _split("train"), numeric=True),
    Column("dev", _split("dev"), numeric=True),
    Column("test", _split("test"), numeric=True),
    Column("wall time (jobs)", lambda b: f"{b['build']['wall_seconds']:.0f} s ({b['build']['jobs']})",
           numeric=True),
    Column("audio h per wall h", "build.audio_hours_per_wall_hour", fixed(0), True)),
    rows=lambda d: [{"folder": k, **v} for k, v in d.items()])

TABLES["instruction-following"] = Table("instruction-following.json", (
    Column("placement", "placement"),
    Column("rows", "rows", numeric=True),
    Column("BLEU es→en", "bleu", fixed(2), True),
    Column("answered (not a copy)", "ifr/translate", pct(1), True)),
    rows=lambda d: [{"placement": k, **v} for k, v in d.items()])



def _serve_rows(d: dict) -> list[dict]:
    """benchmarks/serve.py: the model alone, the server at each concurrency, the server unbatched."""
    rows = [{"run": "the model alone (no HTTP), one clip at a time", **d["direct"]}]
    rows += [{"run": f"`speechllm serve --batch-size {d['batch_size']}`", **r} for r in d["server"]]
    if "server_batch1" in d:
        rows.append({"run": "`speechllm serve --batch-size 1`", **d["server_batch1"]})
    return rows


TABLES["serve"] = Table("serve.json", (
    Column("run", "run"),
    Column("clients", "clients", numeric=True),
    Column("requests", "requests", numeric=True),
    Column("requests/s", "requests_per_s", fixed(3), True),
    Column("p50 latency", "p50_s", fixed(1, " s"), True),
    Column("p90 latency", "p90_s", fixed(1, " s"), True),
    Column("WER", "wer", pct(1), True)),
    rows=_serve_rows)

SPOKEN_TURNS = {"typed": "typed (the same prompts)",
                "text": "**spoken, `\"spoken_questions\": \"text\"` (shipped)**",
                "lora": "spoken, `\"spoken_questions\": \"lora\"`"}
TABLES["spoken-turns"] = Table("spoken-turns.json", (
    Column("chat turn", labelled(SPOKEN_TURNS, "setting")),
    Column("words a reply", "mean_words", fixed(1), True),
    Column("equal to the typed reply", maybe("equal_to_typed"), numeric=True),
    Column("seconds a turn", "mean_turn_s", fixed(2, " s"), True)),
    rows=lambda d: [{"setting": "typed", **d["typed"]},
                    *({"setting": k, **v} for k, v in d["spoken"].items())])

TABLES["passage-copy-share"] = Table("passage-copy-share.json", (
    Column("answers copying", lambda r: r["label"]),
    Column("answers", "answers", numeric=True),
    Column("tokens", "tokens", numeric=True),
    Column("whole call", "whole_call_speedup", fixed(2, "x"), True),
    Column("after the first token", "after_first_token_speedup", fixed(2, "x"), True)),
    rows=lambda d: [*({"label": f"{100 * b['copied_share'][0]:.0f} to {100 * b['copied_share'][1]:.0f} % of "
                                "their tokens",
                       **b} for b in d["buckets"]),
                    {"label": "**all**", "answers": d["answers"],
                     "tokens": sum(b["tokens"] for b in d["buckets"]), **d["all"]}])

FINETUNE_COLUMNS = (
    Column("model", "model"),
    Column("held-out utterances", "rows", numeric=True),
    Column("WER", "wer", pct(1), True),
    Column("CER", "cer", pct(1), True))
TABLES["finetune-slt"] = Table("finetune-slt.json", FINETUNE_COLUMNS, rows=lambda d: [
    {"model": "the starter, hearing through Whisper tiny.en (before)", **d["before"]},
    {"model": f"its Whisper decoder tuned to the voice, {d['steps']} steps (after)", **d["after"]}])
TABLES["finetune-slt-whisper"] = Table("finetune-slt-whisper.json", FINETUNE_COLUMNS, rows=lambda d: [
    {"model": "Whisper tiny.en, as `speechllm transcribe` runs it (before)", **d["before"]},
    {"model": f"its decoder tuned to the voice, {d['steps']} steps (after)", **d["after"]}])
TABLES["finetune-es-whisper"] = Table("finetune-es-whisper.json", (
    *FINETUNE_COLUMNS,
    Column("WER, temperature fallback", "wer_fallback", pct(1), True),
    Column("CER, temperature fallback", "cer_fallback", pct(1), True)), rows=lambda d: [
    {"model": "Whisper base (before)", **d["before"]},
    {"model": f"its decoder tuned to the voice, {d['steps']} steps (after)", **d["after"]}])
TABLES["finetune-slt-adapter"] = Table("finetune-slt-adapter.json", FINETUNE_COLUMNS, rows=lambda d: [
    {"model": "the starter, hearing through its adapter (before)", **d["before"]},
    {"model": f"its adapter tuned to the voice, {d['steps']} steps (after)", **d["after"]}])

# the encoder speechllm.audio.write_audio uses for each container
ENCODERS = {"m4a": "aac", "mp4": "aac", "webm": "libopus", "opus": "libopus", "mp3": "LAME (libsndfile)"}
TABLES["audio-formats"] = Table("audio-formats.json", (
    Column("file", lambda r: "opus (Ogg)" if r["format"] == "opus" else r["format"]),
    Column("encoder", labelled(ENCODERS, "format")),
    Column("read by", "decoder"),
    Column("delay (samples)", "delay_samples", numeric=True),
    Column("SNR after the delay", "snr_db", fixed(1, " dB"), True)),
    rows=lambda d: [r for r in d["rows"] if r["clip"] == "meeting_slt"])


def _span(values: list[float]) -> tuple[float, float]:
    return min(values), max(values)


SHIPPED_ASK, NO_SKILLS = "speechllm-starter", "runs/starter-no-skills"  # rows of ask-hearing.json
SHIPPED_FREE = "speechllm-starter (free answers)"  # ask --free-answer: in ask-grounded.json, ask-long.json


def _ask(model: str, path: str) -> Callable[[dict], Any]:
    return lambda d: get(one(d["results"], model=model), path)


def _asr(system: str, path: str) -> Callable[[list], Any]:
    return lambda rows: get(one(rows, system=system), path)


STARTER_ASK, BEFORE_ASK = "runs/cand-int4", "speechllm-starter"  # see ASK_MODELS
SHIPPED, ADAPTER_HEARING = "speech-LLM speechllm-starter", "speech-LLM runs/starter-ctc"  # asr-starter.json


def _adaptation(file: str, phase: str, metric: str = "wer") -> Figure:
    """An error rate of a fine-tuning report (``speechllm finetune``'s adaptation.json), before or after."""
    return Figure(file, lambda d: d[phase][metric], pct(1))


FIGURES: dict[str, Figure] = {
    "serve-load": Figure("serve.json", lambda d: f"{d['load_average_at_start']:.0f} at the start and "
                                                 f"{d['load_average_at_end']:.0f} at the end"),
    "passage-copy-share-mean": Figure("passage-copy-share.json", lambda d: d["all"]["mean_copied_share"],
                                      pct(0)),
    "handsfree-ttft-end": Figure("handsfree-ttft.json", lambda d: d["heard at the end"]["median_s"],
                                 fixed(2, " s")),
    "handsfree-ttft-ahead": Figure("handsfree-ttft.json", lambda d: d["heard ahead"]["median_s"],
                                   fixed(2, " s")),
    "handsfree-ttft-ahead-p90": Figure("handsfree-ttft.json", lambda d: d["heard ahead"]["p90_s"],
                                       fixed(2, " s")),
    "ask-passage": Figure("ask-hearing.json", _ask("speechllm-starter", "passage.accuracy"), pct(1)),
    "ask-grounded-right": Figure("ask-grounded.json", _ask(SHIPPED_ASK, "passage.by_kind.answered"), pct(1)),
    "ask-grounded-not-stated": Figure("ask-grounded.json", _ask(SHIPPED_ASK, "passage.by_kind.unanswered"),
                                      pct(1)),
    "ask-grounded-right-free": Figure("ask-grounded.json", _ask(SHIPPED_FREE, "passage.by_kind.answered"),
                                      pct(1)),
    "ask-grounded-not-stated-free": Figure("ask-grounded.json",
                                           _ask(SHIPPED_FREE, "passage.by_kind.unanswered"), pct(1)),
    "ask-grounded-rows": Figure("ask-grounded.json", lambda d: d["counts"]["passage"]),
    "ask-long-right": Figure("ask-long.json", _ask(SHIPPED_ASK, "passage.by_kind.answered"), pct(1)),
    "ask-long-not-stated": Figure("ask-long.json", _ask(SHIPPED_ASK, "passage.by_kind.unanswered"), pct(1)),
    "ask-long-right-free": Figure("ask-long.json", _ask(SHIPPED_FREE, "passage.by_kind.answered"), pct(1)),
    "ask-long-not-stated-free": Figure("ask-long.json", _ask(SHIPPED_FREE, "passage.by_kind.unanswered"),
                                       pct(1)),
    "ask-long-rows": Figure("ask-long.json", lambda d: d["counts"]["passage"]),
    "ask-passage-lora": Figure("ask.json", _ask(STARTER_ASK, "passage.accuracy"), pct(1)),
    "ask-spoken-accuracy": Figure("ask-hearing.json", _ask("speechllm-starter", "spoken.accuracy"), pct(1)),
    "ask-spoken-sums": Figure("ask-hearing.json", _ask(SHIPPED_ASK, "spoken.by_kind.arithmetic"), pct(1)),
    "ask-spoken-sums-llm": Figure("ask-hearing.json", _ask(NO_SKILLS, "spoken.by_kind.arithmetic"), pct(1)),
    "ask-spoken-quiz": Figure("ask-hearing.json", _ask(SHIPPED_ASK, "spoken.by_kind.quiz"), pct(1)),
    "ask-sums": Figure("ask-hearing.json", lambda d: d["counts"]["spoken_by_kind"]["arithmetic"]),
    "ask-quiz": Figure("ask-hearing.json", lambda d: d["counts"]["spoken_by_kind"]["quiz"]),
    "ask-spoken": Figure("ask-hearing.json", lambda d: d["counts"]["spoken"]),
    "ask-passage-before": Figure("ask.json", _ask(BEFORE_ASK, "passage.accuracy"), pct(1)),
    "ask-passages": Figure("ask-hearing.json", lambda d: d["counts"]["passage"]),
    "asr-whisper-wer": Figure("asr-starter.json", _asr("speechllm-whisper fp32", "wer"), pct()),
    "asr-whisper-rtf": Figure("asr-starter.json", _asr("speechllm-whisper fp32", "rtf"), fixed(3)),
    "asr-files": Figure("asr-starter.json", lambda rows: rows[0]["files"]),
    "asr-starter-wer": Figure("asr-starter.json", _asr(SHIPPED, "wer"), pct()),
    "asr-starter-rtf": Figure("asr-starter.json", _asr(SHIPPED, "rtf"), fixed(3)),
    "asr-adapter-wer": Figure("asr-starter.json", _asr(ADAPTER_HEARING, "wer"), pct()),
    "asr-adapter-vs-whisper": Figure("asr-starter.json", lambda rows: (
        _asr(ADAPTER_HEARING, "wer")(rows) / _asr("speechllm-whisper fp32", "wer")(rows)), fixed(2, "x")),
    "asr-starter-wer-308": Figure("asr-converted-voices-308.json",
                                  _asr("speech-LLM speechllm-starter", "wer"), pct()),
    "asr-conv3-wer-308": Figure("asr-converted-voices-308.json",
                                _asr("speech-LLM runs/starter-conv3", "wer"), pct()),
    "encoder-base-gain": Figure("encoder-base-vs-tiny.json", lambda d: 100 * (
        d["step1000"]["whisper-tiny.en"]["wer"] - d["step1000"]["whisper-base"]["wer"]), fixed(1)),
    "tts-piper-wer": Figure("tts.json", lambda d: one(d["voices"], voice="piper-joe")[
        "wer stream faster-whisper"], pct()),
    "tts-own-wer": Figure("tts.json", lambda d: one(d["voices"], voice="speechllm-joe")[
        "wer stream faster-whisper"], pct()),
    "tts-sentences": Figure("tts.json", lambda d: one(d["voices"], voice="speechllm-joe")["sentences"]),
    "tts-own-first-chunk": Figure("tts.json", lambda d: one(d["voices"], voice="speechllm-joe")[
        "first_chunk_ms_median"], fixed(0, " ms")),
    "tts-own-rtf": Figure("tts.json", lambda d: one(d["voices"], voice="speechllm-joe")["rtf_stream"],
                          fixed(3)),
    "finetune-before": _adaptation("finetune-slt.json", "before"),
    "finetune-after": _adaptation("finetune-slt.json", "after"),
    "finetune-cer-before": _adaptation("finetune-slt.json", "before", "cer"),
    "finetune-cer-after": _adaptation("finetune-slt.json", "after", "cer"),
    "finetune-rows": Figure("finetune-slt.json", lambda d: d["eval_rows"]),
    "finetune-steps": Figure("finetune-slt.json", lambda d: d["steps"]),
    "finetune-minutes": Figure("finetune-slt.json", lambda d: d["train_seconds"] / 60, fixed(1)),
    "finetune-whisper-before": _adaptation("finetune-slt-whisper.json", "before"),
    "finetune-whisper-after": _adaptation("finetune-slt-whisper.json", "after"),
    "finetune-whisper-after-fallback": _adaptation("finetune-slt-whisper.json", "after", "wer_fallback"),
    "finetune-es-before": _adaptation("finetune-es-whisper.json", "before"),
    "finetune-es-after": _adaptation("finetune-es-whisper.json", "after"),
    "finetune-es-before-fallback": _adaptation("finetune-es-whisper.json", "before", "wer_fallback"),
    "finetune-es-after-fallback": _adaptation("finetune-es-whisper.json", "after", "wer_fallback"),
    "finetune-adapter-before": _adaptation("finetune-slt-adapter.json", "before"),
    "finetune-adapter-after": _adaptation("finetune-slt-adapter.json", "after"),
    "audio-formats-same": Figure("audio-formats.json", lambda d: f"{d['same']} of the {d['files']}"),
    "serve-16-requests": Figure("serve.json", lambda d: one(d["server"], clients=16)["requests"]),
    "serve-16-wer": Figure("serve.json", lambda d: one(d["server"], clients=16)["wer"], pct(1)),
    "chat-onset-median": Figure("chat-turns.json", lambda d: d["median"]["onset_known_after_ms"], fixed(0)),
    "chat-onset-range": Figure("chat-turns.json", lambda d: "{}-{}".format(
        *_span([c["onset_known_after_ms"] for c in d["clips"]]))),
    "chat-end-median": Figure("chat-turns.json", lambda d: d["median"]["turn_closed_after_ms"], fixed(0)),
    "chat-end-range": Figure("chat-turns.json", lambda d: "{}-{}".format(
        *_span([c["turn_closed_after_ms"] for c in d["clips"]]))),
    "chat-vad-cpu": Figure("chat-turns.json", lambda d: d["median"]["cpu_per_audio_second"], fixed(2)),
    "browser-runs": Figure("chat-browser.json", lambda d: f"{d['measured']} of {d['runs']}"),
    "browser-audio-median": Figure("chat-browser.json", lambda d: d["end_of_speech_to_audio_ms"]["median"],
                                   fixed(0)),
    "browser-audio-p90": Figure("chat-browser.json", lambda d: d["end_of_speech_to_audio_ms"]["p90"],
                                fixed(0)),
    "browser-barge-median": Figure("chat-browser.json", lambda d: d["barge_in_ms"]["median"], fixed(0)),
    "browser-barge-max": Figure("chat-browser.json", lambda d: d["barge_in_ms"]["max"], fixed(0)),
    "corpus-st-rate": Figure("corpora.json", lambda d: d["st-3h"]["build"]["audio_hours_per_wall_hour"],
                             fixed(0)),
    "corpus-sqa-rate": Figure("corpora.json", lambda d: d["sqa-12h"]["build"]["audio_hours_per_wall_hour"],
                              fixed(0)),
}

TRANSLATE_MODELS = {  # benchmarks/translate.py's model names
    "speechllm-starter": "**`speechllm-starter`** (default: Whisper base hears, SmolLM2 + the LoRA learned "
                         "from text translates, near verses with 2 memory pairs as examples)",
    "runs/starter-heard-twice": "the same starter, near verses heard again with the nearest verse as "
                                "Whisper's prompt (`\"memory_hearing\": true`)",
    "speechllm-translate": "`speechllm-translate` (Whisper base hears, Gemma 3 270M translates few-shot with "
                           "a translation memory)",
    "whisper-base": "Whisper base, its own `--task translate`",
}
TABLES["translate"] = Table("translate.json", (
    Column("model", labelled(TRANSLATE_MODELS, "model")),
    Column("everyday sentences: BLEU", "everyday.bleu", fixed(1), True),
    Column("Bible verses: BLEU", "bible.bleu", fixed(1), True),
    Column("same text through its LLM (ceiling)",
           lambda r: (f"{r['everyday']['ceiling_from_text']:.1f} / {r['bible']['ceiling_from_text']:.1f}"
                      if "ceiling_from_text" in r["everyday"] else None)),
    Column("replies that ended by themselves",
           lambda r: f"{r['stops'].get('end', 0)} of {sum(r['stops'].values())}" if "stops" in r else "–"),
    Column("seconds per clip", "seconds_per_clip", fixed(2), True)),
    rows=lambda d: d["results"])
for _name, _path, _format in (("everyday-bleu", "everyday.bleu", fixed(1)),
                              ("bible-bleu", "bible.bleu", fixed(1)),
                              ("everyday-clips", "everyday.clips", text),
                              ("bible-clips", "bible.clips", text),
                              ("everyday-ceiling", "everyday.ceiling_from_text", fixed(1)),
                              ("bible-ceiling", "bible.ceiling_from_text", fixed(1))):
    FIGURES[f"translate-{_name}"] = Figure("translate.json", _ask("speechllm-starter", _path), _format)
FIGURES["translate-heard-twice-bible-bleu"] = Figure(
    "translate.json", _ask("runs/starter-heard-twice", "bible.bleu"), fixed(1))
FIGURES["translate-cascade-bible-bleu"] = Figure("translate.json", _ask("speechllm-translate", "bible.bleu"),
                                                 fixed(1))

# ---- a cold `speechllm ask`: benchmarks/cold_start.py -------------------------------------------

COLD_MODELS = {"speechllm-starter": "`speechllm-starter` (default of `ask`)",
               "speechllm-translate": "`speechllm-translate`"}
TABLES["cold-start"] = Table("cold-start.json", (
    Column("model", labelled(COLD_MODELS, "model")),
    Column("`speechllm ask FILE QUESTION`, wall", "wall_s", fixed(1, " s"), True),
    Column("import torch + transformers", "import_s", fixed(1, " s"), True),
    Column("load", "load_s", fixed(1, " s"), True),
    Column("answer", "answer_s", fixed(1, " s"), True)),
    rows=lambda d: d["results"])
FIGURES["cold-ask-wall"] = Figure("cold-start.json", lambda d: d["results"][0]["wall_s"], fixed(1, " s"))
FIGURES["cold-ask-load"] = Figure("cold-start.json", lambda d: d["results"][0]["load_s"], fixed(1, " s"))

# ---- docs/decoding.md: benchmarks/decode.py, decode_e2e.py, decode_profile.py -------------------

DECODERS = {"hf": "transformers generate", "engine": "speechllm engine",
            "speculative": "speechllm engine + SAM drafts",
            "llama.cpp": "llama.cpp (llama-cpp-cffi)"}  # benchmarks/decode.py's LABELS


def _decode_rows(d: dict, model: str = "smollm2") -> list[dict]:
    """decode.json's rows of ``model``, each with its speed against transformers' fp32 ``generate`` in the
    same run."""
    rows = [r for r in d["rows"] if r["model"] == model]
    base = one(rows, weights="fp32", decoder="hf")["tokens_per_s"]
    return [{**r, "vs_hf_fp32": r["tokens_per_s"] / base} for r in rows]


HEAD_OPS = ("quantized::linear_dynamic", "speechllm::int8_rows", "aten::_weight_int8pack_mm")
INT4_OPS = ("speechllm::int4_rows", "aten::_weight_int4pack_mm_for_cpu")


def _loads(values: list[float]) -> str:
    """A load average triple (1, 5, 15 min) as written by os.getloadavg()."""
    return " / ".join(f"{v:.0f}" for v in values)


def _chat_e2e(key: str) -> Callable[[dict], float]:
    return lambda d: d["chat"][key]


DECODE_COLUMNS = (
    Column("weights", "weights"),
    Column("decoder", labelled(DECODERS, "decoder")),
    Column("tokens/s", "tokens_per_s", fixed(1), True),
    Column("vs transformers fp32", "vs_hf_fp32", fixed(2, "x"), True),
    Column("weight GB/s (copy GB/s)", lambda r: f"{r['weight_gb_s']:.1f} ({r['copy_gb_s']:.1f})",
           numeric=True))
TABLES["decode"] = Table("decode.json", DECODE_COLUMNS, rows=_decode_rows)
TABLES["decode-1b"] = Table("decode.json", (*DECODE_COLUMNS, Column(
    "weight MB", "weight_mb", fixed(0), True)), rows=lambda d: _decode_rows(d, "llama-1b"))
HEAD_ABLATION = ("decode_speedup", "decode_speedup_no_draft_head")  # after the first token, with / without
LORA_SETTINGS = {"off": "LoRA off", "torch": "LoRA on, deltas in torch", "native": "LoRA on, deltas native"}
COMPILE_BUILDS = {"native": "native kernels (as shipped)", "torch": "torch ops only (SPEECHLLM_NATIVE=0)"}
TABLES["decode-e2e"] = Table("decode_e2e.json", (
    Column("workload", "workload"),
    Column("greedy tok/s", "greedy_tokens_per_s", fixed(1), True),
    Column("speculative tok/s", "speculative_tokens_per_s", fixed(1), True),
    Column("speedup", "speedup", fixed(2, "x"), True),
    Column("speedup after the first token",
           lambda r: f"{r['decode_speedup']:.2f}x" if r.get("decode_speedup") else "–", numeric=True),
    Column("(without the draft head)", lambda r: f"{r['decode_speedup_no_draft_head']:.2f}x"
           if r.get("decode_speedup_no_draft_head") else "–", numeric=True),
    Column("acceptance", "acceptance", pct(0), True),
    Column("tokens / pass", "tokens_per_pass", fixed(2), True),
    Column("identical replies", lambda r: f"{r['identical']}/{r['replies']}", numeric=True)),
    rows=lambda d: d["rows"])
def _draft_bound_rows(d: dict) -> list[dict]:
    """One row per workload: the bound with prompt drafts and with the phrase book, side by side."""
    by = {}
    for r in d["rows"]:
        row = by.setdefault(r["workload"], {"workload": r["workload"], "replies": r["replies"]})
        row[r["phrase_book"]] = r
    return list(by.values())


TABLES["draft-bound"] = Table("draft-passes.json", (
    Column("workload", "workload"),
    Column("replies", "replies", numeric=True),
    Column("bound, prompt drafts", "without.speedup_bound", fixed(2, "x"), True),
    Column("bound, with the phrase book", "with.speedup_bound", fixed(2, "x"), True)),
    rows=_draft_bound_rows)


TABLES["decode-profile"] = Table("decode-profile.json", (
    Column("op", lambda r: f"`{r['op']}`"),
    Column("calls (16 tokens)", "calls", numeric=True),
    Column("share of self CPU time", "self_cpu_share", pct(1), True)),
    rows=lambda d: d["decode"]["ops"])
TABLES["decode-verify"] = Table("decode-profile.json", (
    Column("tokens in the pass", "tokens", numeric=True),
    Column("draft missed at once (first row scored)", "first_row_only", fixed(2), True),
    Column("draft accepted whole (every row scored)", "all_rows", fixed(2), True)),
    rows=lambda d: d["verify"]["passes"])
FIGURES.update({
    "decode-verify-step-ms": Figure("decode-profile.json", lambda d: d["verify"]["step_ms"], fixed(1, " ms")),
    "decode-load": Figure("decode.json", lambda d: _loads(d["load_average"])),
    "decode-int4-engine-vs-hf": Figure("decode.json", lambda d: one(
        _decode_rows(d), weights="int4", decoder="engine")["vs_hf_fp32"], fixed(2, "x")),
    **{f"int4-kernel-{name}-m{m}": Figure("quant-kernels.json", lambda d, key=key, m=m: one(
        d["rows"], weight="gate/up 1536x576", m=m)[key] * 1e3, fixed(0, " us"))
       for name, key in (("int4pack", "int4-g32 int4pack-cpu"), ("int4-rows", "int4-g32 int4-rows"))
       for m in (1, 8, 37)},
    "decode-1b-int4-engine-vs-hf": Figure("decode.json", lambda d: one(
        _decode_rows(d, "llama-1b"), weights="int4", decoder="engine")["vs_hf_fp32"], fixed(2, "x")),
    "decode-1b-int4-weight-share": Figure("decode.json", lambda d: one(
        _decode_rows(d, "llama-1b"), weights="int4", decoder="engine")["weight_mb"] / one(
        _decode_rows(d, "llama-1b"), weights="fp32", decoder="hf")["weight_mb"], pct(0)),
    "decode-e2e-load-before": Figure("decode_e2e.json", lambda d: _loads(d["meta"]["load_average_before"])),
    "decode-e2e-load-after": Figure("decode_e2e.json", lambda d: _loads(d["meta"]["load_average_after"])),
    "decode-e2e-chat-product": Figure("decode_e2e.json", _chat_e2e("product_speculative_tokens_per_s"),
                                      fixed(1)),
    "decode-e2e-chat-hf": Figure("decode_e2e.json", _chat_e2e("transformers_fp32_tokens_per_s"), fixed(1)),
    "decode-e2e-chat-json-ratio": Figure("decode_e2e.json", _chat_e2e("vs_transformers_fp32"), fixed(2, "x")),
    "decode-e2e-chat-llama-cpp": Figure("decode_e2e.json", _chat_e2e("llama_cpp_tokens_per_s"), fixed(1)),
    "decode-e2e-chat-vs-llama-cpp": Figure("decode_e2e.json", _chat_e2e("vs_llama_cpp"), pct(0)),
    "decode-e2e-ttft-median": Figure("decode_e2e.json", lambda d: d["ttft_s"]["median"], fixed(2, " s")),
    "decode-e2e-ttft-p90": Figure("decode_e2e.json", lambda d: d["ttft_s"]["p90"], fixed(2, " s")),
    "decode-e2e-copy-speedup": Figure("decode_e2e.json", lambda d: one(
        d["rows"], workload="quotes and corrections, typed")["speedup"], fixed(2, "x")),
    "decode-e2e-ttft-turns": Figure("decode_e2e.json", lambda d: d["ttft_s"]["turns"]),
    **{f"draft-head-{name}-ms": Figure("draft-head-cost.json", lambda d, k=key: d["head_token_ms"][k],
                                       fixed(2, " ms"))
       for name, key in (("float", "float32"), ("int8", "int8 (as it drafts)"))},
    **{f"compile-{name}-{field}": Figure("compile-step.json", lambda d, b=build, f=key: d["builds"][b][f],
                                         fmt)
       for name, build in COMPILE_BUILDS.items()
       for field, key, fmt in (("eager", "eager_step_ms", fixed(2, " ms")),
                               ("compiled", "compiled_step_ms", fixed(2, " ms")),
                               ("breaks", "graph_breaks", fixed(0)),
                               ("first", "first_compiled_call_s", fixed(0, " s")))},
    **{f"lora-step-{name}-ms": Figure("lora-step.json", lambda d, k=key: d["settings"][k]["step_ms"],
                                      fixed(2, " ms"))
       for name, key in LORA_SETTINGS.items()},
    "cascade-engine-speedup": Figure("cascade-engine.json", lambda d: d["speedup"], fixed(2, "x")),
    "cascade-engine-differ": Figure("cascade-engine.json", lambda d: f"{d['differ']} of {d['clips']}"),
    **{f"cascade-engine-{name}-{kind}": Figure(
        "cascade-engine.json", lambda d, e=engine, k=kind: d["engines"][e]["bleu"][k], fixed(1))
       for name, engine in (("fallback", "fallback (transformers forward)"), ("static", "static engine"))
       for kind in ("everyday", "bible")},
    **{f"cascade-engine-{name}-s": Figure(
        "cascade-engine.json", lambda d, e=engine: d["engines"][e]["llm_seconds_per_clip"], fixed(2, " s"))
       for name, engine in (("fallback", "fallback (transformers forward)"), ("static", "static engine"))},
    "draft-head-int8-steps": Figure("draft-head-cost.json",
                                    lambda d: d["head_token_steps"]["int8 (as it drafts)"], fixed(2)),
    **{f"decode-e2e-{name}-{key.replace('_', '-')}": Figure(
        "decode_e2e.json", lambda d, w=workload, k=key: one(d["rows"], workload=w)[k], fixed(2, "x"))
       for name, workload, keys in (
           ("passage", "passage answers, typed passage", ("speedup", *HEAD_ABLATION)),
           ("chat", "chat, typed", HEAD_ABLATION))
       for key in keys},
    "decode-profile-int4-share": Figure("decode-profile.json", lambda d: sum(  # the int4 kernel, whichever
        op["self_cpu_share"] for op in d["decode"]["ops"] if op["op"] in INT4_OPS), pct(0)),
    "decode-profile-int8-share": Figure("decode-profile.json", lambda d: sum(  # the head's kernel, whichever
        op["self_cpu_share"] for op in d["decode"]["ops"] if op["op"] in HEAD_OPS), pct(0)),
    "decode-profile-calls-per-token": Figure("decode-profile.json",
                                             lambda d: d["decode"]["int4_calls_per_token"], fixed(0)),
    "decode-profile-calls-per-layer": Figure(
        "decode-profile.json", lambda d: d["decode"]["int4_calls_per_layer_per_token"], fixed(0)),
    "decode-profile-layers": Figure("decode-profile.json", lambda d: d["decode"]["layers"]),
    "decode-profile-load": Figure("decode-profile.json", lambda d: _loads(d["meta"]["load_average_before"])),
})

# ---- docs/low-bit-core.md: benchmarks/quant.py quality ------------------------------------------

FIGURES.update({
    "quant-rtn-g32-ppl": Figure("quant-quality.json", lambda d: d["rtn W4A16 g32"]["ppl"], fixed(2)),
    "quant-int4-rows-ppl": Figure("quant-quality.json", lambda d: d["rtn W4A8 blocks (int4-rows)"]["ppl"],
                                  fixed(2)),
})

# ---- docs/transcription-io.md: benchmarks/scores.py ---------------------------------------------

FIGURES.update({
    "scores-words": Figure("scores.json", lambda d: f"{d['wer']['words']:,}"),
    "scores-substitutions": Figure("scores.json", lambda d: d["wer"]["substitutions"]),
    "scores-jiwer": Figure("scores.json", lambda d: d["wer"]["jiwer_s"], fixed(2, " s")),
    "scores-python": Figure("scores.json", lambda d: d["wer"]["python_edit_distance_s"], fixed(1, " s")),
    "scores-speedup": Figure("scores.json", lambda d: d["wer"]["speedup"], fixed(0, "x")),
    "scores-load": Figure("scores.json", lambda d: _loads(d["meta"]["load_average_before"])),
    "scores-bleu": Figure("scores.json", lambda d: d["bleu"]["bleu"], fixed(2)),
    "scores-bleu-plain": Figure("scores.json", lambda d: d["bleu"]["bleu_no_smoothing"], fixed(2)),
})

# ---- docs/transcription.md: benchmarks/whisper_features.py --------------------------------------

LANGUAGES = {"en": "English", "es": "Spanish"}


def _lid_result(row: dict) -> str:
    wrong = ", ".join(f"{k} {v}" for k, v in sorted(row.get("wrong_as", {}).items()))
    fw = (f"; faster-whisper on the same clips: {row['faster_whisper_accuracy']:.1f} %"
          if "faster_whisper_accuracy" in row else "")
    return f"**{row['accuracy']:.1f} %** (mean P = {row['mean_prob']:.3f}" + (f"; wrong: {wrong}" if wrong
                                                                              else "") + fw + ")"


def _whisper_feature_rows(d: dict) -> list[dict]:
    """whisper-features.json as the rows of one 'measured | result' table."""
    lid, rows = d["language_id"], []
    for r in lid["rows"]:
        rows.append({"measured": f"language ID, {LANGUAGES[r['language']]} clips ({lid['model']}, "
                                 f"{r['clips']} clips, {r['seconds']} s mean, {lid['window']} window)",
                     "result": _lid_result(r)})
    for r in lid["rows"]:
        rows.append({"measured": f"language ID by voice, {LANGUAGES[r['language']]}",
                     "result": ", ".join(f"{v} {a:.0f} %" for v, a in r["by_voice"].items())})
    t, s = d["translate"], d["subtitles"]
    rows.append({"measured": f"`--task translate` es→en ({t['model']}, {t['clips']} clips)",
                 "result": f"BLEU {t['bleu']:.1f} (`{t['signature']}`)"})
    rows.append({"measured": f"subtitles of a {s['audio_seconds']:.1f} s recording ({s['model']}, "
                             "word timestamps)",
                 "result": f"{s['segments']} segments (longest {s['longest_segment_s']:.2f} s), "
                           f"{s['cues']} cues: longest **{s['longest_cue_s']:.2f} s**, longest line "
                           f"**{s['longest_line_chars']} chars**, at most {s['most_lines']} lines; "
                           f"WER {s['wer']:.1f} %"})
    for w in d["word_timestamps"]:
        gaps = "{:g}-{:g} s".format(*w["gap_range_s"])
        who = "" if w.get("system", "speechllm") == "speechllm" else f"{w['system']}, "
        rows.append({"measured": f"word timestamps ({who}{w['model']}, words {w['gaps']}: {gaps} between, "
                                 f"{w['matched']}/{w['words']} words matched, {w['audio_seconds']:.1f} s)",
                     "result": f"start {w['start_mean_s']} / {w['start_p90_s']} s, end {w['end_mean_s']} / "
                               f"{w['end_p90_s']} s, all **{w['mean_s']} / {w['p90_s']} s** (mean / p90); "
                               f"{w['within_0.2s']:.1f} % within 0.2 s"})
    return rows


TABLES["whisper-features"] = Table("whisper-features.json", (Column("measured", "measured"),
                                                              Column("result", "result")),
                                   rows=_whisper_feature_rows)


def _lid(lang: str) -> Callable[[dict], dict]:
    return lambda d: one(d["language_id"]["rows"], language=lang)


def _worst_voices(lang: str, n: int = 2) -> Callable[[dict], str]:
    def worst(d: dict) -> str:
        by_voice = _lid(lang)(d)["by_voice"]
        return " and ".join(f"`{v}`" for v in sorted(by_voice, key=by_voice.get)[:n])
    return worst


def _wt(model: str, gaps: str, key: str, system: str = "speechllm") -> Callable[[dict], Any]:
    return lambda d: one(d["word_timestamps"], model=model, gaps=gaps, system=system)[key]


FIGURES.update({
    "output-layer-hearing-before": Figure("whisper-output-layer.json",
                                          lambda d: d["hearing_clip_s"]["transpose"], fixed(2, " s")),
    "output-layer-hearing-after": Figure("whisper-output-layer.json",
                                         lambda d: d["hearing_clip_s"]["contiguous copy"], fixed(2, " s")),
    "output-layer-rtf-before": Figure("whisper-output-layer.json", lambda d: d["batch"]["rtf"]["transpose"],
                                      fixed(4)),
    "output-layer-rtf-after": Figure("whisper-output-layer.json",
                                     lambda d: d["batch"]["rtf"]["contiguous copy"], fixed(4)),
    "output-layer-same": Figure("whisper-output-layer.json", lambda d: d["batch"]["same_transcripts"]),
    "wf-longest-cue": Figure("whisper-features.json", lambda d: d["subtitles"]["longest_cue_s"],
                             fixed(2, " s")),
    "wf-longest-line": Figure("whisper-features.json", lambda d: d["subtitles"]["longest_line_chars"]),
    "wf-segments": Figure("whisper-features.json", lambda d: d["subtitles"]["segments"]),
    "wf-longest-segment": Figure("whisper-features.json", lambda d: d["subtitles"]["longest_segment_s"],
                                fixed(2, " s")),
    "wf-recording-min": Figure("whisper-features.json", lambda d: d["subtitles"]["audio_seconds"] / 60,
                               fixed(1, " min")),
    "wt-mean": Figure("whisper-features.json", _wt("whisper-tiny.en", "pauses", "mean_s"), fixed(3, " s")),
    "wt-p90": Figure("whisper-features.json", _wt("whisper-tiny.en", "pauses", "p90_s"), fixed(3, " s")),
    "wt-within": Figure("whisper-features.json", _wt("whisper-tiny.en", "pauses", "within_0.2s"),
                        fixed(1, " %")),
    "wt-base-mean": Figure("whisper-features.json", _wt("whisper-base", "pauses", "mean_s"), fixed(3, " s")),
    "wt-base-p90": Figure("whisper-features.json", _wt("whisper-base", "pauses", "p90_s"), fixed(3, " s")),
    "wt-runon-mean": Figure("whisper-features.json", _wt("whisper-tiny.en", "run-on", "mean_s"),
                            fixed(3, " s")),
    "wt-runon-p90": Figure("whisper-features.json", _wt("whisper-tiny.en", "run-on", "p90_s"),
                           fixed(3, " s")),
    "wt-runon-base-mean": Figure("whisper-features.json", _wt("whisper-base", "run-on", "mean_s"),
                                 fixed(3, " s")),
    "wt-runon-base-p90": Figure("whisper-features.json", _wt("whisper-base", "run-on", "p90_s"),
                                fixed(3, " s")),
    "wt-fw-p90": Figure("whisper-features.json", _wt("whisper-tiny.en", "pauses", "p90_s", "faster-whisper"),
                        fixed(3, " s")),
    "wt-fw-base-p90": Figure("whisper-features.json",
                             _wt("whisper-base", "pauses", "p90_s", "faster-whisper"), fixed(3, " s")),
    "wt-fw-runon-p90": Figure("whisper-features.json",
                              _wt("whisper-tiny.en", "run-on", "p90_s", "faster-whisper"), fixed(3, " s")),
    "wt-fw-runon-base-p90": Figure("whisper-features.json",
                                   _wt("whisper-base", "run-on", "p90_s", "faster-whisper"), fixed(3, " s")),
    "wt-fw-runon-base-early": Figure("whisper-features.json", lambda d: -(
        _wt("whisper-base", "run-on", "start_bias_s", "faster-whisper")(d)
        + _wt("whisper-base", "run-on", "end_bias_s", "faster-whisper")(d)) / 2, fixed(2, " s")),
    "wt-runon-base-early": Figure("whisper-features.json", lambda d: -(
        _wt("whisper-base", "run-on", "start_bias_s")(d) + _wt("whisper-base", "run-on", "end_bias_s")(d))
        / 2, fixed(2, " s")),
    "lid-en": Figure("whisper-features.json", lambda d: _lid("en")(d)["accuracy"], fixed(0, " %")),
    "lid-es": Figure("whisper-features.json", lambda d: _lid("es")(d)["accuracy"], fixed(0, " %")),
    "lid-es-wrong": Figure("whisper-features.json", lambda d: "{} ({})".format(
        sum(_lid("es")(d)["wrong_as"].values()),
        ", ".join(f"`{k}` {v}" for k, v in sorted(_lid("es")(d)["wrong_as"].items())))),
    "lid-fw-es": Figure("whisper-features.json", lambda d: _lid("es")(d)["faster_whisper_accuracy"],
                        fixed(0, " %")),
    "lid-fw-shared": Figure("whisper-features.json", lambda d: "{} of the same {}".format(*(lambda ours: (
        sum(c["reference_guess"] != "es" for c in ours), len(ours)))(
        [c for c in d["language_id"]["clips"] if c["language"] == "es" and c["guess"] != "es"]))),
    "lid-clips": Figure("whisper-features.json", lambda d: min(r["clips"] for r in d["language_id"]["rows"])),
    "lid-es-worst-voices": Figure("whisper-features.json", _worst_voices("es")),
    "wf-translate-bleu": Figure("whisper-features.json", lambda d: d["translate"]["bleu"], fixed(1)),
    "wf-translate-clips": Figure("whisper-features.json", lambda d: d["translate"]["clips"]),
})

TABLES["whisper-decoding"] = Table("whisper-decoding.json", (
    Column("audio", "audio"),
    Column("decoding", "decoding"),
    Column("WER", "wer", pct(), True),
    Column("RTF", "rtf", fixed(3), True),
    Column("segments decoded hotter", "hot_segments", text, True)),
    rows=lambda d: d["rows"])


def _decoding(d: dict, prefix: str) -> dict:
    """The clean-audio row of whisper-decoding.json whose decoding starts with ``prefix``."""
    return next(r for r in d["rows"] if r["audio"] == "clean" and r["decoding"].startswith(prefix))


FIGURES.update({
    "beam5-fewer-errors": Figure("whisper-decoding.json", lambda d: 1 - _decoding(d, "beam 5")["wer"]
                                 / _decoding(d, "fallback (default")["wer"], pct(0)),
    "beam5-time": Figure("whisper-decoding.json", lambda d: _decoding(d, "beam 5")["rtf"]
                         / _decoding(d, "fallback (default")["rtf"], fixed(1, "x")),
})


def _aligned_vocoder_l1(voice: str) -> Figure:
    """tts-vocoder-aligned.json: the audio's normalised-mel L1 of ``voice`` with the teacher's durations."""
    return Figure("tts-vocoder-aligned.json", lambda d: one(
        d["stages"], voice=voice, input="acoustic model, teacher's durations")["audio mel l1"], fixed(3))


FIGURES.update({
    "tts-aligned-l1-before": _aligned_vocoder_l1("speechllm-joe"),
    "tts-aligned-l1-after": _aligned_vocoder_l1("runs/tts/voice-aligned"),
})
