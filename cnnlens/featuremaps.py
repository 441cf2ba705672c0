"""Feature maps: record what layers take in and give out, with forward hooks that never leak.

    x = cnnlens.load_images("photos/", model)
    with cnnlens.capture(model, ["layer1", "layer4"]) as fm:
        model(x.tensor)
    fm["layer4"]                       # (N, 512, 7, 7): the last forward's output, detached
    fm.top_channels("layer4", k=16)    # channel indices ranked by mean activation, per image
    fm.plot(images=x, out="fm.png")    # the display copies and names of the Images

This is the classic tutorial's ``SaveFeatures`` hook class done right: hooks are removed when the
block ends (also when ``forward`` raises), tensors are detached so no autograd graph is kept alive,
they are kept on the CPU or the layer's device as asked, and an optional byte budget bounds memory.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from cnnlens.errors import LayerError, ModelError, OptionError, close_matches

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Record:
    """One forward pass through one layer."""

    call: int
    input: Any
    output: Any
    nbytes: int


def _detach(obj: Any, device: torch.device | None) -> Any:
    """Detached copies of every tensor in ``obj`` (tensors, tuples, lists, dicts), on ``device``."""
    if isinstance(obj, Tensor):
        t = obj.detach()
        # A copy, not a view: a later in-place op in the model (ReLU(inplace=True)) must not change it.
        return t.to(device, copy=True) if device is not None else t.clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_detach(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _detach(v, device) for k, v in obj.items()}
    return obj


def _nbytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    return 0


class FeatureMaps:
    """What :func:`capture` recorded: each layer's input and output on every forward pass.

    Attributes:
        layers: The captured layer names, in the order asked.
        max_bytes: The memory budget (None: unbounded).
        dropped: Records evicted or skipped to stay within ``max_bytes``.
    """

    def __init__(self, layers: Sequence[str], device: torch.device | None, max_bytes: int | None,
                 keep_inputs: bool) -> None:
        self.layers = list(layers)
        self.device = device
        self.max_bytes = max_bytes
        self.keep_inputs = keep_inputs
        self.dropped = 0
        self._records: dict[str, deque[Record]] = {n: deque() for n in self.layers}
        self._calls: dict[str, int] = dict.fromkeys(self.layers, 0)
        self._order: deque[tuple[str, Record]] = deque()  # insertion order, for oldest-first eviction
        self.nbytes = 0

    # -- recording ---------------------------------------------------------------------------------

    def _add(self, name: str, inp: Any, out: Any) -> None:
        call = self._calls[name]
        self._calls[name] = call + 1
        size = _nbytes(out) + (_nbytes(inp) if self.keep_inputs else 0)
        if self.max_bytes is not None and size > self.max_bytes:
            self.dropped += 1  # larger than the whole budget: keep nothing rather than copy it
            return
        if self.max_bytes is not None:
            while self._order and self.nbytes + size > self.max_bytes:
                old_name, old = self._order.popleft()
                self._records[old_name].remove(old)
                self.nbytes -= old.nbytes
                self.dropped += 1
        record = Record(call, _detach(inp, self.device) if self.keep_inputs else None, _detach(out, self.device), size)
        self._records[name].append(record)
        self._order.append((name, record))
        self.nbytes += size

    # -- reading -------------------------------------------------------------------------------------

    def _check(self, name: str) -> deque[Record]:
        if name not in self._records:
            hint = close_matches(name, self.layers)
            extra = f"; close matches: {hint}" if hint else ""
            raise LayerError(f"layer '{name}' was not captured{extra}; captured: {', '.join(self.layers)}")
        return self._records[name]

    def records(self, name: str) -> list[Record]:
        """Every kept record of ``name``, oldest first."""
        return list(self._check(name))

    def calls(self, name: str) -> int:
        """How many times ``name`` ran inside the block (including records dropped for memory)."""
        self._check(name)
        return self._calls[name]

    def _record(self, name: str, call: int) -> Record:
        recs = self._check(name)
        if not recs:
            why = (f"{self._calls[name]} call(s) were dropped to stay within max_bytes={self.max_bytes}"
                   if self._calls[name] else "it did not run: call the model inside the `with` block")
            raise LayerError(f"nothing was recorded for layer '{name}': {why}")
        try:
            return recs[call]
        except IndexError:
            raise LayerError(f"call {call} is out of range: {len(recs)} forward pass(es) of '{name}' are kept") from None

    def output(self, name: str, call: int = -1) -> Any:
        """The detached output of ``name`` on forward pass ``call`` (default: the last)."""
        return self._record(name, call).output

    def input(self, name: str, call: int = -1) -> Any:
        """The detached input of ``name`` (its first positional argument) on forward pass ``call``."""
        if not self.keep_inputs:
            raise OptionError("inputs were not kept; use capture(..., inputs=True)")
        return self._record(name, call).input

    def __getitem__(self, name: str) -> Any:
        return self.output(name)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        parts = []
        for n in self.layers[:4]:
            recs = self._records[n]
            shape = tuple(recs[-1].output.shape) if recs and isinstance(recs[-1].output, Tensor) else None
            parts.append(f"{n}: {len(recs)} call(s), last {shape}")
        if len(self.layers) > 4:
            parts.append(f"... {len(self.layers) - 4} more layers")
        return f"FeatureMaps({'; '.join(parts)}; {self.nbytes / 2**20:.1f} MiB)"

    def _repr_png_(self) -> bytes | None:
        """The top 8 channels of each layer with an (N, C, H, W) output, for the first two images."""
        from cnnlens.plot import feature_grid, figure_png

        drawable = [n for n in self.layers if self._records[n] and isinstance(self._records[n][-1].output, Tensor)
                    and self._records[n][-1].output.dim() == 4]
        if not drawable:
            return None  # nothing recorded yet: Jupyter falls back to the repr
        return figure_png(feature_grid(self, drawable, top=8, ncols=8, max_images=2), dpi=80)

    def top_channels(self, name: str, k: int = 16, call: int = -1) -> tuple[Tensor, Tensor]:
        """Per image, the ``k`` channels of ``name``'s output with the highest mean activation.

        Returns:
            ``(indices, means)``, both (N, k') with k' = min(k, channels), highest first, on the CPU.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise OptionError(f"k must be a positive integer, got {k!r}")
        out = self.output(name, call)
        if not isinstance(out, Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise LayerError(f"layer '{name}' outputs {shape}, not an (N, C, H, W) feature map; pick a conv layer")
        means = out.float().mean(dim=(2, 3)).cpu()
        vals, idx = means.topk(min(k, means.shape[1]), dim=1)
        return idx, vals

    @classmethod
    def concat(cls, parts: Sequence[FeatureMaps], call: int = -1) -> FeatureMaps:
        """Join captures of consecutive chunks of one batch into one, along the batch dimension.

        From each part, the forward pass ``call`` of every layer is taken (default: the last, which
        for a module the model runs several times per forward is its last use).
        """
        if not parts:
            raise OptionError("concat needs at least one FeatureMaps")
        first = parts[0]
        out = cls(first.layers, first.device, None, first.keep_inputs)
        out.dropped = sum(p.dropped for p in parts)
        for name in first.layers:
            recs = [p._record(name, call) for p in parts]
            outs = [r.output for r in recs]
            if not all(isinstance(o, Tensor) for o in outs) or len({tuple(o.shape[1:]) for o in outs}) != 1:
                raise LayerError(f"the outputs of '{name}' differ in shape or type between parts and cannot be joined")
            ins = [r.input for r in recs]
            joined_in = None
            if first.keep_inputs and all(isinstance(i, Tensor) for i in ins) and len({tuple(i.shape[1:]) for i in ins}) == 1:
                joined_in = torch.cat(ins)
            record = Record(0, joined_in, torch.cat(outs), sum(r.nbytes for r in recs))
            out._records[name].append(record)
            out._order.append((name, record))
            out._calls[name] = 1
            out.nbytes += record.nbytes
        return out

    def plot(self, layers: Sequence[str] | None = None, top: int = 16, images: Any = None,
             out: str | Path | None = None, **kwargs: Any) -> Figure:
        """Grid of the top channels per layer and image (see :func:`cnnlens.plot.feature_grid`)."""
        from cnnlens.plot import feature_grid

        return feature_grid(self, layers, top, images, out, **kwargs)


def _parse_device(device: str | torch.device) -> torch.device | None:
    if isinstance(device, str) and device == "same":
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"invalid device '{device}': use 'cpu', 'same' (the layer's device) or 'cuda'") from None


def _resolve_layers(model: nn.Module, layers: str | nn.Module | Sequence[str | nn.Module]) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    items = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    if not items:
        raise LayerError("no layers given; name at least one, e.g. capture(model, ['layer1', 'layer4'])")
    named = dict(model.named_modules())
    out: list[tuple[str, nn.Module]] = []
    for item in items:
        if isinstance(item, nn.Module):
            name = next((n for n, m in named.items() if m is item), None)
            if name is None:
                raise LayerError("a given layer module is not part of the model; pass its submodules or their names")
            out.append((name or "<model>", item))
        elif isinstance(item, str):
            if item not in named or not item:
                hint = close_matches(item, [n for n in named if n])
                extra = f"; close matches: {hint}" if hint else ""
                raise LayerError(f"layer '{item}' not found{extra} (`cnnlens layers --model ...` lists them)")
            out.append((item, named[item]))
        else:
            raise LayerError(f"layers must be names or modules, got {type(item).__name__}")
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LayerError(f"layer(s) {', '.join(dupes)} named twice; name each layer once")
    return out


@contextlib.contextmanager
def capture(
    model: nn.Module,
    layers: str | nn.Module | Sequence[str | nn.Module],
    device: str | torch.device = "cpu",
    max_bytes: int | None = None,
    inputs: bool = True,
) -> Iterator[FeatureMaps]:
    """Record the inputs and outputs of ``layers`` on every forward pass inside the block.

    Args:
        model: The model; only forward hooks are added, and they are removed on exit, including when
            the block raises.
        layers: Dotted names or modules.
        device: Where to keep the copies: ``"cpu"`` (default; frees accelerator memory), ``"same"``
            (the layer's own device) or any torch device.
        max_bytes: Memory budget for all kept tensors. When a new record would exceed it, the oldest
            records are evicted (the newest passes are kept); a single record larger than the whole
            budget is not kept. Each eviction counts in ``FeatureMaps.dropped``.
        inputs: Also keep each layer's input (its first positional argument).

    Yields:
        A :class:`FeatureMaps`, filled as the model runs and readable after the block.
    """
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise OptionError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
    target = _parse_device(device)
    resolved = _resolve_layers(model, layers)
    fm = FeatureMaps([n for n, _ in resolved], target, max_bytes, inputs)
    handles = []

    def make_hook(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            fm._add(name, args[0] if len(args) == 1 else args, output)

        return hook

    try:
        for name, module in resolved:
            handles.append(module.register_forward_hook(make_hook(name)))
        yield fm
    finally:
        for h in handles:
            h.remove()
    if fm.dropped:
        warnings.warn(
            f"capture kept {fm.nbytes} bytes and dropped {fm.dropped} record(s) to stay within max_bytes={max_bytes}",
            RuntimeWarning,
            stacklevel=3,
        )
