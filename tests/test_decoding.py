"""The decoding engine: every strategy on the static-cache engine and on the Hugging Face fallback,
the registry that picks them, and speculative decoding that gives greedy's output exactly."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from speechllm.generation import (
    BeamSearchDecoder,
    DraftStats,
    GenerationOptions,
    GreedyDecoder,
    HFState,
    PhraseBook,
    Reply,
    SamDrafter,
    StaticState,
    SuffixAutomaton,
    attention,
    engine_for,
    generate,
    open_state,
    rowwise,
    run_decoder,
    state_class,
    token_stream,
)
from speechllm.generation.constraints import START, QuoteConstraint, TokenBytes
from speechllm.speechlm.model import pad_audio

VOCAB = 96
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add overhead


def _tiny(config_class, model_class, seed: int):
    """A two-layer model of the Llama layout (Llama, Qwen2) with random weights."""
    torch.manual_seed(seed)
    cfg = config_class(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       initializer_range=0.2, eos_token_id=0, bos_token_id=1)
    return model_class(cfg).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return _tiny(LlamaConfig, LlamaForCausalLM, seed)


def tiny_qwen2(seed: int = 1) -> Qwen2ForCausalLM:
    """Qwen2: q/k/v biases, and layer types in its config (all global) but one rotary table."""
    return _tiny(Qwen2Config, Qwen2ForCausalLM, seed)


def tiny_gemma3(seed: int = 0, window: int = 512) -> Gemma3ForCausalLM:
    """Gemma 3's layout: q/k norms, four norms a layer, a GELU gate, sliding and global layers with their
    own rotary bases, a query scale of its own."""
    torch.manual_seed(seed)
    layers = ["sliding_attention", "sliding_attention", "full_attention"]
    cfg = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                           query_pre_attn_scalar=24, sliding_window=window, layer_types=layers,
                           max_position_embeddings=256, initializer_range=0.2, eos_token_id=0, bos_token_id=1,
                           pad_token_id=0)
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # Gemma's norms start at 1 + 0: make them matter
                p.normal_(0, 0.3)
    return model


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                      eos_token_id=0, bos_token_id=1)).eval()


def prompt(seed: int, n: int = 9) -> torch.Tensor:
    return torch.randint(2, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def opts(**kw) -> GenerationOptions:
    return GenerationOptions(**{"max_new_tokens": 40, "eos_token_id": 0, **kw})


# --- the suffix automaton -------------------------------------------------------------------------

def test_the_automaton_holds_every_substring_and_nothing_else():
    text = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 1, 4]
    sam = SuffixAutomaton(text)

    def walk(seq):
        s = 0
        for t in seq:
            if t not in sam.next[s]:
                return None
            s = sam.next[s][t]
        return s

    subs = {tuple(text[i:j]) for i in range(len(text)) for j in range(i + 1, len(text) + 1)}
    for sub in subs:
        state = walk(sub)
        assert state is not None
        end = sam.end[state]  # a place where it really ends
        assert tuple(text[end - len(sub) + 1:end + 1]) == sub
    assert walk([1, 1]) is None and walk([4, 4]) is None and walk([9, 3, 1, 4, 1]) is None
    assert len(sam.length) <= 2 * len(text)  # linear size


def test_the_drafter_proposes_what_followed_the_match():
    drafter = SamDrafter([10, 11, 12, 13, 14, 15, 16], min_match=2)
    for t in (20, 11, 12):
        drafter.append(t)
    assert drafter.draft(3) == [13, 14, 15]
    drafter.append(99)  # no match: no draft
    assert drafter.draft(3) == []
    drafter.append(11)
    assert drafter.draft(3) == []  # one token matched: under min_match
    for t in (20, 11):  # "20 11" last came in the reply itself, followed by 12 99
        drafter.append(t)
    assert drafter.draft(2) == [12, 99]


def test_the_phrase_book_drafts_where_the_prompt_has_nothing(tmp_path):
    book = PhraseBook([[50, 51, 52, 53], [60, 61, 62]])
    book.save(tmp_path / "phrases.safetensors")
    book = PhraseBook.read(tmp_path / "phrases.safetensors")
    assert len(book) == 2
    drafter = SamDrafter([10, 11, 12, 13, 14], min_match=1, phrases=book)
    drafter.append(50)  # not in the prompt: the book's continuation
    assert drafter.draft(2) == [51, 52]
    drafter.append(11)  # in the prompt (and not the book): the prompt's continuation
    assert drafter.draft(3) == [12, 13, 14]
    for t in (99, 52, 53):  # the end of a reply in the book: no draft across the separator
        drafter.append(t)
    assert drafter.draft(3) == []
    drafter.append(60)
    assert drafter.draft(5) == [61, 62]
    assert SamDrafter([1, 2], min_match=1).draft(3) == []  # no book, no match
    bad = tmp_path / "bad.safetensors"
    from speechllm.files import atomic_save_tensors
    atomic_save_tensors({"tokens": torch.tensor([5, -1, 6], dtype=torch.int32)}, bad)
    with pytest.raises(ValueError, match="not a phrase book"):
        PhraseBook.read(bad)


# --- the registry -----------------------------------------------------------------------------------

def test_registry_picks_the_engine_by_model_type():
    assert state_class(tiny_llama()) is StaticState
    assert state_class(tiny_gpt2()) is HFState
    assert state_class(tiny_llama(), "hf") is HFState
    with pytest.raises(ValueError, match="unknown engine"):
        state_class(tiny_llama(), "onnx")


# --- every strategy on both engines -----------------------------------------------------------------

@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2])
@pytest.mark.parametrize("engine", ["auto", "hf"])
def test_static_engine_equals_transformers_and_the_fallback(engine, make):
    model = make(1)
    ids = prompt(3)
    with torch.no_grad():
        hf = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    ours = generate(model, ids, opts(max_new_tokens=16, eos_token_id=-1, stop_repetition=False,
                                     speculative=False, engine=engine))
    assert ours.tokens == hf[0, 9:].tolist()


@pytest.mark.parametrize("native", [True, False], ids=["native attention", "sdpa"])
def test_gemma3_decodes_on_the_static_engine_as_transformers_does(native):
    """Gemma 3 (q/k norms, norms after the attention and the MLP, sliding and global layers) on the static
    engine: transformers' greedy tokens, speculative drafts change nothing, and a verify pass gives each
    position a step's logits (past the sliding window too: :func:`test_sliding_windows_as_transformers`)."""
    from speechllm.quant.methods import QuantConfig
    from speechllm.quant.model import quantize

    model, ids = tiny_gemma3(3), prompt(5)
    if native and not engine_for(model).native:
        pytest.skip("the native attention kernel is not built here (no C compiler)")
    engine_for(model).native = native
    with torch.no_grad():
        hf = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    greedy = opts(max_new_tokens=24, eos_token_id=-1, stop_repetition=False, speculative=False)
    ours = generate(model, ids, greedy)
    assert ours.tokens == hf[0, 9:].tolist()
    drafted = generate(model, ids, opts(max_new_tokens=24, eos_token_id=-1, stop_repetition=False))
    assert drafted.tokens == ours.tokens
    quantize(model, QuantConfig(bits=4, group_size=32, head_bits=8))  # row-exact kernels: the verify pass
    engine_for(model).native = native
    tokens = prompt(6, 7)[0].tolist()
    with torch.no_grad():
        def fresh():
            return open_state(model, model.get_input_embeddings()(ids), torch.ones_like(ids),
                              torch.arange(ids.shape[1])[None], capacity=40)
        assert isinstance(fresh(), StaticState)
        state = fresh()
        stepped = torch.stack([state.step(torch.tensor([t]))[0] for t in tokens])
        verified = fresh().extend(torch.tensor([tokens]))[0]
    assert torch.equal(stepped, verified)


