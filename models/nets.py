"""Torch modules: a window of raw feature vectors -> direction logits and an
expected return.

Every model is a :class:`ForecastModel`: a fixed input standardiser (the
train-only mean/std, stored as buffers so it travels inside the state dict and
the checkpoint) around a *core* that sees standardised, clipped inputs and
returns ``(logits [B, 3], unit_return [B])``. The wrapper multiplies the unit
return by ``return_scale`` (the train-set std of the label return) so the
return head trains on an O(1) target, which keeps ``return_loss_weight``
meaningful next to the cross-entropy, and reports the forecast in log-return
units. Training and inference call the same ``forward``, so there is one
normalisation code path.

Class order everywhere: 0 = down, 1 = flat, 2 = up.

Row invariance: :meth:`ForecastModel.forward_rows` is what CPU inference runs. A BLAS gemm blocks the
batch rows by position (a CPU's unrolled main loop, its tail rows, its thread split), so a row's last
bit depended on where it sat in the batch on some kernel selections (MKL on AVX2 / SSE4.2, found by
``tradeflow drill determinism``). Two row-invariant forms: the MLP's maps are elementwise products and
a sum over the input dimension (:func:`rowwise_linear`: ATen's reduction runs every output through one
loop, the same bits on every kernel selection measured); the GRU's and the TCN's are single-row products
(:func:`single_row_linear`: row-invariant, last bits per kernel, near the gemm's speed). Training keeps
``forward`` (gemm, cuDNN): served outputs differ from the training-time forward by float32 rounding only.
Design: docs/determinism.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from models.baseline import LinearBaselineCore
from models.config import ModelConfig

__all__ = [
    "CLASS_NAMES",
    "N_CLASSES",
    "ForecastModel",
    "GRUCore",
    "MLPCore",
    "TCNCore",
    "build_model",
    "rowwise_linear",
    "single_row_linear",
    "tcn_blocks",
]

N_CLASSES = 3
CLASS_NAMES = ("down", "flat", "up")


def rowwise_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` for ``x [..., in]`` with every row through the same reduction (module docstring)."""
    y = (x.unsqueeze(-2) * layer.weight).sum(dim=-1)
    return y if layer.bias is None else y + layer.bias


