"""Whole models: GGUF import, quantized folders, RTN/AWQ/QUAD, LoRA on the 4-bit base, generation."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from speechllm.generation import GenerationOptions, generate
from speechllm.quant import QuantLinear, QuantSpec
from speechllm.quant import backends as kernels
from speechllm.quant.model import (
    QuantConfig,
    dequantize_model,
    load_quantized,
    quantize,
    save_quantized,
    weight_bytes,
)

VOCAB = 96


@pytest.fixture(autouse=True)
def _setup(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLLM_KERNEL_CACHE", str(tmp_path / "kernels.json"))
    monkeypatch.setattr(kernels, "_CHOICES", {})
    monkeypatch.setattr(kernels, "_LOADED", False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama(tie: bool = True, seed: int = 0, outliers: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=tie, initializer_range=0.1, eos_token_id=0, bos_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    if outliers:  # a few huge activation channels, as real LLMs have
        with torch.no_grad():
            for layer in model.model.layers:
                for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                    norm.weight[[3, 17, 40]] = 25.0
    return model


def ids(n: int = 2, t: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, use_cache=False).logits


def kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Mean KL(ref || out) per token."""
    ref, out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
    return F.kl_div(out.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean").item()


# --- GGUF ------------------------------------------------------------------------------------------

def _ggml_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order (convert_hf_to_gguf.py)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_gguf_import_matches_ggml_dequantization(tmp_path):
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    from speechllm.quant.gguf import _unrope_perm, read_gguf
    from speechllm.quant.model import build_model

    model = tiny_llama(tie=False)
    cfg = model.config
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_vocab_size(VOCAB)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    kinds = {"attn_q": Q.Q4_1, "attn_k": Q.Q4_0, "attn_v": Q.Q8_0, "attn_output": Q.Q4_1,
             "ffn_gate": Q.Q4_0, "ffn_up": Q.Q4_1, "ffn_down": Q.Q8_0}
    hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}
    expected = {}  # HF name -> what ggml's own dequantization gives, in HF row order

    def add(name: str, hf_name: str, w: np.ndarray, kind, heads: int = 0):
        stored = _ggml_permute(w, heads) if heads else w
        if kind in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
            data = quants.quantize(stored, kind)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
            back = torch.from_numpy(quants.dequantize(data, kind))
            expected[hf_name] = back[_unrope_perm(back.shape[0], heads)] if heads else back
        else:
            writer.add_tensor(name, stored)
            expected[hf_name] = torch.from_numpy(w)

    add("token_embd.weight", "model.embed_tokens.weight", sd["model.embed_tokens.weight"], Q.Q8_0)
    add("output.weight", "lm_head.weight", sd["lm_head.weight"], Q.Q4_0)
    add("output_norm.weight", "model.norm.weight", sd["model.norm.weight"], Q.F32)
    for i in range(2):
        p = f"model.layers.{i}."
        for short, kind in kinds.items():
            heads = {"attn_q": 4, "attn_k": 2}.get(short, 0)
            name = p + hf[short] + ".weight"
            add(f"blk.{i}.{short}.weight", name, sd[name], kind, heads)
        add(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight", sd[p + "input_layernorm.weight"],
            Q.F32)
        add(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight",
            sd[p + "post_attention_layernorm.weight"], Q.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ckpt = read_gguf(path)
    assert ckpt.config["num_key_value_heads"] == 2 and ckpt.config["tie_word_embeddings"] is False
    specs = {k: w.spec for k, w in ckpt.tensors.items() if hasattr(w, "spec")}
    assert specs["model.layers.0.self_attn.q_proj.weight"] == QuantSpec(4, 32)
    assert specs["model.layers.0.self_attn.v_proj.weight"] == QuantSpec(8, 32)
    for name, ref in expected.items():  # integer re-packing only: the same numbers ggml gives
        w = ckpt.tensors[name]
        got = w.dequantize() if hasattr(w, "spec") else w
        assert torch.allclose(got, ref.float(), rtol=0, atol=1e-6), name

    from transformers import AutoConfig

    raw = dict(ckpt.config)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    imported = build_model(config, ckpt.tensors)
    assert isinstance(imported.model.layers[0].mlp.down_proj, QuantLinear)
    reference = tiny_llama(tie=False)
    reference.load_state_dict({k: v.float() for k, v in expected.items()}, strict=False)
    x = ids()
    assert kl(logits(reference, x), logits(imported, x)) < 1e-3  # kernels compute in bf16 at most
    # as speechllm.llm imports a GGUF: activations may be quantized too (int4-rows where the CPU has VNNI)
    as_llama_cpp = build_model(config, ckpt.tensors, body_exact=False)
    assert not as_llama_cpp.model.layers[0].mlp.down_proj.exact
    assert kl(logits(reference, x), logits(as_llama_cpp, x)) < 1e-3


# --- folders and methods ---------------------------------------------------------------------------

@pytest.mark.parametrize("config", [QuantConfig(),
                                    QuantConfig(bits=8, group_size=-1, embed_bits=0, head_bits=0),
                                    QuantConfig(method="awq", group_size=64),
                                    QuantConfig(method="quad", act_bits=8, rank=4)], ids=lambda c: c.method)
def test_quantized_folder_round_trip(tmp_path, config):
    model = tiny_llama()
    calib = [ids(1, 32, seed=s) for s in range(4)]
    quantize(model, config, calib)
    x = ids()
    before = logits(model, x)
    folder = save_quantized(model, tmp_path / "q")
    again = load_quantized(folder)
    assert torch.allclose(logits(again, x), before, atol=1e-5)
    assert weight_bytes(again, include_prepared=False) <= weight_bytes(model, include_prepared=False)
    assert again.config.quantization_config["method"] == config.method


def test_int4_model_is_small_and_close():
    model = tiny_llama()
    ref = logits(model, ids())
    fp32 = weight_bytes(model)
    quantize(model, QuantConfig(embed_bits=4, head_bits=4))
    assert weight_bytes(model, include_prepared=False) < 0.2 * fp32
    assert kl(ref, logits(model, ids())) < 0.06


def _errors(configs: dict[str, QuantConfig]) -> dict[str, float]:
    calib = [ids(1, 64, seed=s) for s in range(8)]
    x = ids(4, 32, seed=99)  # held out
    ref = logits(tiny_llama(outliers=True), x)
    out = {}
    for name, config in configs.items():
        model = quantize(tiny_llama(outliers=True), config, calib)
        out[name] = kl(ref, logits(model, x))
    return out


def test_awq_beats_rtn_and_quad_beats_rtn_at_w4a4():
    keep = {"head_bits": 0, "embed_bits": 0}
    err = _errors({"rtn": QuantConfig(group_size=64, **keep),
                   "awq": QuantConfig("awq", group_size=64, **keep),
                   "rtn-a4": QuantConfig(act_bits=4, **keep),
                   "quad-a4": QuantConfig("quad", act_bits=4, rank=8, **keep)})
    assert err["awq"] < err["rtn"]
    assert err["quad-a4"] < 0.5 * err["rtn-a4"]


def test_quad_outlier_finetuning_lowers_the_loss():
    from speechllm.quant.quad import QuadLinear, finetune_outliers

    model = quantize(tiny_llama(outliers=True), QuantConfig("quad", act_bits=4, rank=4),
                     [ids(1, 32, seed=s) for s in range(4)])
    assert sum(isinstance(m, QuadLinear) for m in model.modules()) == 14
    batches = [ids(2, 32, seed=s) for s in range(2)]
    codes = model.model.layers[0].mlp.up_proj.base.codes.clone()
    losses = finetune_outliers(model, batches, steps=12, lr=3e-3)
    assert np.mean(losses[-2:]) < losses[0]
    assert torch.equal(model.model.layers[0].mlp.up_proj.base.codes, codes)  # only outlier weights moved


# --- LoRA on the quantized base --------------------------------------------------------------------

def _lora_pair():
    from peft import LoraConfig
    from peft import get_peft_model as plain_peft

    from speechllm.quant.lora import get_peft_model

    qmodel = quantize(tiny_llama(), QuantConfig())
    fmodel = dequantize_model(copy.deepcopy(qmodel))  # the same numbers in fp32 nn.Linear
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.0}
    q, f = get_peft_model(qmodel, LoraConfig(**kw)), plain_peft(fmodel, LoraConfig(**kw))
    torch.manual_seed(5)
    fp = dict(f.named_parameters())
    for name, p in q.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.05)
            fp[name].data.copy_(p.data)
    return q, f


