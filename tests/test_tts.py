"""Streaming TTS stages on tiny random models: shapes, FSQ, chunk causality, streaming == whole, CLI."""

import random

import numpy as np
import pytest
import soundfile as sf
import torch

from speechllm.tts.flow import FlowConfig, FlowMatching, chunk_mask
from speechllm.tts.lm import LMConfig, SamplingOptions, TextSpeechLM, interleave, split_words
from speechllm.tts.synthesize import SynthesisOptions
from speechllm.tts.text import TextError, prepare_text, sentence_streams, sentences
from speechllm.tts.tokenizer import FSQ, SpeechTokenizer, TokenizerConfig
from speechllm.tts.vocoder import GriffinLim, StreamingISTFT, VocoderConfig, Vocos, istft_same

N_SPEECH = 24


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from tiny_models import make_tiny_llm

    return make_tiny_llm(tmp_path_factory.mktemp("llm"), hidden=32, layers=3)


@pytest.fixture(scope="module")
def tiny_lm(tiny_llm):
    torch.manual_seed(0)
    config = LMConfig(backbone=str(tiny_llm), n_layers=2, n_speech=N_SPEECH, text_chunk=2, speech_chunk=3,
                      lora_rank=4)
    lm = TextSpeechLM.build(config).eval()
    for p in lm.parameters():  # LoRA B starts at zero; make every trained part matter
        if p.requires_grad:
            p.data.add_(torch.randn_like(p) * 0.05)
    return lm


def tiny_flow(**changes):
    torch.manual_seed(0)
    flow = FlowMatching(FlowConfig(n_tokens=N_SPEECH, dim=32, n_layers=2, n_heads=2, **changes)).eval()
    for block in [*flow.blocks, *flow.encoder]:  # adaLN starts at zero (identity blocks): give it weights
        torch.nn.init.normal_(block.ada.weight, std=0.2)
    return flow


# ---------------------------------------------------------------- tokenizer


def test_fsq_round_trip_and_grid():
    fsq = FSQ((8, 5, 5, 5))
    every = torch.arange(1000)
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(every)), every)
    z = (torch.randn(64, 4) * 3).requires_grad_()
    codes = fsq.quantize(z)
    ids = fsq.codes_to_indices(codes)
    assert ids.min() >= 0 and ids.max() < 1000
    assert torch.allclose(fsq.indices_to_codes(ids), codes)
    codes.sum().backward()  # straight-through: gradients reach z
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_tokenizer_shapes_and_ctc():
    torch.manual_seed(0)
    model = SpeechTokenizer(TokenizerConfig(d_in=16, d_model=32, n_heads=2, n_pre=1, n_post=1, levels=(3, 3)))
    model.eval()
    enc, lengths = torch.randn(2, 21, 16), torch.tensor([21, 10])
    logp, mask, ids = model(enc, lengths)
    assert logp.shape == (2, 11, model.config.n_chars) and mask.sum(1).tolist() == [11, 5]
    tokens, _ = model.tokenize(enc, lengths)
    assert (tokens[1, 5:] == -1).all() and tokens[:, :5].ge(0).all() and tokens.max() < 9
    single, _ = model.tokenize(enc[1:, :9], torch.tensor([9]))
    odd, _ = model.tokenize(enc, torch.tensor([21, 9]))
    assert torch.equal(single[0], odd[1, :5])  # padding never changes an item's tokens
    targets = [torch.tensor([3, 4, 5]), torch.tensor([7])]
    loss, parts = model.loss(enc, lengths, targets)
    loss.backward()
    assert torch.isfinite(loss) and model.proj_in.weight.grad is not None and set(parts) == {"ctc"}