def tiny_mistral(window: int) -> MistralForCausalLM:
    """Mistral: the Llama layout with a sliding window over every layer."""
    torch.manual_seed(5)
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        initializer_range=0.2, eos_token_id=0, bos_token_id=1, sliding_window=window)
    return MistralForCausalLM(cfg).eval()


@pytest.mark.parametrize("native", [True, False], ids=["native attention", "sdpa"])
@pytest.mark.parametrize("make", [lambda: tiny_gemma3(3, window=16), lambda: tiny_mistral(12)],
                         ids=["gemma3", "mistral"])
def test_sliding_windows_as_transformers(make, native):
    """Past a sliding window of 16 (Gemma 3's sliding layers) or 12 (every Mistral layer) the static
    engine attends as transformers does: a prompt longer than the window (its prefill masked), a left-
    padded batch, a reply that runs far past it; a verify pass there still gives each position a step's
    logits bit for bit."""
    from speechllm.quant.methods import QuantConfig
    from speechllm.quant.model import quantize

    model = make()
    if native and not engine_for(model).native:
        pytest.skip("the native attention kernel is not built here (no C compiler)")
    engine_for(model).native = native
    greedy = opts(max_new_tokens=30, eos_token_id=-1, stop_repetition=False, speculative=False)
    for ids in (prompt(5), prompt(6, 21)):
        with torch.no_grad():
            hf = model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
        ours = generate(model, ids, greedy)
        assert ours.tokens == hf[0, ids.shape[1]:].tolist()
        assert generate(model, ids, opts(max_new_tokens=30, eos_token_id=-1, stop_repetition=False)).tokens \
            == ours.tokens
    rows = [prompt(7, 5)[0], prompt(8, 20)[0]]  # a batch: the short row left-padded
    ids, mask = torch.zeros(2, 20, dtype=torch.long), torch.zeros(2, 20, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 20 - len(r):], mask[i, 20 - len(r):] = r, 1
    positions, embed = (mask.cumsum(1) - 1).clamp(min=0), model.get_input_embeddings()
    options = opts(max_new_tokens=20, eos_token_id=-1, stop_repetition=False, speculative=False)
    with torch.no_grad():
        batched = run_decoder(open_state(model, embed(ids), mask, positions), [0], options)
        fallback = run_decoder(open_state(model, embed(ids), mask, positions, "hf"), [0], options)
    assert [b[0] for b in batched] == [f[0] for f in fallback]
    quantize(model, QuantConfig(bits=4, group_size=32, head_bits=8))  # row-exact kernels: the verify pass
    engine_for(model).native = native
    ids, tokens = prompt(9, 14), prompt(10, 7)[0].tolist()  # columns 14..20 cross the window
    with torch.no_grad():
        def fresh():
            state = open_state(model, model.get_input_embeddings()(ids), torch.ones_like(ids),
                               torch.arange(ids.shape[1])[None], capacity=24)
            assert isinstance(state, StaticState)
            return state
        state = fresh()
        stepped = torch.stack([state.step(torch.tensor([t]))[0] for t in tokens])
        verified = fresh().extend(torch.tensor([tokens]))[0]
    assert torch.equal(stepped, verified)


