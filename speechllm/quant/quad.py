"""QUAD (Hu et al., 2025, arXiv:2503.19353): quantization with activation decomposition.

The SVD of a linear's calibration inputs gives its top-``r`` activation directions ``U`` (``[K, r]``),
where the outliers live. The input splits exactly as ``x = (x U) U^T + x_res``:

    y = (x U) · (W U)^T  +  (x_res Q) · (W_res Q)^T

The first term is ``r`` extra dimensions kept in full precision; its weight ``W U`` (``[N, r]``) is the
trainable part (QUAD's parameter-efficient fine-tuning). The rest, with the outlier directions
projected out of both activation and weight and spread by an orthogonal ``Q`` (random signs times a
block Hadamard matrix, so nothing but the signs is stored), is quantized: weights to int4, activations
per token to ``act_bits`` (4 for W4A4, 8 for W4A8; simulated here, as this CPU has no int4 GEMM).
``outlier_act_bits=8`` gives the paper's W4A4/A8 (outlier dimensions at 8 bits).

Here ``U`` and ``Q`` are applied online (two thin matmuls and a block Hadamard per layer); the paper
folds them into the preceding operations instead.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .calibrate import layerwise
from .formats import QuantSpec, fake_quantize_activations, quantize_weight
from .linear import QuantLinear
from .methods import QuantConfig, register_method, set_module


@lru_cache(maxsize=8)
def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def hadamard_block(k: int, cap: int = 256) -> int:
    """The largest power of two dividing ``k``, at most ``cap``."""
    return math.gcd(k, cap)


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``x Q`` with ``Q = diag(signs) · blockdiag(H_b)`` (orthogonal; its own inverse up to transpose)."""
    k = x.shape[-1]
    b = hadamard_block(k)
    h = _hadamard(b).to(x.device, x.dtype)
    return ((x * signs).reshape(*x.shape[:-1], k // b, b) @ h).reshape(x.shape)


def outlier_basis(x: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-``rank`` directions of ``x``'s second moment (its SVD's right singular vectors), ``[K, r]``."""
    if not rank:
        return x.new_zeros(x.shape[1], 0)
    cov = x.double().T @ x.double() / max(x.shape[0], 1)
    return torch.linalg.eigh(cov).eigenvectors[:, -rank:].flip(-1).float()


class QuadLinear(nn.Module):
    """``y = (x U) Wo^T + Q4(x_res Q) · Q4(W_res Q)^T + b`` (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, rank: int, spec: QuantSpec, act_bits: int = 4,
                 outlier_act_bits: int = 16, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.quad_rank = in_features, out_features, rank
        self.act_bits, self.outlier_act_bits = act_bits, outlier_act_bits
        self.register_buffer("basis", torch.zeros(in_features, rank))
        self.register_buffer("signs", torch.ones(in_features))
        self.outlier = nn.Parameter(torch.zeros(out_features, rank), requires_grad=False)
        self.base = QuantLinear(in_features, out_features, spec, bias=bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, x: torch.Tensor, rank: int, spec: QuantSpec, act_bits: int = 4,
                    outlier_act_bits: int = 16, seed: int = 0, basis: torch.Tensor | None = None
                    ) -> QuadLinear:
        """Decompose ``linear`` using its calibration inputs ``x`` (``[T, K]``), or a given ``basis``."""
        k = linear.in_features
        if basis is None:
            basis = outlier_basis(x, rank)
        gen = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (k,), generator=gen).float() * 2 - 1
        w = linear.weight.detach().float()
        w_res = w - (w @ basis) @ basis.T
        layer = cls(k, linear.out_features, rank, spec, act_bits, outlier_act_bits, linear.bias is not None)
        layer.basis.copy_(basis)
        layer.signs.copy_(signs)
        layer.outlier.data.copy_(w @ basis)
        layer.base = QuantLinear.from_weight(quantize_weight(rotate(w_res, signs), spec), linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.basis  # the outlier coordinates, [.., r]
        x_res = x - z @ self.basis.T
        main = self.base(fake_quantize_activations(rotate(x_res, self.signs), self.act_bits))
        return main + F.linear(fake_quantize_activations(z, self.outlier_act_bits), self.outlier.to(x.dtype))

    def describe(self) -> dict:
        return {"type": "quad", "format": self.base.spec.name, "rank": self.quad_rank,
                "act_bits": self.act_bits,
                "outlier_act_bits": self.outlier_act_bits, "bias": self.base.bias is not None,
                "in_features": self.in_features, "out_features": self.out_features}

    @classmethod
    def from_state(cls, desc: dict, tensors: dict) -> QuadLinear:
        """Rebuild from a folder: ``desc`` from config.json, ``tensors`` the module's own (codes etc.)."""
        from .formats import QuantizedWeight, spec_from_name

        spec = spec_from_name(desc["format"])
        layer = cls(desc["in_features"], desc["out_features"], desc["rank"], spec, desc["act_bits"],
                    desc["outlier_act_bits"], desc["bias"])
        layer.basis, layer.signs = tensors["basis"], tensors["signs"]
        layer.outlier.data = tensors["outlier"]
        qw = QuantizedWeight(spec, tensors["base.codes"], tensors["base.scale"], tensors.get("base.offset"))
        layer.base = QuantLinear.from_weight(qw, tensors.get("base.bias"))
        return layer

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.quad_rank}, "
                f"W{self.base.spec.bits}A{self.act_bits}")


@register_method("quad")
def quantize_quad(model: nn.Module, linears: dict[str, nn.Linear], config: QuantConfig,
                  calib: list[torch.Tensor] | None = None, progress: bool = False) -> None:
    if not calib:
        raise ValueError("QUAD needs calibration data (--calib)")
    targets = {id(m): name for name, m in linears.items()}

    def per_layer(_i: int, layer: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
        bases: list[tuple[torch.Tensor, torch.Tensor]] = []  # linears reading the same input share one
        for name, m in list(layer.named_modules()):
            if id(m) in targets and name in inputs:
                x = inputs[name]
                basis = next((b for seen, b in bases if seen.shape == x.shape and torch.equal(seen, x)), None)
                if basis is None:
                    basis = outlier_basis(x, config.rank)
                    bases.append((x, basis))
                quad = QuadLinear.from_linear(m, x, config.rank, config.spec, config.act_bits, basis=basis)
                set_module(layer, name, quad)

    layerwise(model, calib, per_layer, progress=progress)


def quad_parameters(model: nn.Module) -> list[nn.Parameter]:
    """QUAD's trainable part: the full-precision outlier weights (switched to ``requires_grad``)."""
    params = [m.outlier for m in model.modules() if isinstance(m, QuadLinear)]
    for p in params:
        p.requires_grad_(True)
    return params


def finetune_outliers(model: nn.Module, batches: list[torch.Tensor], steps: int = 100, lr: float = 1e-4,
                      progress: bool = False) -> list[float]:
    """QUAD's parameter-efficient tuning: next-token loss, only the outlier weights move. Returns losses."""
    from tqdm import tqdm

    params = quad_parameters(model)
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in tqdm(range(steps), desc="quad tuning", disable=not progress):
        ids = batches[step % len(batches)]
        loss = model(ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return losses