def test_tokenizer_mel_reconstruction_term():
    torch.manual_seed(0)
    config = TokenizerConfig(d_in=16, d_model=32, n_heads=2, n_pre=0, n_post=1, levels=(3, 3),
                             recon_weight=0.5, n_mels=6)
    model = SpeechTokenizer(config).eval()  # no dropout: two calls compare exactly
    enc, lengths = torch.randn(2, 21, 16), torch.tensor([21, 10])
    targets = [torch.tensor([3, 4, 5]), torch.tensor([7])]
    mel = torch.randn(2, 21, 6) - 5
    loss, parts = model.loss(enc, lengths, targets, mel, torch.tensor([21, 0]))  # item 1: no mel (ASR row)
    assert abs(float(loss.detach()) - (parts["ctc"] + 0.5 * parts["recon"])) < 1e-4
    loss.backward()
    assert model.mel_head.weight.grad.abs().sum() > 0 and model.to_fsq.weight.grad.abs().sum() > 0
    mel2 = mel.clone()
    mel2[1] += 100  # an item without mel never counts
    again = model.loss(enc, lengths, targets, mel2, torch.tensor([21, 0]))[1]
    assert abs(again["recon"] - parts["recon"]) < 1e-4


# ---------------------------------------------------------------- vocoder


def test_istft_streaming_equals_whole():
    spec = torch.randn(1, 65, 17, dtype=torch.complex64)
    whole = istft_same(spec, 128, 32)[0]
    assert whole.shape == (17 * 32,)
    stream = StreamingISTFT(128, 32)
    parts = [stream.push(spec[0, :, a:b]) for a, b in ((0, 1), (1, 6), (6, 7), (7, 17))] + [stream.flush()]
    assert torch.allclose(torch.cat(parts), whole, atol=1e-5)


def test_vocoder_streams_exactly_and_is_causal():
    torch.manual_seed(0)
    vocoder = Vocos(VocoderConfig(dim=16, ffn=32, n_layers=2, n_fft=128, hop=32)).eval()
    mel = torch.randn(1, 80, 40) - 5
    with torch.no_grad():
        whole = vocoder(mel)[0]
        stream = vocoder.stream()
        rng = random.Random(0)
        parts, start = [], 0
        while start < 40:
            size = rng.randint(1, 9)
            parts.append(stream.push(mel[0, :, start:start + size]))
            start += size
        parts.append(stream.flush())
        assert torch.allclose(torch.cat(parts), whole, atol=1e-5)
        changed = mel.clone()
        changed[..., 20:] += 1.0  # later mel changes nothing before it (minus the overlap-add tail)
        early = 20 * 32 - (128 - 32) // 2
        assert torch.allclose(vocoder(changed)[0, :early], whole[:early], atol=1e-6)
        assert not torch.allclose(vocoder(changed)[0, early + 64:], whole[early + 64:])


def test_griffin_lim_fallback_shape():
    audio = GriffinLim(iters=2)(torch.randn(1, 80, 10) - 5)
    assert audio.shape == (1, 3200) and torch.isfinite(audio).all()


# ---------------------------------------------------------------- flow matching


def test_chunk_mask():
    mask = chunk_mask(torch.tensor([2]), torch.tensor([7]), 8, 2)[0, 0]
    assert mask[0].tolist() == [True, True] + [False] * 6  # the prompt sees the prompt
    assert mask[2].tolist() == [True] * 4 + [False] * 4  # chunk 0 = frames 2, 3
    assert mask[6].tolist() == [True] * 7 + [False]  # the last frame is padding: nobody sees it


@pytest.mark.parametrize("encoder_layers,conv_kernel", [(0, 0), (1, 0), (1, 5)])
def test_flow_first_chunks_ignore_later_tokens(encoder_layers, conv_kernel):
    flow = tiny_flow(encoder_layers=encoder_layers, conv_kernel=conv_kernel)
    tokens = torch.randint(0, N_SPEECH, (12,))
    prompt_mel, prompt_tokens = torch.randn(80, 6) - 5, torch.randint(0, N_SPEECH, (3,))
    mel = flow.synthesize(tokens, prompt_mel, prompt_tokens, steps=3, chunk_tokens=4)
    assert mel.shape == (80, 24)
    other = tokens.clone()
    other[8:] = (other[8:] + 1) % N_SPEECH
    mel2 = flow.synthesize(other, prompt_mel, prompt_tokens, steps=3, chunk_tokens=4)
    assert torch.equal(mel2[:, :16], mel[:, :16])
    assert not torch.allclose(mel2[:, 16:], mel[:, 16:])
    full = flow.synthesize(tokens, prompt_mel, prompt_tokens, steps=3)  # one chunk: full attention
    assert full.shape == mel.shape and not torch.allclose(full, mel)