@pytest.mark.parametrize("native", ["1", "0"])
def test_the_engines_norm_gives_the_modules_numbers_row_by_row(native, monkeypatch):
    """The native norm (rowwise.c) or ``F.rms_norm``: the module's numbers up to float rounding, and each
    row the same alone as among others (a verify pass against its steps)."""
    from speechllm.generation import rowwise
    from speechllm.generation.static import _norm

    monkeypatch.setenv("SPEECHLLM_NATIVE", native)
    rowwise.library.cache_clear()
    try:
        norm = tiny_llama(2).model.layers[0].input_layernorm
        with torch.no_grad():
            norm.weight.normal_()
            x = torch.randn(3, 5, norm.weight.shape[0]) * 4
            fn = _norm(norm)
            assert fn is not norm
            assert torch.allclose(fn(x), norm(x), rtol=1e-6, atol=1e-6)
            assert torch.equal(fn(x), torch.cat([fn(x[:, j:j + 1]) for j in range(5)], 1))
    finally:
        rowwise.library.cache_clear()


def test_the_engine_follows_layers_wrapped_after_it_was_built():
    """LoRA on the output projections only (no fused layer changes): the engine must notice and
    decode with the deltas, as transformers does."""
    from speechllm.quant.lora import LoraConfig, get_peft_model

    model, ids = tiny_llama(1), prompt(3)
    before = generate(model, ids, opts(max_new_tokens=12, speculative=False, stop_repetition=False)).tokens
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["o_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        hf = wrapped.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    after = generate(wrapped, ids, opts(max_new_tokens=12, speculative=False, stop_repetition=False)).tokens
    assert after != before and after == hf[0, 9:].tolist()


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_every_strategy_runs_on_each_engine(make):
    model = make()
    ids = prompt(5)
    greedy = generate(model, ids, opts(speculative=False, stop_repetition=False))
    with torch.no_grad():  # the beam search with one beam picks greedy's tokens
        state = open_state(model, model.get_input_embeddings()(ids), torch.ones_like(ids),
                           torch.arange(ids.shape[1])[None])
        beam1 = BeamSearchDecoder([0], opts(stop_repetition=False)).run(state)[0][0]
    assert beam1 == greedy.tokens[:len(beam1)] and len(beam1) >= min(len(greedy.tokens), 40)
    top1 = generate(model, ids, opts(temperature=0.8, top_k=1, seed=0, stop_repetition=False))
    assert top1.tokens == greedy.tokens
    a, b = (generate(model, ids, opts(temperature=1.2, top_p=0.9, seed=3)) for _ in range(2))
    assert a.tokens == b.tokens
    beam = generate(model, ids, opts(beam_size=3, max_new_tokens=8))
    assert 0 < len(beam.tokens) <= 8
    assert generate(model, ids, opts(stop_repetition=False, speculative=True)).tokens == greedy.tokens


def test_batched_left_padded_rows_equal_single_rows_on_the_static_engine():
    model = tiny_llama(2)
    embed = model.get_input_embeddings()
    rows = [prompt(7, 5)[0], prompt(8, 9)[0]]
    width = 9
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    for options in (opts(speculative=False), opts(beam_size=2, max_new_tokens=10)):
        with torch.no_grad():
            batched = run_decoder(open_state(model, embed(ids), mask, positions), [0], options)
            fallback = run_decoder(open_state(model, embed(ids), mask, positions, "hf"), [0], options)
            single = [run_decoder(open_state(model, embed(r[None]), torch.ones(1, len(r), dtype=torch.long),
                                             torch.arange(len(r))[None]), [0], options)[0] for r in rows]
        assert [b[0] for b in batched] == [s[0] for s in single] == [f[0] for f in fallback]


# --- speculative decoding: greedy's output, token for token -----------------------------------------

def _stream(model, ids, options, seed, engine="auto"):
    stats = DraftStats()
    with torch.no_grad():
        state = open_state(model, model.get_input_embeddings()(ids), torch.ones_like(ids),
                           torch.arange(ids.shape[1])[None], engine)
        reply = Reply([0], options)
        for token, logprob in token_stream(state, [0], options, seed, stats):
            if not reply.add(token, logprob):
                break
    return reply, stats


@pytest.mark.parametrize("engine", ["auto", "hf"])
@pytest.mark.parametrize("budget", [40, 7])
def test_speculative_equals_greedy_on_copy_heavy_and_free_prompts(engine, budget):
    model = tiny_llama(4)
    for seed in range(4):
        ids = prompt(seed)
        options = opts(max_new_tokens=budget, stop_repetition=False, speculative=False)
        greedy, _ = _stream(model, ids, options, ())
        spec = opts(max_new_tokens=budget, stop_repetition=False, draft_tokens=5, speculative=True)
        wrong = list(greedy.tokens)
        wrong[len(wrong) // 2] = (wrong[len(wrong) // 2] + 1) % VOCAB  # a draft that goes wrong midway
        seeds = {
            "copy": ids[0].tolist() + list(greedy.tokens),  # the reply is in the prompt: drafts right
            "half": ids[0].tolist() + wrong,  # right until the changed token, then rolled back
            "free": prompt(100 + seed, 30)[0].tolist(),  # unrelated text: drafts mostly wrong
        }
        for name, draft_seed in seeds.items():
            reply, stats = _stream(model, ids, spec, draft_seed, engine)
            assert (reply.tokens, reply.stop) == (greedy.tokens, greedy.stop), (seed, name)
            assert abs(reply.logprob - greedy.logprob) < 1e-3
            assert len(reply.tokens) <= budget
            if engine == "hf":  # the fallback's verify pass is not row-exact: no drafts there
                assert stats.drafted == 0
            elif name == "copy" and len(greedy.tokens) > 3:
                assert stats.accepted > 0 and stats.passes < len(greedy.tokens)


def test_drafts_from_a_phrase_book_give_greedy_replies():
    model = tiny_llama(4)
    for seed in range(3):
        ids = prompt(seed)
        greedy, _ = _stream(model, ids, opts(max_new_tokens=30, stop_repetition=False, speculative=False), ())
        spec = opts(max_new_tokens=30, stop_repetition=False, draft_tokens=5)
        wrong = [(t + 1) % VOCAB for t in greedy.tokens]
        for replies in ([list(greedy.tokens)], [wrong, list(greedy.tokens)[:5]]):  # right; wrong, part right
            stats = DraftStats()
            with torch.no_grad():
                state = open_state(model, model.get_input_embeddings()(ids), torch.ones_like(ids),
                                   torch.arange(ids.shape[1])[None])
                tokens = [t for t, _ in token_stream(state, [0], spec, (), stats, PhraseBook(replies))]
            assert tokens[:len(greedy.tokens)] == list(greedy.tokens), seed
            assert stats.drafted > 0
        off = opts(max_new_tokens=30, stop_repetition=False, draft_tokens=5, phrases=False)
        runs = []
        for options, book in ((off, PhraseBook([list(greedy.tokens)])), (spec, None)):
            stats = DraftStats()
            with torch.no_grad():
                state = open_state(model, model.get_input_embeddings()(ids), torch.ones_like(ids),
                                   torch.arange(ids.shape[1])[None])
                list(token_stream(state, [0], options, (), stats, book))
            runs.append(stats)
        assert runs[0] == runs[1]  # phrases off: drafts as without a book


def test_speculation_stops_where_greedy_does_at_a_loop():
    model = tiny_llama(4)
    for seed in range(6):
        ids = prompt(seed)
        greedy, _ = _stream(model, ids, opts(max_new_tokens=80, speculative=False), ())
        spec, stats = _stream(model, ids, opts(max_new_tokens=80, draft_tokens=6, speculative=True),
                              ids[0].tolist() + list(greedy.tokens))
        assert (spec.tokens, spec.stop) == (greedy.tokens, greedy.stop)


# --- replies held to quotes (QuoteConstraint) on every strategy -------------------------------------

def _quotes() -> QuoteConstraint:
    """Tokens 2.. as letters, spaced letters and letter pairs; a heard text and a refusal to quote."""
    letters = [chr(97 + i) for i in range(26)]
    pieces = letters + [" " + c for c in letters] + [a + b for a in "aeiou" for b in letters][:VOCAB - 54]
    vocab = TokenBytes({t: p.encode() for t, p in enumerate(pieces, start=2)})
    return QuoteConstraint(vocab, ["the cat sat on the mat and the dog ran far away"], ["no idea"], [0])


def _quoted(model, ids, engine, quote, options, decoder=None, drafts=()) -> list[int]:
    """The reply's tokens (stop token left out) under ``quote``: streamed, or by ``decoder``."""
    with torch.no_grad():
        state = open_state(model, model.get_input_embeddings()(ids), torch.ones_like(ids),
                           torch.arange(ids.shape[1])[None], engine)
        if decoder is None:
            return [t for t, _ in token_stream(state, [0], options, drafts, constraint=quote)][:-1]
        return decoder([0], options, constraints=[quote]).run(state)[0][0]


@pytest.mark.parametrize("engine", ["auto", "hf"])
def test_quoted_replies_are_the_best_allowed_tokens_on_every_strategy(engine):
    model, quote = tiny_llama(4), _quotes()
    replies = set()
    for seed in range(4):
        ids = prompt(seed)
        reference, state, x = [], START, ids  # a full forward pass per step, the likeliest allowed token
        with torch.no_grad():
            while True:
                logits = model(x).logits[0, -1]
                token = max(quote.allowed(state), key=lambda t: float(logits[t]))
                if token == 0:
                    break
                reference.append(token)
                state, x = quote.advance(state, token), torch.cat([x, torch.tensor([[token]])], 1)
        said = b"".join(quote.vocab.bytes_of[t] for t in reference).decode().strip()
        assert said == "no idea" or said in "the cat sat on the mat and the dog ran far away", said
        replies.add(said)
        free, top1 = opts(stop_repetition=False, speculative=False), opts(temperature=0.7, top_k=1, seed=0)
        assert _quoted(model, ids, engine, quote, free) == reference
        copy = ids[0].tolist() + reference  # drafts that hold
        assert _quoted(model, ids, engine, quote, opts(draft_tokens=5), drafts=copy) == reference
        assert _quoted(model, ids, engine, quote, top1, GreedyDecoder) == reference  # the batch path
        assert _quoted(model, ids, engine, quote, free, BeamSearchDecoder) == reference
    assert len(replies) > 1


@pytest.mark.parametrize("adapter, lora, quant", [("linear", True, None), ("linear", True, "int4"),
                                                  ("ctc-posterior", False, None)])
def test_speech_llm_reply_and_stream_are_the_same_with_and_without_drafts(tmp_path, adapter, lora, quant):
    import numpy as np
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.speechlm import LoraSpec, SpeechLLM, SpeechLLMConfig

    options = {"hidden_dim": 16} if adapter == "linear" else {"d_ffn": 16}
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(tmp_path / "w")), adapter_options=options,
                             llm=str(make_tiny_llm(tmp_path / "l")), adapter=adapter, quant=quant,
                             lora=LoraSpec(rank=2) if lora else None)
    torch.manual_seed(0)
    model = SpeechLLM.build(config).eval()
    with torch.no_grad():  # LoRA B starts at zero; make it matter (the engine runs peft's layers)
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    if quant:  # the engine fuses the int4 base layers under peft's LoRA layers and adds their deltas
        assert engine_for(model.llm).projections[0].fused_qkv is not None
    clip = np.random.default_rng(0).standard_normal(12000).astype(np.float32) * 0.1
    question = "Answer this question about the speech: hello world the weather will be sunny tomorrow"
    spliced, seeds, quotes = model._prefill_seeded([clip], [question])
    before, after = model.prompt_ids(question)
    assert seeds[0][:len(before)] == before and seeds[0][len(seeds[0]) - len(after):] == after
    if adapter == "ctc-posterior":  # the CTC head's hypothesis seeds the drafts
        encoded = model.encode_audio(*pad_audio([clip]))
        assert seeds[0][len(before):len(seeds[0]) - len(after)] == encoded.tokens[0][encoded.mask[0]].tolist()
    assert quotes == [None]  # hearing through its adapter it answers freely (quoting: test_simulated_units)
    for audio in ([clip], None):
        plain = model.generate(audio, question, GenerationOptions(max_new_tokens=30, speculative=False))[0]
        fast = model.generate(audio, question, GenerationOptions(max_new_tokens=30, speculative=True))[0]
        fallback = model.generate(audio, question, GenerationOptions(max_new_tokens=30, engine="hf"))[0]
        assert plain.tokens == fast.tokens == fallback.tokens and plain.stop == fast.stop
        streamed = "".join(model.stream(None if audio is None else clip, question,
                                        GenerationOptions(max_new_tokens=30, speculative=True)))
        assert streamed == fast.text


