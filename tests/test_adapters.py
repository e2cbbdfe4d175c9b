from dataclasses import asdict, replace

import pytest
import torch

from speechllm.adapters import ADAPTERS, CharVocab, adapter_config, build_adapter
from speechllm.adapters.alignformer import unit_windows
from speechllm.adapters.base import spec_augment
from speechllm.adapters.ctc import ctc_segments

D_ENC, D_LLM = 16, 24
SMALL = {  # tiny sizes so the tests run in milliseconds
    "linear": {"stack": 3, "hidden_dim": 32},
    "conv": {"channels": 20},
    "qformer": {"num_queries": 4, "d_model": 16, "d_ffn": 32},
    "window-qformer": {"window": 5, "queries_per_window": 2, "d_model": 16, "d_ffn": 32},
    "ctc": {"vocab_size": 6, "d_ffn": 32, "hidden_dim": 32},
    "alignformer": {"vocab_size": 6, "d_ffn": 32, "d_model": 16, "max_window": 6, "queries_per_window": 2},
    "ctc-posterior": {"vocab_size": 7, "d_ffn": 32, "top_k": 3},
}


def make(name: str):
    torch.manual_seed(0)
    adapter = build_adapter(name, {"encoder_dim": D_ENC, "llm_dim": D_LLM, **SMALL[name]}).eval()
    adapter.attach_llm(torch.nn.Embedding(6, D_LLM))  # a 6-token "LLM"; only ctc-posterior uses it
    return adapter


def batch(lengths=(40, 23), seed=1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(lengths), max(lengths), D_ENC, generator=g)
    mask = torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]
    return hidden, mask


def test_registry_has_every_adapter():
    assert set(ADAPTERS) == set(SMALL)
    assert build_adapter("window_qformer", encoder_dim=4, llm_dim=4).config.window == 15  # _ accepted
    with pytest.raises(ValueError, match="unknown adapter"):
        build_adapter("mlp", encoder_dim=4, llm_dim=4)
    with pytest.raises(ValueError, match="no option"):
        build_adapter("linear", encoder_dim=4, llm_dim=4, windows=3)
    config = make("alignformer").config
    assert adapter_config("alignformer", asdict(config)) == config  # saved as a dict, rebuilt equal


@pytest.mark.parametrize("name", list(SMALL))
def test_shapes_and_zero_padding(name):
    hidden, mask = batch()
    out = make(name)(hidden, mask)
    assert out.embeddings.shape[:2] == out.mask.shape and out.embeddings.shape[2] == D_LLM
    assert out.mask.any(1).all()
    assert (out.embeddings[~out.mask] == 0).all()
    if name in ("linear", "conv", "window-qformer"):  # fixed rates: 3x, 4x, 5/2 x
        expected = {"linear": [14, 8], "conv": [10, 6], "window-qformer": [16, 10]}[name]
        assert out.mask.sum(1).tolist() == expected
    if name == "qformer":
        assert out.mask.sum(1).tolist() == [4, 4]