@pytest.mark.parametrize("encoder_layers,conv_kernel", [(0, 0), (1, 0), (1, 5)])
def test_flow_streaming_matches_training_mask(encoder_layers, conv_kernel):
    """Chunk by chunk with key/value caches (encoder and decoder) = one pass under the training mask."""
    from speechllm.tts.flow import _grow

    flow = tiny_flow(encoder_layers=encoder_layers, conv_kernel=conv_kernel)
    n_prompt, chunk = 4, 4
    x = torch.randn(1, 16, 80)
    cond = torch.cat([x[:, :n_prompt], torch.zeros(1, 12, 80)], 1)
    x[:, :n_prompt] = cond[:, :n_prompt]
    tokens = torch.randint(0, N_SPEECH, (1, 16))
    t = torch.tensor([0.3])
    mask = chunk_mask(torch.tensor([n_prompt]), torch.tensor([16]), 16, chunk)
    whole = flow.velocity(flow.embed(x, cond, tokens, 0, mask)[0], t, mask)
    cache, enc_cache = None, None
    for start, stop in [(0, n_prompt), *[(a, a + chunk) for a in range(n_prompt, 16, chunk)]]:
        sl = slice(start, stop)
        keep, keep_enc = [], []
        e, mu = flow.encode(tokens[:, sl], start, None, enc_cache, keep_enc)
        enc_cache = _grow(enc_cache, keep_enc) if keep_enc else None
        v = flow.velocity(flow.join(x[:, sl], cond[:, sl], e, mu, start), t, None, cache, keep)
        cache = _grow(cache, keep)
        assert torch.allclose(v, whole[:, sl], atol=1e-5)


@pytest.mark.parametrize("encoder_layers,conv_kernel", [(0, 0), (1, 0), (1, 5)])
def test_flow_stream_equals_chunked_synthesis_and_trains(encoder_layers, conv_kernel):
    flow = tiny_flow(encoder_layers=encoder_layers, conv_kernel=conv_kernel)
    tokens = torch.randint(0, N_SPEECH, (10,))
    chunked = flow.synthesize(tokens, steps=2, chunk_tokens=3)
    pieces = iter([tokens[:3], tokens[3:6], tokens[6:9], tokens[9:]])
    streamed = torch.cat(list(flow.stream(pieces, steps=2)), 1)
    assert torch.equal(streamed, chunked)
    flow.train()
    loss, parts = flow.loss(torch.randn(2, 20, 80) - 5, torch.randint(0, N_SPEECH, (2, 10)),
                            torch.tensor([20, 14]), torch.tensor([4, 0]), chunk=4)
    loss.backward()
    assert torch.isfinite(loss) and parts["prior"] > 0 and flow.token_emb.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- text-speech LM


def test_interleave_groups():
    config = LMConfig(n_speech=N_SPEECH, text_chunk=2, speech_chunk=3)
    ids, is_speech = interleave([100, 101, 102], [1, 2, 3, 4, 5, 6, 7, 8], config)
    assert ids == [config.start, 100, 101, 1, 2, 3, 102, config.text_end, 4, 5, 6, 7, 8, config.eos]
    assert is_speech == [True, False, False, True, True, True, False] + [True] * 7


def test_lm_streams_while_text_arrives(tiny_lm):
    consumed = []

    def pieces():
        for word in split_words("hello world the weather will be sunny tomorrow"):
            consumed.append(word)
            yield word

    stream = tiny_lm.stream(pieces(), SamplingOptions(temperature=0, max_tokens_per_text_token=3))
    first = next(stream)
    assert len(first) == 3 and len(consumed) < 8  # spoke before reading all the text
    rest = list(stream)
    assert len(consumed) == 8 and rest and all(len(c) <= 3 for c in rest)


