import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_llm, make_tiny_whisper
from transformers import AutoModelForCausalLM

from speechllm.audio import AudioError
from speechllm.speechlm import (
    BeamSearchDecoder,
    GenerationOptions,
    GreedyDecoder,
    LMState,
    LoraSpec,
    PromptFormat,
    SpeechLLM,
    SpeechLLMConfig,
    SpeechLLMTranscriber,
    instruction,
    load_speechlm,
    peft_base_name,
    read_config,
    save_speechlm,
)
from speechllm.speechlm.ctc_beam import (
    CTCBeamOptions,
    CTCPrefixBeamSearch,
    LLMPrefixScorer,
    document_start_id,
)
from speechllm.transcriber import Transcript

TRANSCRIBE = "Transcribe the speech."


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_whisper(root / "whisper"), make_tiny_llm(root / "llm")


def build(folders, adapter="linear", lora=True, adapter_options=None, **prompt) -> SpeechLLM:
    whisper, llm = folders
    options = {"hidden_dim": 32} if adapter == "linear" else {"d_ffn": 32}
    config = SpeechLLMConfig(encoder=str(whisper), adapter=adapter, llm=str(llm),
                             adapter_options={**options, **(adapter_options or {})},
                             lora=LoraSpec(rank=4) if lora else None, prompt=PromptFormat(**prompt))
    torch.manual_seed(0)
    model = SpeechLLM.build(config)
    with torch.no_grad():  # LoRA B starts at zero; make it matter
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model(folders):
    return build(folders).double()


def clips(*seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(max(seconds) * 16000)) / 16000
    return [(0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t[: int(s * 16000)])
             + 0.05 * rng.standard_normal(int(s * 16000))).astype(np.float32) for i, s in enumerate(seconds)]


@pytest.mark.parametrize("audio_first", [True, False])
def test_splice_follows_the_chat_template(folders, audio_first):
    model = build(folders, audio_first=audio_first)
    tok = model.tokenizer
    before, after = model.prompt_ids(TRANSCRIBE)
    marker = "[AUDIO]"
    content = f"{marker}\n{TRANSCRIBE}" if audio_first else f"{TRANSCRIBE}\n{marker}"
    expected = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)
    assert tok.decode(before) + marker + tok.decode(after) == expected
    # two items of different lengths, one with a target: left padding, audio in place, labels on target only
    audio = model.encode_audio(*_pad(clips(1.0, 0.5)))
    target = model.target_ids("hello world")
    spliced = model.splice([before, before], audio, [after, after], [target, []])
    n = audio.mask.sum(1).tolist()
    lengths = [len(before) + n[0] + len(after) + len(target), len(before) + n[1] + len(after)]
    assert spliced.attention_mask.sum(1).tolist() == lengths
    embed = model.llm.get_input_embeddings()
    for i in range(2):
        start = spliced.embeds.shape[1] - lengths[i]
        row = spliced.embeds[i, start:]
        k = len(before)
        torch.testing.assert_close(row[:k], embed(torch.tensor(before)))
        torch.testing.assert_close(row[k : k + n[i]], audio.embeddings[i, : n[i]])
        torch.testing.assert_close(row[k + n[i] : k + n[i] + len(after)], embed(torch.tensor(after)))
        assert spliced.position_ids[i, start:].tolist() == list(range(lengths[i]))
    assert spliced.labels[0, -len(target):].tolist() == target
    assert (spliced.labels[0, :-len(target)] == -100).all()
    assert (spliced.labels[1] == -100).all()
    assert tok.decode(target) == "hello world<|im_end|>"


def _pad(audio):
    from speechllm.speechlm.model import pad_audio

    return pad_audio(audio)


def _state(model, audio, text=TRANSCRIBE):
    spliced = model._prefill(audio, [text] * len(audio))
    return LMState(model.llm, spliced.embeds, spliced.attention_mask, spliced.position_ids)


def test_greedy_equals_beam_of_one(model):
    audio = clips(1.0, 0.6, 0.3)
    options = GenerationOptions(max_new_tokens=12)
    greedy = GreedyDecoder(model._stop_ids, options).run(_state(model, audio))
    beam = BeamSearchDecoder(model._stop_ids, replace(options, beam_size=1)).run(_state(model, audio))
    assert [g[0] for g in greedy] == [b[0] for b in beam]
    assert np.allclose([g[1] for g in greedy], [b[1] for b in beam])
    assert len({tuple(g[0]) for g in greedy}) > 1  # the clips give different outputs


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_equals_single(model, beam_size):
    audio = clips(1.0, 0.45, 0.7)
    options = GenerationOptions(max_new_tokens=10, beam_size=beam_size)
    batched = model.generate(audio, TRANSCRIBE, options)
    single = [model.generate([a], TRANSCRIBE, options)[0] for a in audio]
    assert [b.tokens for b in batched] == [s.tokens for s in single]
    assert all(len(b.tokens) > 0 for b in batched)