@pytest.mark.parametrize("attention", ["native", "sdpa"])
@pytest.mark.parametrize("head_backend", ["dyn-int8", "int8pack", "int8-rows"])
def test_a_verify_pass_scores_each_position_as_a_step_would(head_backend, attention):
    """Speculative decoding's verify pass feeds k tokens at once; every position's logits must be the
    ones k single steps give, bit for bit (low-bit layers, LoRA deltas, attention, a dynamic-int8 head
    that quantizes activations per call), or a near-tie could turn and the reply differ from greedy."""
    from speechllm.quant.backends import BACKENDS
    from speechllm.quant.formats import QuantSpec
    from speechllm.quant.linear import QuantLinear
    from speechllm.quant.lora import LoraConfig, get_peft_model
    from speechllm.quant.methods import QuantConfig
    from speechllm.quant.model import quantize

    if head_backend not in BACKENDS or not BACKENDS[head_backend].supports(
            QuantSpec(8, -1), VOCAB, 64, torch.device("cpu")):
        pytest.skip(f"{head_backend} is not available in this torch build (or without a compiler)")
    model = tiny_llama(4)
    quantize(model, QuantConfig(bits=4, group_size=32, head_bits=8))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    head = model.get_base_model().lm_head
    assert isinstance(head, QuantLinear)
    head.backend = head_backend
    if attention == "native" and not engine_for(model).native:
        pytest.skip("the native attention kernel is not built here (no C compiler)")
    engine_for(model).native = attention == "native"
    ids, tokens = prompt(0, 20), prompt(1, 9)[0].tolist()
    with torch.no_grad():
        def fresh():
            return open_state(model, model.get_input_embeddings()(ids), torch.ones_like(ids),
                              torch.arange(ids.shape[1])[None], capacity=40)
        state = fresh()
        stepped = torch.stack([state.step(torch.tensor([t]))[0] for t in tokens])
        verified = fresh().extend(torch.tensor([tokens]))[0]
        lazily = fresh().extend_lazily(torch.tensor([tokens]))  # all rows at once with int8-rows
        scored = torch.stack([lazily(j)[0] for j in range(len(tokens))])
    assert torch.equal(stepped, verified) and torch.equal(stepped, scored)
    assert engine_for(model).head_takes_rows_together() == (head_backend == "int8-rows")