def test_lm_stream_matches_teacher_forcing(tiny_lm):
    """Greedy incremental decoding (KV cache, text fed group by group) = argmax of the training forward."""
    text = "the weather will be sunny"
    options = SamplingOptions(temperature=0, max_tokens_per_text_token=2)
    speech = [t for c in tiny_lm.stream(split_words(text), options) for t in c.tolist()]
    ids, is_speech = interleave(tiny_lm.text_ids(text), speech, tiny_lm.config)
    ids, is_speech = torch.tensor([ids]), torch.tensor([is_speech])
    with torch.no_grad():
        hidden = tiny_lm.decoder(inputs_embeds=tiny_lm.embed(ids, is_speech)).last_hidden_state
        logits = tiny_lm.head(hidden[0, :-1])
    seq = ids[0].tolist()
    text_end_at = seq.index(tiny_lm.config.text_end)
    for pos in range(len(seq) - 2):  # the last target is EOS or the length cap
        target = seq[pos + 1]
        if is_speech[0, pos + 1] and target < tiny_lm.config.eos:
            row = logits[pos].clone()
            if pos < text_end_at:
                row[tiny_lm.config.eos] = float("-inf")
            assert int(row.argmax()) == target


def test_lm_stream_runs_on_the_engine_and_the_fallback_agrees(tiny_lm, monkeypatch):
    """The stream decodes on speechllm.generation's static engine; the fallback (the model's own forward
    and cache, fed the same embeddings) writes the same greedy speech tokens."""
    from speechllm.generation import engines, static

    options = SamplingOptions(temperature=0, max_tokens_per_text_token=2)
    text = split_words("the weather will be sunny")
    on_engine = [c.tolist() for c in tiny_lm.stream(text, options)]
    assert tiny_lm.as_causal_lm() in static._ENGINES
    monkeypatch.setattr(engines, "ENGINES", {})  # every model type on the fallback
    assert [c.tolist() for c in tiny_lm.stream(text, options)] == on_engine


def test_lm_on_a_low_bit_backbone_trains_and_streams(tiny_llm):
    """LMConfig(quant="int4"): the backbone's linears and embedding table are low-bit, LoRA wraps the
    QuantLinears, the speech embeddings start at the table's scale, and the stream runs."""
    from speechllm.quant import QuantLinear

    torch.manual_seed(0)
    lm = TextSpeechLM.build(LMConfig(backbone=str(tiny_llm), quant="int4", n_layers=2, n_speech=N_SPEECH,
                                     text_chunk=2, speech_chunk=3, lora_rank=4))
    assert any(isinstance(m, QuantLinear) for m in lm.decoder.modules())
    ids, is_speech = interleave(lm.text_ids("hello world"), [3, 4, 5, 6], lm.config)
    loss, _ = lm.loss(torch.tensor([ids]), torch.tensor([is_speech]), torch.tensor([len(ids)]))
    loss.backward()
    assert any("lora_" in n and p.grad is not None for n, p in lm.named_parameters())
    options = SamplingOptions(temperature=0, max_tokens_per_text_token=2)
    assert sum(len(c) for c in lm.eval().stream(split_words("hello world"), options)) > 0


def test_lm_saved_state_round_trip(tiny_lm, tiny_llm):
    state = tiny_lm.saved_state()
    assert state and all("lora_" in k or not k.startswith("decoder.") for k in state)
    other = TextSpeechLM.build(tiny_lm.config)
    other.load_saved_state(state)
    ids, flags = torch.tensor([[tiny_lm.config.start, 5, 6]]), torch.tensor([[True, True, True]])
    with torch.no_grad():
        a = tiny_lm.decoder(inputs_embeds=tiny_lm.embed(ids, flags)).last_hidden_state
        b = other.decoder(inputs_embeds=other.embed(ids, flags)).last_hidden_state
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="missing"):
        other.load_saved_state({k: v for k, v in state.items() if k != "head.weight"})


def test_lm_merge_lora_and_quantize_keep_the_stream(tiny_llm, tiny_lm):
    import copy

    options = SamplingOptions(temperature=0, max_tokens_per_text_token=2, first_yield=2)
    before = [c.tolist() for c in tiny_lm.stream(split_words("hello world the weather"), options)]
    assert len(before[0]) == 2 and len(before[1]) == 1  # the first group, split for earlier audio
    merged = copy.deepcopy(tiny_lm).merge_lora()
    assert not any("lora" in n for n, _ in merged.decoder.named_modules())
    assert [c.tolist() for c in merged.stream(split_words("hello world the weather"), options)] == before
    quantized = merged.quantize_linears("int4")
    assert sum(len(c) for c in quantized.stream(split_words("hello world"), options)) > 0
    with pytest.raises(ValueError, match="unknown TTS LM quantization"):
        merged.quantize_linears("int3")


