"""Leave the user's model exactly as it was found.

:class:`ModelGuard` snapshots everything a backend may touch (hooks of every kind, the module tree,
train/eval flags, ``requires_grad``, ``.grad``, buffers) and restores it on exit, including when the
call raises half-way. Toolkits leak hooks (FlashTorch never removes its own; pytorch-grad-cam leaks
without ``with``), swap modules (pytorch-grad-cam's guided backprop replaces every ``nn.ReLU``) and
call ``model.eval()``; none of that may survive a cnnlens call.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module_mod

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
        self._modules = list(dict.fromkeys(self.model.modules()))
        self._children = [(m, OrderedDict(m._modules)) for m in self._modules]
        self._params = [(m, OrderedDict(m._parameters)) for m in self._modules]
        self._buffer_dicts = [(m, OrderedDict(m._buffers)) for m in self._modules]
        self._training = [(m, m.training) for m in self._modules]
        # Toolkits park attributes on modules (Captum's LRP: rule, activations); drop any new ones.
        # A tuple of the keys is cheap to take; the set is only built on exit if the keys changed.
        self._attrs = [(m, tuple(m.__dict__)) for m in self._modules]
        self._full_bw = [(m, getattr(m, "_is_full_backward_hook", None)) for m in self._modules]
        self._hooks = [(m, name, tuple(d)) for m in self._modules for name in MODULE_HOOK_DICTS
                       if (d := m.__dict__.get(name)) is not None]
        self._globals = {name: set(getattr(_module_mod, name)) for name in GLOBAL_HOOK_DICTS
                         if hasattr(_module_mod, name)}
        # model.parameters() / buffers() order, without walking the module tree again
        params = list(dict.fromkeys(p for _m, ps in self._params for p in ps.values() if p is not None))
        buffers = list(dict.fromkeys(b for _m, bs in self._buffer_dicts for b in bs.values() if b is not None))
        self._param_state = [(p, p.requires_grad, p.grad, p._version, p.data_ptr()) for p in params]
        # Tensor hooks need requires_grad (register_hook refuses others), so buffers that do not
        # require grad cannot get one.
        self._tensor_hooks = [
            (t, name, tuple(getattr(t, name) or ()))
            for t in params + [b for b in buffers if b.requires_grad]
            for name in TENSOR_HOOK_ATTRS
            if hasattr(t, name)
        ]
        self._buffers = [(b, b._version, b.detach().clone()) for b in buffers]
        self._param_copies = [(p, p.detach().clone()) for p in params] if self.copy_params else []
        try:
            for p in params:
                # Detach the user's .grad so a backend's backward() cannot accumulate into it.
                p.grad = None
                if self.freeze_params:
                    p.requires_grad_(False)
            if self.eval_mode:
                self.model.eval()
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def restore(self) -> None:
        """Put everything back; safe to call more than once."""
        for m, kids in self._children:
            if m._modules != kids:
                m._modules.clear()
                m._modules.update(kids)
        for m, ps in self._params:
            if m._parameters != ps:
                m._parameters.clear()
                m._parameters.update(ps)
        for m, bs in self._buffer_dicts:
            if m._buffers != bs:
                m._buffers.clear()
                m._buffers.update(bs)
        for m, name, keys in self._hooks:
            d = getattr(m, name)
            if tuple(d) != keys:
                kept = set(keys)
                for k in [k for k in d if k not in kept]:
                    del d[k]
        for m, flag in self._full_bw:
            if getattr(m, "_is_full_backward_hook", None) != flag:
                m._is_full_backward_hook = flag
        for name, keys in self._globals.items():
            d = getattr(_module_mod, name)
            for k in [k for k in d if k not in keys]:
                del d[k]
        for t, name, keys in self._tensor_hooks:
            d = getattr(t, name)
            if d and tuple(d) != keys:
                kept = set(keys)
                for k in [k for k in d if k not in kept]:
                    del d[k]
        for m, keys in self._attrs:
            if tuple(m.__dict__) != keys:
                kept = set(keys)
                for k in [k for k in m.__dict__ if k not in kept]:
                    del m.__dict__[k]
        for m, training in self._training:
            m.training = training
        with torch.no_grad():
            for b, version, copy in self._buffers:
                if b._version != version:
                    b.copy_(copy)
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