@pytest.mark.parametrize("name", list(SMALL))
def test_padding_does_not_change_outputs(name):
    adapter = make(name)
    hidden, mask = batch()
    hidden[1, 23:] = 100.0  # garbage in the padding
    with torch.no_grad():
        both = adapter(hidden, mask)
        alone = adapter(hidden[1:, :23], mask[1:, :23])
    n = int(alone.mask.sum())
    assert int(both.mask[1].sum()) == n
    torch.testing.assert_close(both.embeddings[1, :n], alone.embeddings[0, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(SMALL))
def test_gradient_reaches_every_parameter(name):
    adapter = make(name).train()
    hidden, mask = batch()
    targets = torch.tensor([[1, 2, 3, 2], [4, 5, 0, 0]])
    out = adapter(hidden, mask, ctc_targets=targets, ctc_lengths=torch.tensor([4, 2]))
    loss = out.embeddings.pow(2).mean()
    if name in ("ctc", "alignformer", "ctc-posterior"):
        assert out.aux_loss is not None and out.aux_loss.item() > 0
        loss = loss + out.aux_loss
    else:
        assert out.aux_loss is None
    loss.backward()
    missing = [n for n, p in adapter.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_ctc_loss_skips_items_without_transcript():
    adapter = make("ctc")
    hidden, mask = batch()
    out = adapter(hidden, mask, ctc_targets=torch.zeros(2, 3, dtype=torch.long),
                  ctc_lengths=torch.tensor([0, 0]))
    assert out.aux_loss is None


def test_ctc_segments_and_unit_windows():
    # greedy paths (0 = blank) over 12 frames (item 0) and 6 frames (item 1, then padding)
    paths = [[0, 1, 1, 0, 0, 2, 0, 2, 2, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 1, 1]]
    logits = torch.nn.functional.one_hot(torch.tensor(paths), 3).float()
    mask = torch.arange(12) < torch.tensor([12, 6])[:, None]
    seg, counts = ctc_segments(logits, mask)
    assert counts.tolist() == [3, 1]  # "1", "2", "2" (a blank separates the repeated 2s); all-blank → 1
    assert seg[0].tolist() == [-1, 0, 0, -1, -1, 1, -1, 2, 2, -1, -1, -1]
    assert seg[1, :6].tolist() == [0] * 6
    lo, hi = unit_windows(seg, counts, mask, max_window=100)
    assert list(zip(lo[0].tolist(), hi[0].tolist(), strict=True)) == [(0, 4), (4, 6), (6, 12)]  # tiles 0..12
    assert (lo[1, 0].item(), hi[1, 0].item()) == (0, 6)
    lo, hi = unit_windows(seg, counts, mask, max_window=2)
    assert (hi - lo).max() <= 2 and ((lo <= (hi - 1)) | (hi == 0)).all()


def test_ctc_posterior_units_are_mixes_of_llm_embeddings():
    adapter = make("ctc-posterior")
    table = adapter.embeddings.weight
    posteriors = torch.tensor([[0.5, 0.0, 0.4, 0.1, 0.0, 0.0, 0.0],  # blank dropped, top-3 renormalised
                               [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    with torch.no_grad():
        units = adapter.unit_embeddings(posteriors)
    torch.testing.assert_close(units[0], 0.8 * table[1] + 0.2 * table[2])
    torch.testing.assert_close(units[1], table[5])
    hidden, mask = batch()
    assert len(adapter.greedy_units(hidden, mask)) == 2
    assert "embeddings" not in dict(adapter.named_modules()) and not any(
        "embeddings" in k for k in adapter.state_dict())  # the LLM's table is not the adapter's
    with pytest.raises(ValueError, match="vocab='llm'"):
        build_adapter("ctc-posterior", encoder_dim=4, llm_dim=4, vocab="chars", vocab_size=5)


def test_ctc_posterior_blank_penalty_keeps_more_units():
    adapter = make("ctc-posterior")
    hidden, mask = batch()
    with torch.no_grad():
        adapter.ctc.out[-1].bias[0] += 8.0  # a blank-heavy head: most frames decode to blank
    plain = adapter.greedy_units(hidden, mask)
    penalised = replace(adapter.config, blank_penalty=100.0)
    adapter.config = penalised
    every_frame = adapter.greedy_units(hidden, mask)
    assert sum(map(len, every_frame)) > sum(map(len, plain))
    assert all(u != 0 for units in every_frame for u in units)


def test_char_vocab():
    vocab = CharVocab()
    ids = vocab.encode("Hello,  World!")
    assert vocab.decode(ids) == "hello world" and 0 not in ids


def test_spec_augment_masks_training_frames_only():
    options = {"encoder_dim": D_ENC, "llm_dim": D_LLM, **SMALL["ctc-posterior"], "time_mask": 0.3,
               "channel_mask": 0.25}
    adapter = build_adapter("ctc-posterior", options)
    adapter.attach_llm(torch.nn.Embedding(6, D_LLM))
    hidden, mask = batch((200, 120))
    torch.manual_seed(0)
    masked = spec_augment(hidden, mask, 0.3, 0.0)
    zero_frames = (masked == 0).all(-1) & mask
    share = zero_frames.sum(1) / mask.sum(1)
    assert ((share > 0.1) & (share <= 0.3 + 1e-6)).all()  # overlapping spans can cover less
    channels = (spec_augment(hidden, mask, 0.0, 0.25) == 0).all(1)
    assert 0 < int(channels.sum()) < 2 * D_ENC
    adapter.eval()
    with torch.no_grad():
        first, second = adapter(hidden, mask).embeddings, adapter(hidden, mask).embeddings
    torch.testing.assert_close(first, second)  # evaluation never masks
    adapter.train()
    with torch.no_grad():
        assert not torch.equal(adapter(hidden, mask).embeddings, first)
