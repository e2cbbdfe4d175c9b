"""A trained draft head for speculative decoding where the input offers nothing to copy (EAGLE, Li et
al., 2024; Hydra, Ankner et al., 2024).

The LLM's final hidden state at a position (what its output layer reads) and the token chosen from it
go into a small MLP (:class:`DraftHead`), which predicts the LLM's final hidden state one position
later; the LLM's own output layer, restricted to the tokens its replies use, reads the next draft token
from that; and so on for a chain of drafts. The LLM checks the chain in one pass as it checks the suffix
automaton's drafts (:func:`speechllm.generation.decoders.token_stream`), so the reply stays greedy's.

The head is trained on the LLM's own greedy replies and hidden states (``python -m
data_recipes.draft_head``); it goes into a model folder as a safetensors file that config.json
names (``"draft_head": "draft_head.safetensors"``). :class:`HeadDrafter` binds a head to the LLM it
was trained on (its embeddings and output rows).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.files import atomic_save_tensors, load_tensors, tensors_metadata
from speechllm.generation.rowwise import native_rms_norm, silu_mul
from speechllm.quant import INT8, QuantLinear


class DraftHead(nn.Module):
    """``(feature, token embedding) -> next feature``: one input projection, then ``blocks`` residual
    SwiGLU blocks, then an RMS norm (the LLM's features are its final norm's output)."""

    def __init__(self, dim: int, hidden: int, blocks: int = 1):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.inp = nn.Linear(2 * dim, dim)
        self.norms = nn.ModuleList([nn.RMSNorm(dim) for _ in range(blocks)])
        self.gate_up = nn.ModuleList([nn.Linear(dim, 2 * hidden, bias=False) for _ in range(blocks)])
        self.down = nn.ModuleList([nn.Linear(hidden, dim, bias=False) for _ in range(blocks)])
        self.out_norm = nn.RMSNorm(dim)

    def forward(self, feature: Tensor, embedding: Tensor) -> Tensor:
        z = self.inp(torch.cat([feature, embedding], -1))
        for norm, gate_up, down in zip(self.norms, self.gate_up, self.down, strict=True):
            z = z + down(self.gate(gate_up(norm(z))))
        return self.out_norm(z)

    @staticmethod
    def gate(gate_up: Tensor) -> Tensor:
        gate, up = gate_up.chunk(2, -1)
        return F.silu(gate) * up

    def save(self, path: str | Path, vocab: Tensor, meta: dict[str, str] | None = None) -> None:
        """The weights, ``vocab`` (the token ids the head drafts, int32) and the shape in the metadata."""
        tensors = {k: v.detach().half().contiguous() for k, v in self.state_dict().items()}  # fp16: half size
        tensors["vocab"] = vocab.to(torch.int32)
        shape = {"dim": str(self.dim), "hidden": str(self.hidden), "blocks": str(len(self.norms))}
        atomic_save_tensors(tensors, path, {**shape, **(meta or {})})

    @classmethod
    def read(cls, path: str | Path) -> tuple[DraftHead, Tensor]:
        """The head and its vocabulary, from :meth:`save`'s file."""
        tensors, meta = load_tensors(path), tensors_metadata(path)
        try:
            head = cls(int(meta["dim"]), int(meta["hidden"]), int(meta["blocks"]))
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"{path}: not a draft head (no dim / hidden / blocks in its metadata)") from None
        vocab = tensors.pop("vocab").long()
        head.load_state_dict({k: v.float() for k, v in tensors.items()})
        return head.eval(), vocab


@torch.no_grad()
def output_rows(llm: nn.Module, vocab: Tensor, chunk: int = 64) -> Tensor:
    """The output layer's weight rows [len(vocab), D] for ``vocab``, in float32, whatever the layer's
    kind (quantized or not): its outputs on the unit vectors, ``chunk`` of them at a time."""
    head = llm.get_output_embeddings()
    dim = llm.get_input_embeddings().embedding_dim
    eye = torch.eye(dim)
    return torch.cat([head(eye[i:i + chunk][None])[0][:, vocab].float()
                      for i in range(0, dim, chunk)]).T.contiguous()


class _NativeNorm(nn.Module):
    def __init__(self, norm: nn.RMSNorm):
        super().__init__()
        eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps
        self.norm = native_rms_norm(norm.weight.detach(), eps) or norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


def for_drafting(head: DraftHead) -> DraftHead:
    """A copy of ``head`` for inference: int8 linear layers (weights and activations per row: the low-bit
    kernels), the engine's native RMS norm and SiLU gate: a draft token reads the head and its output
    rows, which in float32 took the starter's head about twice as long
    (benchmarks/probes/draft_head_cost.py)."""
    head = copy.deepcopy(head)
    for name, module in list(head.named_modules()):
        if isinstance(module, nn.Linear):
            head.set_submodule(name, QuantLinear.from_linear(module, INT8, exact=False))
        elif isinstance(module, nn.RMSNorm):
            head.set_submodule(name, _NativeNorm(module))
    head.gate = silu_mul
    return head


class HeadDrafter:
    """A :class:`DraftHead` bound to its LLM: drafts a chain of tokens from a final hidden state, through
    int8 copies of the head and of the output rows of its vocabulary (``quantized``: :func:`for_drafting`).
    ``min_prob``: a chain stops before a token the head is less sure of (0.5: at 0.3 its unsure drafts cost
    free chat more than they gained; runs/decoding/LOG.md, session 38)."""

    def __init__(self, head: DraftHead, vocab: Tensor, llm: nn.Module, min_prob: float = 0.5,
                 quantized: bool = True):
        self.vocab, self.min_prob = vocab, min_prob
        self.embed = llm.get_input_embeddings()
        rows = nn.Linear(head.dim, len(vocab), bias=False)
        rows.weight.data = output_rows(llm, vocab)
        self.head = for_drafting(head) if quantized else head
        self.rows = QuantLinear.from_linear(rows, INT8, exact=False) if quantized else rows

    @classmethod
    def read(cls, path: str | Path, llm: nn.Module) -> HeadDrafter:
        head, vocab = DraftHead.read(path)
        dim = llm.get_input_embeddings().embedding_dim
        if head.dim != dim:
            raise ValueError(f"{path}: a draft head for features of {head.dim}, but the LLM's are {dim}")
        return cls(head, vocab, llm)

    @torch.inference_mode()
    def draft(self, feature: Tensor, token: int, k: int) -> list[int]:
        """Up to ``k`` tokens after ``token``, which the LLM chose from ``feature`` [D]; the chain stops
        before a token the head gives less than ``min_prob``."""
        out: list[int] = []
        f = feature.float()[None]
        for _ in range(k):
            f = self.head(f, self.embed(torch.tensor([token])).float())
            logits = self.rows(f)[0]
            best = int(logits.argmax())
            if self.min_prob * float((logits - logits[best]).exp().sum()) > 1:  # its probability < min_prob
                break
            token = int(self.vocab[best])
            out.append(token)
        return out
