"""Leave the user's model exactly as it was found.

:class:`ModelGuard` snapshots everything a backend may touch (hooks of every kind, the module tree,
train/eval flags, ``requires_grad``, ``.grad``, buffers) and restores it on exit, including when the
call raises half-way. Toolkits leak hooks (FlashTorch never removes its own; pytorch-grad-cam leaks
without ``with``), swap modules (pytorch-grad-cam's guided backprop replaces every ``nn.ReLU``) and
call ``model.eval()``; none of that may survive a cnnlens call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module_mod
from torch.utils.hooks import RemovableHandle

# Per-module dictionaries that hold hooks, keyed by handle id.
MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
# Only the dictionaries that fire during forward/backward count as "hooks left behind".
COUNTED_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
)
TENSOR_HOOK_ATTRS = ("_backward_hooks", "_post_accumulate_grad_hooks")


def hook_count(model: nn.Module) -> int:
    """Number of forward, pre-forward, backward and tensor hooks on ``model``, plus global module hooks."""
    n = 0
    for m in model.modules():
        for name in COUNTED_MODULE_HOOKS:
            n += len(getattr(m, name, {}) or {})
    for p in list(model.parameters()) + list(model.buffers()):
        for name in TENSOR_HOOK_ATTRS:
            n += len(getattr(p, name, None) or {})
    for name in GLOBAL_HOOK_DICTS[:4]:
        n += len(getattr(_module_mod, name, {}) or {})
    return n


def _modules_of(model: nn.Module) -> list[nn.Module]:
    """Every distinct module under ``model`` (breadth first): ``model.modules()`` without its
    recursive generators and name strings, about half the cost on a 185-module network."""
    out = [model]
    seen = {id(model)}
    i = 0
    while i < len(out):
        for child in out[i]._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                out.append(child)
        i += 1
    return out


def _snapshot(tensors: list[torch.Tensor]) -> Callable[[int], torch.Tensor]:
    """Copy ``tensors`` (one ``torch.cat`` per device and dtype); return ``i -> copy of tensors[i]``.

    One concatenation instead of a clone per buffer: on a GPU that is one kernel launch instead of
    ~160 for a ResNet-50's BatchNorm buffers, paid on every call. Non-strided tensors are cloned.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    single: dict[int, torch.Tensor] = {}
    for i, t in enumerate(tensors):
        if t.layout == torch.strided:
            groups.setdefault((t.device, t.dtype), []).append(i)
        else:
            single[i] = t.detach().clone()
    where: dict[int, tuple[torch.Tensor, int]] = {}
    for idx in groups.values():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
        offset = 0
        for i in idx:
            where[i] = (flat, offset)
            offset += tensors[i].numel()

    def copy_of(i: int) -> torch.Tensor:
        if i in single:
            return single[i]
        flat, offset = where[i]
        t = tensors[i]
        return flat[offset : offset + t.numel()].view(t.shape)

    return copy_of