def _single_rows(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` for ``x [B, in]`` as B single-row products (a batched matmul with M = 1 each):
    every row goes through the same kernel whatever the batch, so the result is row-invariant on every
    kernel selection, at nearly the speed of one gemm (the recurrent maps of the GRU, where the
    reduction form cost 12x). Across kernel selections its last bits may differ (a tolerance claim)."""
    n_in = x.shape[-1]
    return torch.bmm(x.unsqueeze(1), weight.t().unsqueeze(0).expand(x.shape[0], n_in, weight.shape[0])).squeeze(1)


def _apply(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)``: the training-time (gemm) form."""
    out: Tensor = layer(x)
    return out


def single_row_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` for ``x [..., in]`` as single-row products (:func:`_single_rows`)."""
    shape = x.shape
    y = _single_rows(x.reshape(-1, shape[-1]), layer.weight).reshape(*shape[:-1], layer.weight.shape[0])
    return y if layer.bias is None else y + layer.bias


def _rows(module: nn.Module, x: Tensor, linear: Callable[[Tensor, nn.Linear], Tensor] | None = None) -> Tensor:
    """``module(x)``, linear maps row-invariant; anything else (ReLU, eval-mode Dropout) is elementwise."""
    if isinstance(module, nn.Linear):
        return (linear or rowwise_linear)(x, module)
    if isinstance(module, nn.Sequential):
        for m in module:
            x = _rows(m, x, linear)
        return x
    if isinstance(module, (nn.ReLU, nn.Dropout, nn.Identity)):
        out: Tensor = module(x)
        return out
    raise TypeError(f"no row-invariant form for {type(module).__name__}")


def _heads(
    first: list[nn.Module], width: int, hidden: tuple[int, ...], dropout: float
) -> tuple[nn.Sequential, nn.Linear, nn.Linear]:
    """The head of the sequence cores: ``first``, then ``Linear -> ReLU -> Dropout`` per ``hidden``
    width, then the class and return heads (built in that order: the seeded initialisation follows it)."""
    layers = list(first)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers), nn.Linear(width, N_CLASSES), nn.Linear(width, 1)


class MLPCore(nn.Module):
    """MLP over the flattened window: ``[B, W, F] -> [B, W*F] -> hidden -> heads``."""

    def __init__(self, window: int, n_features: int, hidden_sizes: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = window * n_features
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.class_head = nn.Linear(width, N_CLASSES)
        self.return_head = nn.Linear(width, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.body(z.flatten(start_dim=1))
        return self.class_head(hidden), self.return_head(hidden).squeeze(-1)

    def forward_rows(self, z: Tensor) -> tuple[Tensor, Tensor]:
        hidden = _rows(self.body, z.flatten(start_dim=1))
        return rowwise_linear(hidden, self.class_head), rowwise_linear(hidden, self.return_head).squeeze(-1)


class GRUCore(nn.Module):
    """One GRU layer over the window; its last state feeds an MLP head.

    ``hidden_sizes[0]`` is the recurrent state size, the remaining entries are
    the head's hidden layers. A single recurrent layer is deliberate: hourly
    crypto windows are short and noisy, depth buys variance, not signal.
    """

    #: ``forward`` through :meth:`unrolled` instead of ``nn.GRU``'s fused kernel (set on the
    #: template of a vmapped ensemble: ``aten::gru`` has no batching rule)
    unrolled: bool = False

    def __init__(self, n_features: int, hidden_sizes: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(n_features, hidden_sizes[0], batch_first=True)
        self.head, self.class_head, self.return_head = _heads(
            [nn.Dropout(dropout)], hidden_sizes[0], hidden_sizes[1:], dropout
        )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.unrolled:
            last = self.unrolled_state(z)
        else:
            _, state = self.gru(z)
            last = state[-1]
        hidden = self.head(last)
        return self.class_head(hidden), self.return_head(hidden).squeeze(-1)

    def unrolled_state(self, z: Tensor) -> Tensor:
        """The GRU's last state from its equations (:meth:`forward_rows`) with gemm maps: equal to
        ``nn.GRU`` up to float rounding, and made of ops ``torch.func.vmap`` can batch."""
        g = self.gru
        w_ih, w_hh = cast(Tensor, g.weight_ih_l0), cast(Tensor, g.weight_hh_l0)
        b_ih, b_hh = cast(Tensor, g.bias_ih_l0), cast(Tensor, g.bias_hh_l0)
        h = z.new_zeros((z.shape[0], g.hidden_size))
        # unbind / chunk rather than slices: their backward is one stack / cat, where each slice's
        # backward writes a zero tensor of the whole input
        for x_t in nn.functional.linear(z, w_ih, b_ih).unbind(1):  # [B, 3H] per step
            x_r, x_u, x_n = x_t.chunk(3, dim=-1)
            h_r, h_u, h_n = nn.functional.linear(h, w_hh, b_hh).chunk(3, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            u = torch.sigmoid(x_u + h_u)
            n = torch.tanh(x_n + r * h_n)
            h = (1 - u) * n + u * h
        return h

    def forward_rows(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The GRU's own equations (torch's gate order r, z, n) over its own parameters, each linear map
        row-invariant: ``r = s(W_ir x + b_ir + W_hr h + b_hr)``, ``u = s(W_iz x + b_iz + W_hz h + b_hz)``,
        ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - u) * n + u * h``."""
        g = self.gru
        w_ih, w_hh = cast(Tensor, g.weight_ih_l0), cast(Tensor, g.weight_hh_l0)
        b_ih, b_hh = cast(Tensor, g.bias_ih_l0), cast(Tensor, g.bias_hh_l0)
        size = g.hidden_size
        h = z.new_zeros((z.shape[0], size))
        batch, steps, n_in = z.shape
        # the input maps of every step at once: [B, T, 3H], one single-row product per (row, step)
        gi = _single_rows(z.reshape(batch * steps, n_in), w_ih).reshape(batch, steps, 3 * size) + b_ih
        for t in range(steps):
            gh = _single_rows(h, w_hh) + b_hh
            x_t = gi[:, t]
            r = torch.sigmoid(x_t[:, :size] + gh[:, :size])
            u = torch.sigmoid(x_t[:, size : 2 * size] + gh[:, size : 2 * size])
            n = torch.tanh(x_t[:, 2 * size :] + r * gh[:, 2 * size :])
            h = (1 - u) * n + u * h
        lin = single_row_linear
        hidden = _rows(self.head, h, lin)
        return lin(hidden, self.class_head), lin(hidden, self.return_head).squeeze(-1)


def tcn_blocks(window: int) -> int:
    """Residual blocks a :class:`TCNCore` stacks for ``window``: the fewest whose
    receptive field ``2 ** blocks`` covers the window (at least one)."""
    return max(1, (window - 1).bit_length())


class TCNCore(nn.Module):
    """Causal temporal convolutional network over the window; its newest step feeds an MLP head.

    The network: a pointwise projection of the ``F`` features to ``C = hidden_sizes[0]``
    channels, then ``n = tcn_blocks(W)`` residual blocks, block ``i`` mapping a sequence
    ``h`` to ``h[t] + mix(dropout(relu(temporal(h[t - 2**i], h[t]))))``: a causal
    convolution of kernel 2 and dilation ``2**i`` (steps before the window are zeros, as a
    causally left-padded ``Conv1d`` sees them) and a pointwise mix, both ``Linear`` layers
    over the channels. The channels at the newest step go through ReLU, dropout and the
    head's layers ``hidden_sizes[1:]`` to the two heads. The newest step's receptive field is
    ``2**n >= W`` steps, so the depth follows the window and needs no config field. No
    normalisation layer: nothing depends on the batch, in training or in serving.

    Only the newest step is read, so only the steps it depends on are computed: block ``i``
    needs its input every ``2**i`` steps back from the newest, so each block pairs
    neighbours and halves the sequence (``2**n - 1`` step evaluations in all instead of
    ``n * W``). The result is the dilated TCN's output at the newest step (tested against a
    full ``conv1d`` evaluation), at a fraction of its CPU cost.

    Design: docs/models.md#the-tcn-family
    """

    def __init__(self, window: int, n_features: int, hidden_sizes: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        channels = hidden_sizes[0]
        blocks = tcn_blocks(window)
        self.channels = channels
        self.left_pad = 2**blocks - window
        # Outputs of block i sit at steps (j + 1) * 2**(i+1) - 1 - left_pad: those before the
        # window's first step (< 0) are the next block's causal padding, zeros.
        self.leading_zeros = tuple(
            sum(1 for j in range(2 ** (blocks - 1 - i)) if (j + 1) * 2 ** (i + 1) - 1 < self.left_pad)
            for i in range(blocks)
        )
        self.project = nn.Linear(n_features, channels)
        self.temporal = nn.ModuleList(nn.Linear(2 * channels, channels) for _ in range(blocks))
        self.mix = nn.ModuleList(nn.Linear(channels, channels) for _ in range(blocks))
        self.dropout = nn.Dropout(dropout)
        self.head, self.class_head, self.return_head = _heads(
            [nn.ReLU(), nn.Dropout(dropout)], channels, hidden_sizes[1:], dropout
        )

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(z, _apply)

    def forward_rows(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` with every linear map as single-row products (:func:`single_row_linear` over the
        channels of each (row, step)): row-invariant on every kernel selection, last bits per kernel (the
        reduction form gave the same bits everywhere at 2k rows/s on one core: too slow for the family)."""
        return self._run(z, single_row_linear)

    def _run(self, z: Tensor, lin: Callable[[Tensor, nn.Linear], Tensor]) -> tuple[Tensor, Tensor]:
        h = lin(z, self.project)  # [B, W, C]
        if self.left_pad:
            h = torch.cat([h.new_zeros(h.shape[0], self.left_pad, self.channels), h], dim=1)
        for temporal, mix, zeros in zip(self.temporal, self.mix, self.leading_zeros, strict=True):
            past, now = h[:, 0::2], h[:, 1::2]  # each step with the one 2**i before it
            step = torch.relu(lin(torch.cat([past, now], dim=2), cast(nn.Linear, temporal)))
            h = now + lin(self.dropout(step), cast(nn.Linear, mix))
            if zeros:
                h = torch.cat([h.new_zeros(h.shape[0], zeros, self.channels), h[:, zeros:]], dim=1)
        hidden = _rows(self.head, h[:, -1], lin)
        return lin(hidden, self.class_head), lin(hidden, self.return_head).squeeze(-1)


class ForecastModel(nn.Module):
    """Raw window ``[B, W, F]`` -> ``(logits [B, 3], expected_return [B])``.

    Buffers: ``input_mean``/``input_std`` ``[F]`` (fitted on training rows
    only) and ``return_scale`` (scalar). Inputs are cast to the buffers' dtype
    (float32 for the nets, float64 for the linear baseline).
    """

    input_mean: Tensor
    input_std: Tensor
    return_scale: Tensor

    def __init__(self, core: nn.Module, *, window: int, n_features: int, input_clip: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.core = core
        self.window = window
        self.n_features = n_features
        self.input_clip = input_clip
        self.register_buffer("input_mean", torch.zeros(n_features, dtype=dtype))
        self.register_buffer("input_std", torch.ones(n_features, dtype=dtype))
        self.register_buffer("return_scale", torch.ones((), dtype=dtype))

    def set_normalization(self, mean: Tensor, std: Tensor, return_scale: float) -> None:
        """Install the train-set statistics (before training starts)."""
        if mean.shape != (self.n_features,) or std.shape != (self.n_features,):
            raise ValueError(f"normalisation stats must have shape ({self.n_features},)")
        if not bool(torch.all(std > 0)) or not return_scale > 0:
            raise ValueError("standard deviations and return_scale must be > 0")
        with torch.no_grad():
            self.input_mean.copy_(mean)
            self.input_std.copy_(std)
            self.return_scale.fill_(return_scale)

    def standardize(self, x: Tensor) -> Tensor:
        """``clip((x - mean) / std, +-input_clip)`` in the model's dtype."""
        x = x.to(self.input_mean.dtype)
        z = (x - self.input_mean) / self.input_std
        return z.clamp(-self.input_clip, self.input_clip)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[1] != self.window or x.shape[2] != self.n_features:
            raise ValueError(f"expected windows [B, {self.window}, {self.n_features}], got {list(x.shape)}")
        logits, unit_return = self.core(self.standardize(x))
        return logits, unit_return * self.return_scale

    def forward_rows(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` with a row's outputs independent of the rest of the batch and of its position in
        it, on every CPU kernel selection (module docstring). What CPU inference runs."""
        if x.dim() != 3 or x.shape[1] != self.window or x.shape[2] != self.n_features:
            raise ValueError(f"expected windows [B, {self.window}, {self.n_features}], got {list(x.shape)}")
        rows = getattr(self.core, "forward_rows", None)
        if rows is None:
            raise TypeError(f"{type(self.core).__name__} has no row-invariant forward")
        logits, unit_return = rows(self.standardize(x))
        return logits, unit_return * self.return_scale

    def unit_outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, expected_return / return_scale)``: what the loss compares."""
        logits, unit_return = self.core(self.standardize(x))
        return logits, unit_return


def build_model(config: ModelConfig, n_features: int) -> ForecastModel:
    """A freshly initialised model of ``config.family`` (weights from the
    current torch RNG; callers seed first). The linear baseline comes back
    with zero coefficients: :func:`models.baseline.fit_linear_baseline` fills
    them, or a checkpoint does."""
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    core: nn.Module
    dtype = torch.float32
    if config.family == "mlp":
        core = MLPCore(config.window, n_features, config.hidden_sizes, config.dropout)
    elif config.family == "gru":
        core = GRUCore(n_features, config.hidden_sizes, config.dropout)
    elif config.family == "tcn":
        core = TCNCore(config.window, n_features, config.hidden_sizes, config.dropout)
    else:
        core = LinearBaselineCore(config.window, n_features)
        dtype = torch.float64
    return ForecastModel(core, window=config.window, n_features=n_features, input_clip=config.input_clip, dtype=dtype)