def test_lora_gradients_match_the_fp32_model():
    from speechllm.quant.lora import QuantLoraLinear

    q, f = _lora_pair()
    assert isinstance(q.base_model.model.model.layers[1].mlp.down_proj, QuantLoraLinear)
    x = ids()
    q(x, labels=x).loss.backward()
    f(x, labels=x).loss.backward()
    fp = dict(f.named_parameters())
    trained = [(n, p) for n, p in q.named_parameters() if p.requires_grad]
    assert len(trained) == 12 and all("lora_" in n and p.dtype == torch.float32 for n, p in trained)
    for name, p in trained:
        ref = fp[name].grad
        assert (p.grad - ref).norm() / ref.norm() < 0.03, name  # int4 kernels may compute in bf16
    assert all(b.grad is None for b in q.buffers())


def test_lora_saves_as_peft_folder_and_merges_by_requantizing(tmp_path):
    from peft import LoraConfig, PeftModel

    from speechllm.quant.lora import merge_and_requantize, register

    q, _ = _lora_pair()
    x = ids()
    out = logits(q, x)
    quantization_error = kl(logits(tiny_llama(), x), logits(quantize(tiny_llama(), QuantConfig()), x))
    q.save_pretrained(tmp_path / "lora")
    files = {p.name for p in (tmp_path / "lora").iterdir()}
    assert files >= {"adapter_config.json", "adapter_model.safetensors"}
    base = quantize(tiny_llama(), QuantConfig())
    again = PeftModel.from_pretrained(base, tmp_path / "lora", config=register(
        LoraConfig.from_pretrained(tmp_path / "lora")))
    assert torch.allclose(logits(again, x), out, atol=1e-5)

    layer = again.base_model.model.model.layers[0].self_attn.q_proj
    codes = layer.base_layer.codes.clone()
    layer.merge()
    assert not torch.equal(layer.base_layer.codes, codes)
    layer.unmerge()
    assert torch.equal(layer.base_layer.codes, codes)

    merged = merge_and_requantize(again)
    proj = merged.model.layers[0].self_attn.q_proj
    assert type(proj) is QuantLinear and proj.spec == QuantSpec(4, 32)
    assert kl(out, logits(merged, x)) < 2 * quantization_error  # one more rounding of the same size