# ---------------------------------------------------------------- text


def test_prepare_text_normalises_or_refuses():
    assert prepare_text("Café costs $3.50 😀") == "Cafe costs three dollars and fifty cents"
    for bad, reason in (("", "empty"), ("  \n", "empty"), ("😀 ☃", "nothing speakable"), (7, "string"),
                        ("a" * 100_001, "over the limit")):
        with pytest.raises(TextError, match=reason):
            prepare_text(bad)


def test_sentences_and_streams():
    assert sentences("Hi there. How are you? Fine") == ["Hi there.", "How are you?", "Fine"]
    long = " ".join(["word"] * 100)
    assert all(len(s.split()) <= 40 for s in sentences(long))
    streams = [list(s) for s in sentence_streams(["Hel", "lo the", "re. How ", "are you?"])]
    assert streams == [["Hello", " there."], ["How", " are", " you?"]]


# ---------------------------------------------------------------- the whole voice + CLI


@pytest.fixture(scope="module")
def tiny_voice_dir(tiny_lm, tmp_path_factory):
    from speechllm.tts.synthesize import save_tts

    folder = tmp_path_factory.mktemp("voice")
    vocoder = Vocos(VocoderConfig(dim=16, ffn=32, n_layers=1))
    save_tts(folder, tiny_lm, tiny_flow(), vocoder, torch.randn(80, 8) - 5, torch.randint(0, N_SPEECH, (4,)),
             SynthesisOptions(flow_steps=2, max_speech_per_text=2.0))
    return folder


def test_voice_folder_streams_and_whole(tiny_voice_dir):
    from speechllm import tts

    voice = tts.load(str(tiny_voice_dir))
    assert voice.sample_rate == 16_000
    chunks = list(voice.synthesize("Hello world. The weather", stream=True))
    assert chunks and all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    total = sum(len(c) for c in chunks)
    assert total > 0 and total % 320 == 0  # whole mel frames
    whole = voice.synthesize("Hello world. The weather")
    assert whole.dtype == np.float32 and len(whole) % 320 == 0 and np.abs(whole).max() <= 1.0
    pieces = list(voice.synthesize(iter(["Hel", "lo wor", "ld."]), stream=True))
    assert sum(len(c) for c in pieces) > 0
    with pytest.raises(TextError):
        voice.synthesize("")
    with pytest.raises(FileNotFoundError, match="unknown voice"):
        tts.load("no-such-voice")


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed")
def test_cli_default_voice_falls_back_to_piper(tmp_path, capsys, monkeypatch):
    from speechllm import tts
    from speechllm.apps.cli import main

    monkeypatch.setattr(tts.voices, "OWN_VOICES", {})
    assert main(["tts", "--text", "Hi.", "--output", str(tmp_path / "p.wav"), "--stream"]) == 0
    assert "speaking with piper-joe" in capsys.readouterr().err