@pytest.mark.skipif(attention.library() is None, reason="no C compiler: the engine attends through SDPA")
def test_native_attention_is_sdpas_and_gives_each_position_a_steps_numbers():
    """The kernel: SDPA's attention (causal, grouped heads) to float rounding, and one call over t
    positions equal, bit for bit, to t calls of one position (threads or not)."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, capacity = 6, 2, 32, 80
    for rows, t, start in [(1, 1, 0), (1, 5, 37), (2, 3, 16), (2, 1, 70), (1, 9, 63)]:
        keys, values = (torch.randn(rows, kv_heads, capacity, dim, generator=gen) for _ in range(2))
        q = torch.randn(rows, t, heads + kv_heads, dim, generator=gen)[:, :, :heads]  # the engine's view
        out = attention.attend(q, keys, values, start)
        for j in range(t):
            seen = slice(0, start + j + 1)
            expected = F.scaled_dot_product_attention(q[:, j:j + 1].transpose(1, 2), keys[:, :, seen],
                                                      values[:, :, seen], enable_gqa=True)
            torch.testing.assert_close(out[:, j], expected.transpose(1, 2).reshape(rows, -1))
            assert torch.equal(out[:, j:j + 1], attention.attend(q[:, j:j + 1], keys, values, start + j))
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            assert torch.equal(out, attention.attend(q, keys, values, start))
        finally:
            torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="contiguous"):
        attention.attend(q.transpose(2, 3), keys, values, 0)


@pytest.mark.parametrize("native", ["1", "0"])
def test_the_engines_silu_gate_is_torchs_row_by_row(native, monkeypatch):
    from speechllm.generation import rowwise

    monkeypatch.setenv("SPEECHLLM_NATIVE", native)
    rowwise.library.cache_clear()
    try:
        gate_up = torch.randn(2, 5, 2 * 48) * 6
        gate, up = gate_up.chunk(2, dim=-1)
        out = rowwise.silu_mul(gate_up)
        torch.testing.assert_close(out, F.silu(gate) * up, rtol=1e-6, atol=1e-6)
        assert torch.equal(out, torch.cat([rowwise.silu_mul(gate_up[:, j:j + 1]) for j in range(5)], 1))
    finally:
        rowwise.library.cache_clear()


def test_lora_on_every_fused_projection_gives_pefts_logits():
    """LoRA on q/k/v and gate/up (fused low-bit matrices: the deltas go into their slices) and on o and down:
    the engine's steps give the logits of peft's own forward, up to float rounding."""
    from speechllm.quant.lora import LoraConfig, get_peft_model
    from speechllm.quant.methods import QuantConfig
    from speechllm.quant.model import quantize

    model = tiny_llama(5)
    quantize(model, QuantConfig(bits=4, group_size=32))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=4, target_modules=targets)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        ids = prompt(2, 12)
        expected = model(ids).logits[0]
        head = ids[:, :4]
        state = open_state(model, model.get_input_embeddings()(head), torch.ones_like(head),
                           torch.arange(4)[None], capacity=16)
        stepped = torch.stack([state.logits[0]] + [state.step(ids[0, j:j + 1])[0] for j in range(4, 12)])
    torch.testing.assert_close(stepped, expected[3:], rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(rowwise.library() is None, reason="no C compiler: the engine adds LoRA deltas in torch")
def test_native_lora_deltas_are_pefts_row_by_row_and_follow_the_adapters():
    """NativeLora adds the q/k/v LoRA deltas into the fused output in one call: peft's numbers up to float
    rounding (ranks 4 and 16; 8 for v: padded to lanes), each row the same alone as among others, nothing
    with the adapters off, and the new numbers after the factors change or training dropout is on."""
    from speechllm.generation.fused import lora_delta
    from speechllm.quant.lora import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(1), LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"],
                                                     rank_pattern={"k_proj": 16, "v_proj": 8}))
    attn = model.base_model.model.model.layers[0].self_attn
    layers = [attn.q_proj, attn.k_proj, attn.v_proj]
    sizes = [m.base_layer.out_features for m in layers]
    starts = [0, sizes[0], sizes[0] + sizes[1]]
    with torch.no_grad():
        for m in layers:
            m.lora_B["default"].weight.normal_()
    native = rowwise.NativeLora(layers, starts)
    x = torch.randn(1, 5, layers[0].in_features)

    def expected(x):
        return torch.cat([lora_delta(m, x) for m in layers], -1)

    def added(x):
        out = torch.zeros(*x.shape[:-1], sum(sizes))
        assert native.add(x, out)
        return out

    with torch.no_grad():
        torch.testing.assert_close(added(x), expected(x), rtol=1e-5, atol=1e-5)
        assert torch.equal(added(x), torch.cat([added(x[:, j:j + 1]) for j in range(5)], 1))
        layers[1].lora_B["default"].weight.mul_(2)  # in place: the copies must follow
        torch.testing.assert_close(added(x), expected(x), rtol=1e-5, atol=1e-5)
        with model.disable_adapter():
            assert torch.equal(added(x), torch.zeros(1, 5, sum(sizes)))
        layers[0].lora_dropout["default"] = torch.nn.Dropout(0.5)
        model.train()
        assert not native.add(x, torch.zeros(1, 5, sum(sizes)))  # dropout at work: the caller's torch path
        model.eval()
        torch.testing.assert_close(added(x), expected(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(attention.library() is None, reason="no C compiler: the engine attends through SDPA")
def test_native_rotary_and_cache_writes_are_the_torch_ops_numbers():
    """rope_attend: the engine's rotary in torch (x * cos + roll(x) * sin), the cache writes, then attend,
    bit for bit, from the fused qkv projection's slices."""
    gen = torch.Generator().manual_seed(1)
    heads, kv_heads, dim, capacity = 6, 2, 32, 80
    for rows, t, start in [(1, 1, 0), (1, 5, 37), (2, 3, 16)]:
        qkv = torch.randn(rows, t, (heads + 2 * kv_heads) * dim, generator=gen)
        qk, v = qkv[..., :(heads + kv_heads) * dim], qkv[..., -kv_heads * dim:]
        cos, sin = torch.randn(rows, t, 1, dim, generator=gen), torch.randn(rows, t, 1, dim, generator=gen)
        keys, values = (torch.randn(rows, kv_heads, capacity, dim, generator=gen) for _ in range(2))
        keys2, values2 = keys.clone(), values.clone()
        turned = qk.view(rows, t, heads + kv_heads, dim)
        turned = turned * cos + turned.roll(dim // 2, -1) * sin
        keys[:, :, start:start + t] = turned[:, :, heads:].transpose(1, 2)
        values[:, :, start:start + t] = v.view(rows, t, kv_heads, dim).transpose(1, 2)
        expected = attention.attend(turned[:, :, :heads], keys, values, start)
        out = attention.rope_attend(qk, v, cos, sin, keys2, values2, start, heads)
        assert torch.equal(out, expected) and torch.equal(keys2, keys) and torch.equal(values2, values)