#: model -> (its buffers' (tensor, version, data pointer), copies of them); see _buffer_copies
_BUFFER_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[list[tuple[torch.Tensor, int, int]], Callable[[int], torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _buffer_copies(model: nn.Module, buffers: list[torch.Tensor]) -> Callable[[int], torch.Tensor]:
    """Copies of ``buffers`` to restore from, reused from the model's last call while every buffer is
    the same tensor at the same version and storage (so holds the same values: in-place writes bump
    ``_version``). Copying ~160 BatchNorm buffers was a third of the guard's cost on every call.
    The price: one copy of a model's buffers is kept while the model lives (weakly keyed), where it
    used to exist only during a call; BatchNorm statistics are small (0.2 MB for resnet50)."""
    sig = [(b, b._version, b.data_ptr()) for b in buffers]
    cached = _BUFFER_COPIES.get(model)
    if cached is not None and len(cached[0]) == len(sig) and all(
        a is b and va == vb and pa == pb for (a, va, pa), (b, vb, pb) in zip(cached[0], sig, strict=True)
    ):
        return cached[1]
    copies = _snapshot(buffers)
    _BUFFER_COPIES[model] = (sig, copies)
    return copies


class ModelGuard:
    """Context manager that restores a model's full state on exit.

    Args:
        model: The user's model.
        eval_mode: Run the block in eval mode (BatchNorm statistics and dropout would otherwise make
            explanations random and update buffers).
        freeze_params: Set ``requires_grad=False`` on every parameter for the block; no method reads
            weight gradients, and skipping them is most of pytorch-grad-cam's excess cost.
    """

    def __init__(self, model: nn.Module, eval_mode: bool = True, freeze_params: bool = True,
                 copy_params: bool = False) -> None:
        self.model = model
        self.eval_mode = eval_mode
        self.freeze_params = freeze_params
        self.copy_params = copy_params

    def __enter__(self) -> ModelGuard:
        # Hooks need no snapshot: every torch API that adds one (module, global or tensor hooks)
        # keys it by RemovableHandle.next_id, a process-wide counter, so a hook added during the block
        # has a key >= this one, and none was added at all if the counter has not moved. That keeps
        # the per-call cost of the guard (paid on every explain(), which on a GPU is a few ms) low.
        self._hook_id0 = RemovableHandle.next_id
        modules = _modules_of(self.model)
        # One pass: (module, children, parameters, buffers, training, attribute names, full-backward flag).
        # Toolkits park attributes on modules (Captum's LRP: rule, activations); new ones are dropped.
        self._state = [
            (m, m._modules.copy(), m._parameters.copy(), m._buffers.copy(), m.training, tuple(m.__dict__),
             m.__dict__.get("_is_full_backward_hook"))
            for m in modules
        ]
        # model.parameters() / buffers() order, without walking the module tree again
        params = list(dict.fromkeys(p for st in self._state for p in st[2].values() if p is not None))
        buffers = list(dict.fromkeys(b for st in self._state for b in st[3].values() if b is not None))
        self._tensors = params + [b for b in buffers if b.requires_grad]  # those that can hold tensor hooks
        self._param_state = [(p, p.requires_grad, p.grad, p._version, p.data_ptr()) for p in params]
        self._buffers = [(b, b._version) for b in buffers]
        self._buffer_copies = _buffer_copies(self.model, buffers)
        self._param_copies = [(p, p.detach().clone()) for p in params] if self.copy_params else []
        try:
            for p in params:
                # Detach the user's .grad so a backend's backward() cannot accumulate into it.
                p.grad = None
                if self.freeze_params:
                    p.requires_grad_(False)
            # model.eval() walks the tree through nn.Module.__setattr__ (0.3 ms on resnet50 here);
            # skip it when no module is in training mode, as in most inference code.
            if self.eval_mode and any(st[4] for st in self._state):
                self.model.eval()
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def _remove_new_hooks(self) -> None:
        """Delete every hook registered since ``__enter__`` (handle ids >= the counter then)."""
        id0 = self._hook_id0
        dicts = [d for st in self._state for name in MODULE_HOOK_DICTS if (d := st[0].__dict__.get(name))]
        dicts += [d for name in GLOBAL_HOOK_DICTS if (d := getattr(_module_mod, name, None))]
        dicts += [d for t in self._tensors for name in TENSOR_HOOK_ATTRS if (d := getattr(t, name, None))]
        for d in dicts:
            for k in [k for k in d if isinstance(k, int) and k >= id0]:
                del d[k]

    def restore(self) -> None:
        """Put everything back; safe to call more than once."""
        for m, kids, ps, bs, training, keys, full_bw in self._state:
            if m._modules != kids:
                m._modules.clear()
                m._modules.update(kids)
            if m._parameters != ps:
                m._parameters.clear()
                m._parameters.update(ps)
            if m._buffers != bs:
                m._buffers.clear()
                m._buffers.update(bs)
            md = m.__dict__
            if tuple(md) != keys:
                kept = set(keys)
                for k in [k for k in md if k not in kept]:
                    del md[k]
            if md.get("_is_full_backward_hook") is not full_bw:
                m._is_full_backward_hook = full_bw
            if m.training != training:
                m.training = training
        if RemovableHandle.next_id != self._hook_id0:
            self._remove_new_hooks()
        with torch.no_grad():
            for i, (b, version) in enumerate(self._buffers):
                if b._version != version:
                    b.copy_(self._buffer_copies(i))
            for p, copy in self._param_copies:
                if not torch.equal(p, copy):
                    p.copy_(copy)
        for p, req, grad, _version, _ptr in self._param_state:
            if p.requires_grad != req:
                p.requires_grad_(req)
            p.grad = grad

    def params_modified(self) -> list[str]:
        """Names of parameters whose storage or values were changed in place during the block."""
        if self.copy_params:
            changed = [p for p, copy in self._param_copies if not torch.equal(p, copy)]
        else:
            changed = [p for p, _r, _g, v, ptr in self._param_state if p._version != v or p.data_ptr() != ptr]
        if not changed:
            return []
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names.get(id(p), "?") for p in changed]