def test_stream_gives_the_greedy_text(model):
    audio = clips(0.8)[0]
    options = GenerationOptions(max_new_tokens=12)
    pieces = list(model.stream(audio, TRANSCRIBE, options))
    assert len(pieces) > 1 and "".join(pieces) == model.generate([audio], TRANSCRIBE, options)[0].text


def test_text_only_mode_is_the_base_llm(folders, model):
    base = AutoModelForCausalLM.from_pretrained(folders[1]).double().eval()
    prompt = "hello world"
    ids = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                              add_generation_prompt=True, tokenize=True, return_dict=False)
    with torch.no_grad():
        reference = base.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                  eos_token_id=model._stop_ids[0], pad_token_id=model._stop_ids[0])
    reply = model.generate(None, prompt, GenerationOptions(max_new_tokens=8))[0]
    assert list(reply.tokens) == [t for t in reference[0, len(ids):].tolist() if t not in model._stop_ids]
    with torch.no_grad():  # and the LoRA does change the LLM when audio is present
        x = torch.tensor([ids])
        assert not torch.allclose(model.llm(input_ids=x).logits, base(input_ids=x).logits)
        with model.text_mode():
            torch.testing.assert_close(model.llm(input_ids=x).logits, base(input_ids=x).logits)
        assert not torch.allclose(model.llm(input_ids=x).logits, base(input_ids=x).logits)  # LoRA back on
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with model.text_mode():  # switches the LoRA layers only: what trains stays as it was
        assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    twin = copy.deepcopy(model)
    with twin.text_mode():  # finds (and keeps) its LLM's LoRA layers
        pass
    twin.llm = copy.deepcopy(model.llm)  # a new LLM object: its own LoRA layers, not the ones found before
    with torch.no_grad(), twin.text_mode():
        torch.testing.assert_close(twin.llm(input_ids=x).logits, base(input_ids=x).logits)
        assert not torch.allclose(model.llm(input_ids=x).logits, base(input_ids=x).logits)


def test_loss_trains_only_adapter_and_lora(folders):
    model = build(folders, adapter="ctc").train()
    audio, lengths = _pad(clips(1.0, 0.5))
    out = model(audio, lengths, [TRANSCRIBE, instruction("translate")], ["hello world", "paris"],
                transcripts=["hello world", None])
    assert out.aux_loss is not None and torch.isfinite(out.loss) and out.n_tokens > 4
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") or "lora_" in n for n in trainable)
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    assert all(not p.requires_grad for p in model.encoder.parameters())


def test_ctc_only_training_never_runs_the_llm(folders, monkeypatch):
    model = build(folders, adapter="ctc-posterior", lora=False).train()
    audio, lengths = _pad(clips(1.0, 0.5))

    def refuse(*args, **kwargs):
        raise AssertionError("the LLM ran")

    with monkeypatch.context() as patch:
        patch.setattr(model.llm, "forward", refuse)
        out = model(audio, lengths, [TRANSCRIBE] * 2, ["hello world", "paris"],
                    transcripts=["hello world", "paris"], lm_weight=0.0)
    assert out.n_tokens == 0 and torch.equal(out.loss.detach(), out.aux_loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.adapter.parameters())
    with pytest.raises(ValueError, match="needs a CTC adapter"):
        build(folders, adapter="linear")(audio, lengths, [TRANSCRIBE] * 2, ["a", "b"], lm_weight=0.0)
    reply = model.eval().generate(clips(0.6), TRANSCRIBE, GenerationOptions(max_new_tokens=4))[0]
    assert len(reply.tokens) <= 4  # the LLM reads the mixed token embeddings


