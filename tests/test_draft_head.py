"""The draft head: trained on a model's own replies it drafts them back, its drafts leave every reply
greedy's, and it travels in the model folder."""

from dataclasses import replace

import pytest
import torch

from speechllm.generation import DraftHead, DraftStats, GenerationOptions, HeadDrafter, token_stream

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["hello there", "what is the weather", "tell me about the sea", "good morning to you"]


@pytest.fixture(scope="module")
def speech_llm(tmp_path_factory):
    from tiny_models import make_tiny_llm, make_tiny_whisper

    from speechllm.speechlm import SpeechLLM, SpeechLLMConfig

    tmp = tmp_path_factory.mktemp("draft")
    config = SpeechLLMConfig(encoder=str(make_tiny_whisper(tmp / "w")), adapter_options={"hidden_dim": 16},
                             llm=str(make_tiny_llm(tmp / "l", hidden=64)), adapter="linear")
    torch.manual_seed(0)
    return SpeechLLM.build(config).eval()


def _drafted(model, text: str, options: GenerationOptions, head) -> tuple[list[int], DraftStats]:
    stats = DraftStats()
    with torch.no_grad(), model.text_mode():
        spliced, seeds, _ = model._prefill_seeded(None, [text])
        state = model._open(spliced, options)
        # no prompt seeds: every draft is the head's
        tokens = [t for t, _ in token_stream(state, model._stop_ids, options, (), stats, None, head)]
    return tokens, stats


def test_a_trained_head_drafts_the_models_replies_and_they_stay_greedy(speech_llm, tmp_path):
    from speechllm.data_recipes import draft_head

    model = speech_llm
    assert len(list(draft_head.prompts(10))) == 10
    head, vocab, losses = draft_head.build(model, PROMPTS, epochs=30, hidden=64, batch=8, lr=3e-3,
                                             progress=False)
    assert losses[-1] < 0.5 * losses[0]
    head.save(tmp_path / "head.safetensors", vocab, {"model": "tiny"})
    drafter = HeadDrafter.read(tmp_path / "head.safetensors", model.llm)
    assert torch.equal(drafter.vocab, vocab)
    greedy = GenerationOptions(max_new_tokens=24, speculative=False)
    spec = GenerationOptions(max_new_tokens=24, draft_tokens=6)
    accepted = 0
    for text in PROMPTS + ["an unseen prompt"]:
        plain, _ = _drafted(model, text, greedy, drafter)
        tokens, stats = _drafted(model, text, spec, drafter)
        assert tokens == plain, text
        assert stats.drafted > 0 or text not in PROMPTS  # unseen: drafts only where the head is sure
        accepted += stats.accepted
        off, stats = _drafted(model, text, replace(spec, draft_head=False), drafter)
        assert off == plain and stats == _drafted(model, text, spec, None)[1]  # the automaton's drafts only
    assert accepted > 0.5 * sum(len(_drafted(model, t, greedy, None)[0]) - 1 for t in PROMPTS)


def test_the_head_travels_in_the_model_folder(speech_llm, tmp_path):
    from speechllm.speechlm.io import load_speechlm, save_speechlm

    model = speech_llm
    dim = model.llm.get_input_embeddings().embedding_dim
    DraftHead(dim, 32).save(tmp_path / "draft_head.safetensors", torch.tensor([3, 4, 5]))
    model.config = replace(model.config, draft_head="draft_head.safetensors")
    try:
        folder = save_speechlm(model.loaded_from(tmp_path), tmp_path / "model")
    finally:
        model.config = replace(model.config, draft_head="")
    loaded = load_speechlm(folder)
    assert loaded.draft_head().vocab.tolist() == [3, 4, 5]
    options = GenerationOptions(max_new_tokens=12)
    reply = loaded.generate(None, "hello there", options)[0]
    assert reply.tokens == loaded.generate(None, "hello there", replace(options, speculative=False))[0].tokens
    assert "".join(loaded.stream(None, "hello there", options)) == reply.text
    (folder / "draft_head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="names a draft head"):
        load_speechlm(folder)


def test_a_head_for_other_features_is_refused(speech_llm, tmp_path):
    DraftHead(8, 16).save(tmp_path / "small.safetensors", torch.tensor([1]))
    with pytest.raises(ValueError, match="features of 8"):
        HeadDrafter.read(tmp_path / "small.safetensors", speech_llm.llm)
    from speechllm.files import atomic_save_tensors

    atomic_save_tensors({"vocab": torch.tensor([1], dtype=torch.int32)}, tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="not a draft head"):
        DraftHead.read(tmp_path / "bare.safetensors")
