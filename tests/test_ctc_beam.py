"""CTC prefix beam search with the LLM as language model (speechllm.speechlm.ctc_beam)."""

import math

import pytest
import torch
from tiny_models import make_tiny_llm
from transformers import AutoModelForCausalLM, AutoTokenizer

from speechllm.speechlm.ctc_beam import (
    CTCBeamOptions,
    CTCPrefixBeamSearch,
    LLMPrefixScorer,
    document_start_id,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def frames(*rows: list[float]) -> torch.Tensor:
    """Per-frame probabilities (blank first) → log-probabilities [T, V]."""
    return torch.tensor(rows).log()


class FixedLM:
    """A stand-in scorer: every prefix gets the same next-unit log-probabilities."""

    def __init__(self, unit_logprobs: list[float]):
        self.row = torch.tensor(unit_logprobs)
        self.logprobs: dict = {}
        self.calls = 0

    def update(self, need, keep) -> None:
        self.calls += 1
        self.logprobs.update({key: self.row for key in need})


def test_prefix_search_sums_paths_that_greedy_misses():
    # greedy path: blank, blank -> "" (p 0.36); but "a" has paths aa, a-, -a: p 0.64
    lp = frames([0.6, 0.4], [0.6, 0.4])
    search = CTCPrefixBeamSearch(CTCBeamOptions(beam_size=4, lm_weight=0, token_bonus=0), lambda n: None)
    assert search.decode([lp]) == [[1]]
    # a repeated unit needs a blank between its two copies: "a a" is not "a"
    lp = frames([0.01, 0.98, 0.01], [0.98, 0.01, 0.01], [0.01, 0.98, 0.01])
    assert search.decode([lp]) == [[1, 1]]


def test_lm_breaks_acoustic_ties_and_bonus_counters_short_outputs():
    lp = frames([0.02, 0.49, 0.49])  # units 1 and 2 equally likely
    prefer_two = FixedLM([math.log(0.1), math.log(0.9)])
    search = CTCPrefixBeamSearch(CTCBeamOptions(beam_size=4, lm_weight=1.0, token_bonus=0),
                                 lambda n: prefer_two)
    assert search.decode([lp]) == [[2]]
    assert prefer_two.calls == 1
    # two units of fair evidence vs the LM's cost of saying anything: the bonus decides
    lp = frames([0.3, 0.7, 0.0 + 1e-9], [0.3, 1e-9, 0.7])
    costly = FixedLM([math.log(0.05), math.log(0.05)])
    quiet = CTCPrefixBeamSearch(CTCBeamOptions(beam_size=4, lm_weight=1.0, token_bonus=0), lambda n: costly)
    spoken = CTCPrefixBeamSearch(CTCBeamOptions(beam_size=4, lm_weight=1.0, token_bonus=3), lambda n: costly)
    assert len(quiet.decode([lp])[0]) < 2
    assert spoken.decode([lp]) == [[1, 2]]
    # ...but only for the units it rewards (e.g. not for punctuation)
    only_one = CTCPrefixBeamSearch(CTCBeamOptions(beam_size=4, lm_weight=1.0, token_bonus=3),
                                   lambda n: costly, rewarded_units={1})
    assert only_one.decode([lp]) == [[1]]


def test_items_of_different_lengths_decode_as_alone():
    a = frames([0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8])
    b = frames([0.1, 0.1, 0.8])
    search = CTCPrefixBeamSearch(CTCBeamOptions(beam_size=3, lm_weight=0.5), lambda n: FixedLM([-1.0, -2.0]))
    assert search.decode([a, b]) == search.decode([a]) + search.decode([b])
    assert search.decode([a, torch.zeros(0, 3)]) == search.decode([a]) + [[]]  # a clip with no frames
    assert search.decode([]) == []


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    folder = make_tiny_llm(tmp_path_factory.mktemp("llm"))
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_scorer_matches_a_fresh_forward_pass(tiny_llm):
    llm, tokenizer = tiny_llm
    bos = document_start_id(tokenizer)
    assert bos == tokenizer.bos_token_id  # the tiny tokenizer has no <|endoftext|>
    units = torch.tensor([5, 9, 17, 30])  # CTC id k is LLM token units[k - 1]
    scorer = LLMPrefixScorer(llm, units, items=2, bos=bos)
    # live prefixes change as a beam search would change them: extended, kept, dropped
    # (children of rows that rode along as padding must see their parent's tokens only)
    rounds = [[(0, ()), (1, ())], [(0, (1,)), (0, ()), (1, (3,))],
              [(0, (1, 2)), (0, ()), (1, (3,)), (1, (3, 4))],
              [(0, (1, 2, 2)), (0, (2,)), (1, (3, 4, 1)), (1, (3, 2))],
              [(0, (2, 1))], [(0, (2, 1, 3))]]  # one row left: its dead padding columns get dropped
    with torch.no_grad():
        for live in rounds:
            scorer.update(live, keep=[k for k in live if k in scorer.rows])
            for key in live:
                ids = torch.tensor([[bos] + [int(units[u - 1]) for u in key[1]]])
                expected = llm(input_ids=ids).logits[0, -1, units].float().log_softmax(-1)
                assert torch.allclose(scorer.logprobs[key], expected, atol=1e-4), key
    assert set(scorer.rows) == set(rounds[-1])
    assert scorer.mask.shape[1] < len(rounds) + 1  # (one column per round plus the start, less the dead)


def test_scorer_reads_a_low_bit_output_layer(tiny_llm):
    """A speech-LLM whose config sets ``quant`` has a QuantLinear head; the scorer dequantizes
    only the unit rows and scores as the quantized model itself does."""
    import copy

    from speechllm.quant.linear import QuantLinear
    from speechllm.quant.model import QuantConfig, quantize

    llm, tokenizer = tiny_llm
    qllm = quantize(copy.deepcopy(llm), QuantConfig(bits=8, group_size=-1, head_bits=8))
    assert isinstance(qllm.get_output_embeddings(), QuantLinear)
    bos, units = document_start_id(tokenizer), torch.tensor([5, 9, 17, 30])
    scorer = LLMPrefixScorer(qllm, units, items=1, bos=bos)
    with torch.no_grad():
        scorer.update([(0, (2,))], keep=[])
        ids = torch.tensor([[bos, int(units[1])]])
        expected = qllm(input_ids=ids).logits[0, -1, units].float().log_softmax(-1)
    assert torch.equal(scorer.head, qllm.get_output_embeddings().dequantize()[units])
    # (the body's kernels may quantize activations, differently at different batch sizes)
    assert torch.allclose(scorer.logprobs[(0, (2,))], expected, atol=1e-2)


def test_options_are_checked():
    for bad in ({"beam_size": 0}, {"candidates": 0}, {"blank_skip": 0.0}):
        with pytest.raises(ValueError):
            CTCBeamOptions(**bad)


class PrefixLM:
    """Pseudo-random but fixed next-unit log-probabilities per prefix. ``eager``: every prefix is
    known from the start (the search never has to ask); otherwise only those ``update`` computed."""

    def __init__(self, units: int, eager: bool):
        self.units, self.calls = units, 0
        self.logprobs = self.Everything(self) if eager else {}

    def dist(self, key) -> torch.Tensor:
        seed = torch.Generator().manual_seed(hash(key) % 2**31)
        return torch.randn(self.units, generator=seed).log_softmax(-1)

    def update(self, need, keep) -> None:
        self.calls += 1
        self.logprobs.update({key: self.dist(key) for key in need})

    class Everything(dict):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def get(self, key, default=None):
            return self.lm.dist(key)

        def __contains__(self, key):
            return True


def test_lazy_lm_scoring_finds_what_scoring_everything_finds():
    torch.manual_seed(0)
    items = [(torch.randn(t, 7) * 3).log_softmax(-1) for t in (30, 12, 25)]
    options = CTCBeamOptions(beam_size=4, lm_weight=0.8, token_bonus=1.0, candidates=3, min_logprob=-6)
    eager, lazy = PrefixLM(6, eager=True), PrefixLM(6, eager=False)
    expected = CTCPrefixBeamSearch(options, lambda n: eager).decode(items)
    assert CTCPrefixBeamSearch(options, lambda n: lazy).decode(items) == expected
    assert eager.calls == 0 and 0 < lazy.calls
    assert any(len(e) > 2 for e in expected)