def test_cli(tiny_voice_dir, tmp_path, capsys, monkeypatch):
    import io

    import soundfile as sf

    from speechllm.apps.cli import main

    out = tmp_path / "out.wav"
    assert main(["tts", "--text", "Hello world.", "--output", str(out), "--voice", str(tiny_voice_dir),
                 "--stream", "--steps", "2"]) == 0
    audio, sr = sf.read(out)
    assert sr == 16_000 and len(audio) > 0
    monkeypatch.setattr("sys.stdin", io.StringIO("The weather."))
    assert main(["tts", "--output", str(tmp_path / "b.wav"), "--voice", str(tiny_voice_dir)]) == 0
    assert (tmp_path / "b.wav").is_file()
    capsys.readouterr()
    assert main(["tts", "--text", "  ", "--output", str(tmp_path / "c.wav")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "speechllm tts: error: empty text: nothing to say" and not (tmp_path / "c.wav").exists()
    assert main(["tts", "--text", "hi", "--output", str(tmp_path / "d.wav"), "--voice", "nope"]) == 1
    assert "unknown voice 'nope'" in capsys.readouterr().err


def test_training_driver_end_to_end(tiny_llm, tmp_path, fake_tts_cache):
    """Every stage of ``python -m speechllm.tts.train`` on a tiny fake cache: train, resume, assemble,
    speak."""
    from speechllm.tts import load
    from speechllm.tts.train import main

    cache = fake_tts_cache(tmp_path / "cache")
    common = ["--batch-size", "2", "--log-every", "1", "--save-every", "1", "--eval-every", "2"]
    run = lambda *a, cache=cache: main([*a, *common, "--cache", str(cache)])  # noqa: E731
    assert run("--stage", "tokenizer", "--out", str(tmp_path / "tok"), "--steps", "1") == 0
    assert run("--stage", "tokenizer", "--out", str(tmp_path / "tok"), "--steps", "2") == 0  # resumes
    newest = tmp_path / "tok" / "checkpoints" / "step-0000002"
    state = __import__("json").loads((newest / "trainer_state.json").read_text())
    assert state["step"] == 2 and len(list((tmp_path / "tok" / "checkpoints").iterdir())) == 2
    assert run("--stage", "tokens", "--out", str(tmp_path / "tok")) == 0
    assert run("--stage", "vocoder", "--out", str(tmp_path / "voc"), "--steps", "1") == 0
    # a pack (8-bit mels and tokens, no frames or audio) trains the flow and the LM, not the rest
    assert run("--stage", "pack", "--out", str(tmp_path / "pack")) == 0
    from speechllm.tts.data import load_corpus

    full = load_corpus(cache, "train", tokens=True)
    packed = load_corpus(tmp_path / "pack", "train", tokens=True)
    assert packed.ids == full.ids and torch.equal(torch.cat(packed.tokens), torch.cat(full.tokens))
    mel, packed_mel = torch.cat(full.mel).float(), torch.cat(packed.mel).float()
    step = (mel.max() - mel.min()) / 255  # 8 bits over the part's range: off by half a step at most
    assert (packed_mel - mel).abs().max() <= step / 2 + 1e-2 and all(len(e) == 0 for e in packed.enc)
    assert run("--stage", "flow", "--out", str(tmp_path / "flow-pack"), "--steps", "1",
               "--tokenizer", str(tmp_path / "tok"), cache=tmp_path / "pack") == 0
    with pytest.raises(ValueError, match="no usable training utterance"):
        run("--stage", "vocoder", "--out", str(tmp_path / "voc-p"), "--steps", "1", cache=tmp_path / "pack")
    with pytest.raises(ValueError, match="not even one"):
        run("--stage", "pack", "--out", str(tmp_path / "pack2"), "--max-mb", "0.0001")
    assert run("--stage", "flow", "--out", str(tmp_path / "flow"), "--steps", "1",
               "--tokenizer", str(tmp_path / "tok")) == 0
    assert run("--stage", "lm", "--out", str(tmp_path / "lm"), "--steps", "1", "--tokenizer",
               str(tmp_path / "tok"), "--backbone", str(tiny_llm), "--layers", "2", "--ratio", "2:5") == 0
    assert run("--stage", "assemble", "--out", str(tmp_path / "voice"), "--lm", str(tmp_path / "lm"),
               "--flow", str(tmp_path / "flow"), "--vocoder", str(tmp_path / "voc")) == 0
    voice = load(str(tmp_path / "voice"))
    assert voice.lm.config.text_chunk == 2 and voice.prompt_tokens.numel() > 0
    voice.options = SynthesisOptions(flow_steps=2, max_speech_per_text=1.0)
    assert len(voice.synthesize("Hello.")) > 0


def test_tokenizer_trains_on_extra_asr_data(tmp_path):
    """``--asr-data`` adds transcribed rows whose frames sit in a speech-LLM encoder cache (rows without
    frames are skipped), and the tokenizer trains on both sets."""
    import json

    from speechllm.encoder_cache import EncoderCache
    from speechllm.speechlm.io import atomic_save_tensors
    from speechllm.tts.data import asr_corpus, load_corpus
    from speechllm.tts.train import main

    rng = torch.Generator().manual_seed(0)
    cache = tmp_path / "cache"
    cache.mkdir()
    for split in ("train", "dev"):
        enc = [torch.randn(n, 384, generator=rng).half() for n in (40, 30)]
        off = torch.tensor([0, 40, 70])
        empty = torch.zeros(0)
        rows = [{"id": f"{split}{i}", "text": "hello there", "speaker": "piper:joe"} for i in range(2)]
        none = torch.zeros(3).long()
        atomic_save_tensors({"enc": torch.cat(enc), "enc_off": off, "mel": empty.half(), "mel_off": none,
                             "wav": empty.short(), "wav_off": none.clone()},
                            cache / f"{split}-000.safetensors", {"rows": json.dumps(rows)})
    encoder_cache = EncoderCache(tmp_path / "enc", "whisper-tiny.en")
    manifest = tmp_path / "asr.jsonl"
    lines = []
    for i, text in enumerate(("a quick brown fox", "jumps over", "not cached")):
        audio = tmp_path / f"a{i}.wav"
        sf.write(audio, np.zeros(1600, np.float32), 16_000)
        if i < 2:
            target = encoder_cache.path_for(str(audio))
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_tensors({"hidden": torch.randn(24 + i, 384, generator=rng).half()}, target)
        lines.append(json.dumps({"audio": str(audio), "text": text}))
    manifest.write_text("\n".join(lines) + "\n")

    extra = asr_corpus([str(manifest)], tmp_path / "enc")
    assert extra.texts == ["a quick brown fox", "jumps over"] and [len(e) for e in extra.enc] == [24, 25]
    both = load_corpus(cache, "train") + extra
    assert len(both) == 4 and both.tokens is None

    args = ["--stage", "tokenizer", "--cache", str(cache), "--out", str(tmp_path / "tok"), "--steps", "1",
            "--batch-size", "4", "--tokenizer-options", '{"n_pre": 0}', "--asr-data", str(manifest)]
    with pytest.raises(ValueError, match="--encoder-cache"):
        main(args)
    assert main([*args, "--encoder-cache", str(tmp_path / "enc")]) == 0
    config = json.loads((tmp_path / "tok" / "config.json").read_text())["config"]
    assert config["n_pre"] == 0


def test_tts_train_command_resumes_from_the_newest_intact_checkpoint(tmp_path, fake_tts_cache, capsys):
    """``speechllm tts-train STAGE``: the trainer's options, folders named or a one-line error, and
    the checkpoints of ``speechllm.checkpoints`` (a damaged newest one skipped with a warning; the
    single ``checkpoint/`` folder of an older run still resumed, with a notice)."""
    import shutil

    from speechllm.apps.cli import main

    cache, out = fake_tts_cache(tmp_path / "cache"), tmp_path / "voc"
    args = ["tts-train", "vocoder", "--cache", str(cache), "--out", str(out), "--batch-size", "2",
            "--save-every", "1", "--eval-every", "100", "--log-every", "1"]
    assert main([*args, "--steps", "2"]) == 0
    steps = out / "checkpoints"
    assert sorted(p.name for p in steps.iterdir()) == ["step-0000001", "step-0000002"]
    whole = (steps / "step-0000002" / "model.safetensors").read_bytes()
    (steps / "step-0000002" / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    assert main([*args, "--steps", "3"]) == 0
    printed = capsys.readouterr()
    assert "vocoder: resumed at step 1" in printed.out
    warning = [line for line in printed.err.splitlines() if "damaged" in line]
    assert len(warning) == 1 and "step-0000002" in warning[0] and "model.safetensors" in warning[0]
    assert sorted(p.name for p in steps.iterdir()) == ["step-0000002", "step-0000003"]
    shutil.move(steps / "step-0000003", out / "checkpoint")  # the layout of runs from before
    shutil.rmtree(steps)
    assert main([*args, "--steps", "4"]) == 0
    printed = capsys.readouterr()
    assert "vocoder: resumed at step 3" in printed.out and "old-style checkpoint" in printed.err
    assert main(["tts-train", "flow", "--cache", str(cache), "--out", str(tmp_path / "flow")]) == 1
    assert capsys.readouterr().err.strip() == "speechllm tts-train: error: the 'flow' stage needs --tokenizer"
    assert main(["tts-train", "cache", "--out", str(tmp_path / "c")]) == 1
    assert "needs --data and --cache" in capsys.readouterr().err