def test_ctc_posterior_vocabulary_subset_survives_save_and_load(folders, tmp_path):
    model = build(folders, adapter="ctc-posterior", lora=False)
    full = model.adapter.config.vocab_size
    model.adapter.fit_vocabulary(model.tokenizer, ["hello world", "paris"])
    kept = model.adapter.token_ids.tolist()
    assert model.adapter.config.vocab_size == len(kept) + 1 < full
    vocab = model.ctc_vocab
    ids = vocab.encode("hello world")
    assert ids and max(ids) <= len(kept) and vocab.decode(ids) == "hello world"
    audio = clips(0.8)
    options = GenerationOptions(max_new_tokens=4)
    before = model.generate(audio, TRANSCRIBE, options)[0].tokens
    loaded = load_speechlm(save_speechlm(model, tmp_path / "subset"))
    assert loaded.adapter.token_ids.tolist() == kept
    assert loaded.ctc_vocab.encode("paris") == vocab.encode("paris")
    assert loaded.generate(audio, TRANSCRIBE, options)[0].tokens == before
    # asr_decoder="ctc": the transcribe instruction is answered by the CTC path, the rest by the LLM
    ctc_model = SpeechLLM(replace(model.config, asr_decoder="ctc"), model.encoder, model.adapter, model.llm,
                          model.tokenizer).eval()
    two = clips(0.8, 0.5)
    replies = ctc_model.generate(two, [TRANSCRIBE, instruction("translate")], options)
    padded, lengths = _pad(two)
    units = model.adapter.greedy_units(*model.encode_frames(padded, lengths))
    assert replies[0].text == model.ctc_vocab.decode(units[0]).strip()
    assert replies[1].tokens == model.generate(two[1:], instruction("translate"), options)[0].tokens
    with pytest.raises(ValueError, match="asr_decoder"):
        replace(model.config, asr_decoder="whisper")
    # ctc_beam: prefix beam search with the (LoRA-free) LLM as language model, blank penalty included
    beam = {"beam_size": 3, "lm_weight": 0.5, "token_bonus": 0.5, "blank_skip": 1.0}
    model.adapter.config = replace(model.adapter.config, blank_penalty=0.7)
    lm_model = SpeechLLM(replace(ctc_model.config, ctc_beam=beam), model.encoder, model.adapter, model.llm,
                         model.tokenizer).eval()
    log_probs, mask = lm_model.adapter.frame_log_probs(*model.encode_frames(padded, lengths))
    search = CTCPrefixBeamSearch(CTCBeamOptions(**beam), lambda n: LLMPrefixScorer(
        model.llm, model.adapter.token_ids, n, document_start_id(model.tokenizer)),
        rewarded_units=model.ctc_vocab.spoken_units())
    expected = search.decode([lp[m] for lp, m in zip(log_probs, mask, strict=True)])
    texts = [r.text for r in lm_model.generate(two, TRANSCRIBE, options)]
    assert texts == [model.ctc_vocab.decode(u).strip() for u in expected]
    assert lm_model.generate(two[1:], TRANSCRIBE, options)[0].text == texts[1]  # as alone as in a batch
    spoken = model.ctc_vocab.spoken_units()  # the token bonus is for units with a letter or digit
    assert model.ctc_vocab.encode("paris")[0] in spoken and model.ctc_vocab.encode(".")[0] not in spoken
    with pytest.raises(ValueError, match="beam_size"):
        replace(model.config, ctc_beam={"beam_size": 0})
    with pytest.raises(TypeError):
        replace(model.config, ctc_beam={"beams": 4})


def test_ctc_posterior_rare_tokens_are_respelt_from_kept_ones(folders):
    model = build(folders, adapter="ctc-posterior", lora=False,
                  adapter_options={"vocab_min_count": 2})
    model.adapter.fit_vocabulary(model.tokenizer, ["the cat", "the dog", "a cat"])
    vocab = model.ctc_vocab
    kept = set(model.adapter.token_ids.tolist())
    assert not {i for i in vocab.llm_ids(" dog") if i not in vocab.llm_ids(" cat")} <= kept  # rare: out
    for text in ("the dog", "zebra cat", "the catalogue"):
        ids = vocab.encode(text)
        assert 0 not in ids and vocab.decode(ids).strip() == text  # any word is still written