# --- generation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantized", [False, True])
def test_engine_greedy_equals_transformers_generate(quantized):
    model = tiny_llama(tie=False, seed=3)
    if quantized:
        quantize(model, QuantConfig(bits=8, group_size=-1))
    prompt = ids(1, 7, seed=4)
    with torch.no_grad():
        hf = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    for speculative in (False, True):
        ours = generate(model, prompt, GenerationOptions(max_new_tokens=12, eos_token_id=-1,
                                                         stop_repetition=False, speculative=speculative))
        assert ours.tokens == hf[0, 7:].tolist() and not ours.finished and ours.stop == "length"


def test_beam_and_sampling_share_the_engine():
    model = tiny_llama(tie=False, seed=3)
    prompt = ids(1, 5, seed=6)
    base = dict(max_new_tokens=10, eos_token_id=-1, stop_repetition=False)
    greedy = generate(model, prompt, GenerationOptions(**base))
    beam1 = generate(model, prompt, GenerationOptions(**base, beam_size=1))
    top1 = generate(model, prompt, GenerationOptions(**base, temperature=0.7, top_k=1, seed=0))
    assert greedy.tokens == beam1.tokens == top1.tokens
    a, b = (generate(model, prompt, GenerationOptions(**base, temperature=1.5, seed=7)) for _ in range(2))
    assert a.tokens == b.tokens
    beams = generate(model, prompt, GenerationOptions(**{**base, "max_new_tokens": 6}, beam_size=3))
    assert len(beams.tokens) == 6
    with torch.no_grad():  # the best beam scores at least as well as greedy under the model
        def score(tokens):
            seq = torch.cat([prompt, torch.tensor([tokens])], 1)
            lp = model(seq).logits[0, prompt.shape[1] - 1:-1].log_softmax(-1)
            return lp.gather(1, torch.tensor(tokens)[:, None]).sum().item()
        assert score(beams.tokens) >= score(greedy.tokens[:6]) - 1e-4


