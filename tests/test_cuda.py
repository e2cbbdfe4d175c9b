"""The GPU code paths, each against the CPU: quantized kernels, a quantized model, the speech-LLM's
generation and CTC + LLM beam search, and a training step. Skipped on machines without CUDA (CI);
run on a GPU with ``python -m pytest tests/test_cuda.py``."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import make_tiny_llm, make_tiny_whisper

from speechllm.quant import BACKENDS, QuantLinear, QuantSpec, quantize_weight
from speechllm.quant import backends as kernels
from speechllm.speechlm import GenerationOptions, LoraSpec, SpeechLLM, SpeechLLMConfig
from speechllm.speechlm.model import pad_audio

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")
# SmolLM2-135M's projections (k = 576, 1536) and a 1B-class MLP shape (k = 2048)
SHAPES = [(576, 576), (192, 576), (576, 1536), (1536, 576), (512, 2048)]
SPECS = [QuantSpec(4, 32), QuantSpec(4, 64), QuantSpec(8, -1), QuantSpec(8, 32)]


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_KERNEL_CACHE", str(tmp_path / "kernels.json"))
    monkeypatch.setattr(kernels, "_CHOICES", {})
    monkeypatch.setattr(kernels, "_LOADED", False)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("m", [1, 64])
def test_cuda_backends_match_the_dequantized_reference(spec, shape, m):
    n, k = shape
    usable = [b for b in BACKENDS.values() if b.name != "compile" and b.supports(spec, n, k, CUDA)]
    assert usable, f"no backend takes {spec.name} {n}x{k} on CUDA"
    torch.manual_seed(0)
    qw = quantize_weight(torch.randn(n, k), spec).to(CUDA)
    x = torch.randn(m, k, device=CUDA)
    ref = F.linear(x.double(), qw.dequantize().double()).float()
    for backend in usable:
        out = backend.run(backend.prepare(qw), x)
        assert out.device.type == "cuda" and out.shape == ref.shape and out.dtype == x.dtype, backend.name
        error = ((out - ref).abs().max() / ref.abs().max()).item()
        assert error < (2e-2 if backend.exact else 6e-2), f"{backend.name}: {error}"


def test_quant_linear_on_cuda_chooses_and_matches_cpu():
    torch.manual_seed(0)
    cpu = QuantLinear.from_linear(torch.nn.Linear(2048, 512), QuantSpec(4, 32))
    gpu = QuantLinear.from_linear(torch.nn.Linear(2048, 512), QuantSpec(4, 32))
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to(CUDA)
    x = torch.randn(3, 7, 2048)
    with torch.no_grad():
        expected = cpu(x)
        out = gpu(x.to(CUDA))
    assert out.device.type == "cuda"
    assert ((out.cpu() - expected).abs().max() / expected.abs().max()).item() < 2e-2
    assert gpu._chosen["small"].exact
    assert any("|cuda|" in key for key in kernels._CHOICES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_whisper(root / "whisper"), make_tiny_llm(root / "llm")


def clips(*seconds):
    rng = np.random.default_rng(0)
    return [(0.3 * np.sin(2 * np.pi * (200 + 90 * i) * np.arange(int(s * 16000)) / 16000)
             + 0.05 * rng.standard_normal(int(s * 16000))).astype(np.float32) for i, s in enumerate(seconds)]


def build(folders, adapter: str, lora: bool) -> SpeechLLM:
    whisper, llm = folders
    options = {"hidden_dim": 32} if adapter == "linear" else {"d_ffn": 32}
    config = SpeechLLMConfig(encoder=str(whisper), adapter=adapter, llm=str(llm), adapter_options=options,
                             lora=LoraSpec(rank=4) if lora else None)
    torch.manual_seed(0)
    model = SpeechLLM.build(config)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("beam_size", [1, 3])
def test_speechllm_generates_on_cuda_as_on_cpu(folders, beam_size):
    model = build(folders, "linear", lora=True).double()
    audio = clips(1.0, 0.5)
    options = GenerationOptions(max_new_tokens=8, beam_size=beam_size)
    expected = [r.tokens for r in model.generate(audio, "Transcribe the speech.", options)]
    model.to(CUDA)
    assert model.device.type == "cuda"
    got = [r.tokens for r in model.generate(audio, "Transcribe the speech.", options)]
    assert got == expected and all(expected)


def test_ctc_llm_beam_search_on_cuda_as_on_cpu(folders):
    model = build(folders, "ctc-posterior", lora=False)
    model.adapter.fit_vocabulary(model.tokenizer, ["hello world", "paris is a city", "the cat sat"])
    beam = {"beam_size": 3, "lm_weight": 0.5, "token_bonus": 0.5, "blank_skip": 1.0}
    model = SpeechLLM(replace(model.config, asr_decoder="ctc", ctc_beam=beam), model.encoder, model.adapter,
                      model.llm, model.tokenizer).double().eval()
    audio = clips(0.8, 0.5, 1.2)
    expected = model.ctc_transcripts(audio)
    model.to(CUDA)
    assert model.ctc_transcripts(audio) == expected


def test_training_step_on_cuda(folders):
    model = build(folders, "alignformer", lora=True).train().to(CUDA)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.device.type == "cuda" for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    texts = ["hello world", "paris"]
    audio, lengths = pad_audio(clips(1.0, 0.6))
    losses = []
    for _ in range(5):
        loss = model(audio, lengths, ["Transcribe the speech."] * 2, texts, transcripts=texts).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_tts_stages_train_on_cuda(folders, tmp_path, fake_tts_cache):
    """Every TTS training stage and the tokens step with --device cuda; the voice then speaks on the CPU."""
    from speechllm.tts import load
    from speechllm.tts.synthesize import SynthesisOptions
    from speechllm.tts.train import main

    cache = fake_tts_cache(tmp_path / "cache")
    common = ["--cache", str(cache), "--batch-size", "2", "--log-every", "1", "--save-every", "2",
              "--eval-every", "2", "--steps", "2", "--device", "cuda"]
    run = lambda *a: main([*a, *common])  # noqa: E731
    assert run("--stage", "tokenizer", "--out", str(tmp_path / "tok")) == 0
    assert run("--stage", "tokens", "--out", str(tmp_path / "tok")) == 0
    assert run("--stage", "vocoder", "--out", str(tmp_path / "voc")) == 0
    assert run("--stage", "flow", "--out", str(tmp_path / "flow"), "--tokenizer", str(tmp_path / "tok")) == 0
    assert run("--stage", "lm", "--out", str(tmp_path / "lm"), "--tokenizer", str(tmp_path / "tok"),
               "--backbone", str(folders[1]), "--layers", "2", "--ratio", "2:5") == 0
    assert run("--stage", "assemble", "--out", str(tmp_path / "voice"), "--lm", str(tmp_path / "lm"),
               "--flow", str(tmp_path / "flow"), "--vocoder", str(tmp_path / "voc")) == 0
    voice = load(str(tmp_path / "voice"))
    voice.options = SynthesisOptions(flow_steps=2, max_speech_per_text=1.0)
    assert len(voice.synthesize("Hello.")) > 0


def test_whisper_hearing_follows_the_model_to_cuda(folders):
    whisper, llm = folders
    config = SpeechLLMConfig(encoder=str(whisper), adapter="ctc-posterior", llm=str(llm), hearing="whisper",
                             adapter_options={"d_ffn": 32})
    model = SpeechLLM.build(config).eval()
    audio = clips(1.0)
    expected = [r.text for r in model.generate(audio, "Transcribe the speech.")]
    model.to(CUDA)  # moves the encoder it shares with Whisper; the decoder follows at the next clip
    assert [r.text for r in model.generate(audio, "Transcribe the speech.")] == expected
    assert len(model.generate(audio, "What is said?", GenerationOptions(max_new_tokens=4))) == 1