def test_save_load_round_trip(folders, model, tmp_path):
    model = build(folders, adapter="alignformer", audio_first=False)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = save_speechlm(model, tmp_path / "model", info={"steps": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "config.json", "lora"]
    assert not list(folder.glob(".*tmp"))
    document = json.loads((folder / "config.json").read_text())
    assert document["format"] == "speechllm" and document["adapter"] == "alignformer"
    assert document["prompt"]["audio_first"] is False and document["lora"]["rank"] == 4
    peft_document = json.loads((folder / "lora" / "adapter_config.json").read_text())
    assert peft_document["base_model_name_or_path"] == model.config.llm
    config, info = read_config(folder)
    assert replace(config, adapter_options={}) == replace(model.config, adapter_options={})
    assert config.adapter_options == vars(model.adapter.config) and info == {"steps": 3}  # every option
    loaded = load_speechlm(folder)
    a, b = model.trainable_state_dict(), loaded.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    audio = clips(0.7, 0.4)
    options = GenerationOptions(max_new_tokens=8)
    assert [g.tokens for g in model.generate(audio, TRANSCRIBE, options)] == [
        g.tokens for g in loaded.generate(audio, TRANSCRIBE, options)]
    save_speechlm(loaded, folder)  # overwriting in place keeps a whole folder
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.safetensors", "config.json", "lora"]


def test_a_phrase_book_travels_with_the_model_folder_and_keeps_replies_greedy(folders, tmp_path):
    from speechllm.generation import PhraseBook

    model = build(folders, lora=False)
    options = GenerationOptions(max_new_tokens=12, speculative=False)
    audio = clips(0.6)
    plain = model.generate(audio, TRANSCRIBE, options)[0]
    typed = model.generate(None, "hello there", options)[0]
    from speechllm.data_recipes import phrase_book  # the builder: the model's own replies

    assert phrase_book.build(model, ["hello there"], 12, progress=False).sam.tokens == [-1, *typed.tokens]
    assert len(list(phrase_book.prompts(6))) == 6
    PhraseBook([list(plain.tokens), list(typed.tokens)]).save(tmp_path / "phrases.safetensors")
    model.config = replace(model.config, phrases="phrases.safetensors")
    folder = save_speechlm(model.loaded_from(tmp_path), tmp_path / "model")
    assert (folder / "phrases.safetensors").read_bytes() == (tmp_path / "phrases.safetensors").read_bytes()
    loaded = load_speechlm(folder)
    assert len(loaded.phrase_book()) == 2
    drafted = GenerationOptions(max_new_tokens=12)
    assert loaded.generate(audio, TRANSCRIBE, drafted)[0].tokens == plain.tokens
    assert loaded.generate(None, "hello there", drafted)[0].tokens == typed.tokens
    assert "".join(loaded.stream(None, "hello there", drafted)) == typed.text
    (folder / "phrases.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="names a phrase book"):
        load_speechlm(folder)


def test_lora_folder_names_the_llm_portably():
    assert peft_base_name("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert peft_base_name("/models/my-llm") == "/models/my-llm"


def test_transcriber_protocol(model, tmp_path):
    import soundfile

    path = tmp_path / "a.wav"
    soundfile.write(path, clips(0.5)[0], 16000)
    transcriber = SpeechLLMTranscriber(model, batch_size=4, max_new_tokens=6, segmenter="fixed")
    results = list(transcriber.transcribe_many([str(path), str(tmp_path / "missing.wav"), clips(0.3)[0]]))
    assert [r[0] for r in results[:2]] == [str(path), str(tmp_path / "missing.wav")]
    assert isinstance(results[0][1], Transcript) and isinstance(results[1][1], AudioError)
    assert isinstance(results[2][1], Transcript) and results[0][1].duration == pytest.approx(0.5)
    assert results[0][1].text == model.generate([clips(0.5)[0]], TRANSCRIBE,
                                                GenerationOptions(max_new_tokens=6))[0].text


def test_instructions_registry():
    assert instruction("translate") == "Translate the speech into English."
    assert instruction("passage-question", "Who?").endswith("Who?")
    with pytest.raises(ValueError, match="needs a prompt"):
        instruction("instruct")
    with pytest.raises(ValueError, match="unknown task"):
        instruction("summarise")


def test_hf_encoder_behind_the_same_interface(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from speechllm.speechlm import load_encoder

    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2),
                            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
                            feat_extract_norm="layer", do_stable_layer_norm=True)
    Wav2Vec2Model(config).save_pretrained(tmp_path / "w2v")
    encoder = load_encoder(str(tmp_path / "w2v"), kind="hf")
    audio, lengths = _pad(clips(0.2, 0.1))
    with torch.no_grad():
        hidden, mask = encoder(*encoder.features(audio, lengths))
        alone, alone_mask = encoder(*encoder.features(audio[1:, :1600], lengths[1:]))
    assert hidden.shape[-1] == encoder.dim == 16 and mask.sum(1).tolist() == [319, 159]
    n = int(alone_mask.sum())
    torch.testing.assert_close(hidden[1, :n], alone[0, :n], atol=1e-4, rtol=1e-4)