# --- loading, the CLI, the speech-LLM's finetune on the 4-bit base ---------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tiny_models import make_tiny_llm

    return make_tiny_llm(tmp_path_factory.mktemp("llm") / "llm", hidden=64)


@pytest.mark.parametrize("quant, formats", [("int4", {"int4-g32", "int8-channel"}),
                                            ("int8", {"int8-channel"}), ("none", set())])
def test_load_llm_formats(tiny_folder, quant, formats):
    from speechllm.llm import load_llm, quant_summary

    model, tokenizer = load_llm(tiny_folder, quant=quant)
    assert set(quant_summary(model)) == formats
    assert tokenizer.chat_template


def test_quantize_cli(tiny_folder, tmp_path, capsys):
    from tiny_models import _CORPUS

    from speechllm.apps.cli import main
    from speechllm.llm import load_llm, quant_summary

    text = tmp_path / "calib.txt"
    text.write_text("\n".join(_CORPUS * 12))
    out = tmp_path / "q"
    code = main(["quantize", "--model", str(tiny_folder), "--method", "awq", "--bits", "4", "--group", "32",
                 "--calib", str(text), "--out", str(out), "--seq-len", "16", "--samples", "8", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "perplexity" in printed and "model folder" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    model, _ = load_llm(out)
    assert quant_summary(model)["int4-g32"] == 14
    assert main(["quantize", "--model", str(tiny_folder), "--method", "gptq", "--calib", str(text),
                 "--out", str(out)]) == 1
    assert "--method must be one of awq, quad, rtn" in capsys.readouterr().err
    assert main(["quantize", "--model", str(tiny_folder), "--calib", str(tmp_path / "nope.txt"),
                 "--out", str(out)]) == 1


def test_finetune_trains_lora_on_the_int4_base(tmp_path, capsys):
    import json

    import soundfile
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.apps.cli import main
    from speechllm.quant.lora import QuantLoraLinear
    from speechllm.speechlm import load_speechlm

    t = np.arange(8000) / 16000
    soundfile.write(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    (tmp_path / "train.jsonl").write_text(json.dumps({"audio": "tone.wav", "text": "hello world"}) + "\n")
    whisper, llm = make_tiny_whisper(tmp_path / "w"), make_tiny_llm(tmp_path / "l")
    out = tmp_path / "out"
    manifest = str(tmp_path / "train.jsonl")
    code = main(["finetune", "--train", manifest, "--eval", manifest, "--adapter", "linear",
                 "--adapter-options", '{"hidden_dim": 16}', "--encoder", str(whisper), "--llm", str(llm),
                 "--quant", "int4", "--lora-rank", "2", "--out", str(out), "--steps", "3",
                 "--batch-size", "1", "--lr", "1e-2", "--eval-every", "3", "--max-new-tokens", "2",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "lora" / "adapter_config.json").is_file()
    model = load_speechlm(out)
    layer = model.llm.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, QuantLoraLinear) and isinstance(layer.base_layer, QuantLinear)
    assert layer.lora_B["default"].weight.abs().sum() > 0  # the adapters trained (B starts at zero)
