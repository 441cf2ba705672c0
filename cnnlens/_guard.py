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
from itertools import chain, repeat
from operator import attrgetter, is_, itemgetter
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


_VERSION = attrgetter("_version")
_DATA_PTR = torch.Tensor.data_ptr
_SLOTS = itemgetter("_modules", "_parameters", "_buffers")
_FLAGS = itemgetter("training", "_is_full_backward_hook")
_HOOK_DICTS = itemgetter(*MODULE_HOOK_DICTS)
_MISSING = object()


def _flags_of(dicts: list[dict]) -> list[tuple[Any, Any]]:
    """(training, _is_full_backward_hook) of each module, from its ``__dict__``."""
    try:
        return list(map(_FLAGS, dicts))
    except KeyError:  # an attribute deleted by someone: compare what is there
        return [(d.get("training", _MISSING), d.get("_is_full_backward_hook", _MISSING)) for d in dicts]


def _attr_shape(dicts: list[dict]) -> tuple[list[int], list[Any]]:
    """Number of attributes and the last attribute name of each module: a cheap test for "no
    attribute added or deleted" (dicts keep insertion order, so an added name is last)."""
    return list(map(len, dicts)), list(map(next, map(reversed, dicts), repeat(None)))


def _values(dicts: list[dict]) -> list[Any]:
    return list(chain.from_iterable(map(dict.values, dicts)))


class _Structure:
    """A model's module tree, parameters and buffers, and copies to restore them from.

    Kept between calls (weakly keyed by model) while the model is made of the very same objects:
    walking ~200 modules and copying their dictionaries was half of the guard's cost, paid on every
    explain(). :meth:`unchanged` checks that nothing changed since, with identity comparisons over flat
    lists (C loops), and rebuilds otherwise, so a change the user makes between calls is never
    reverted. Buffer values are copied once and reused while every buffer keeps its version counter
    and storage (in-place writes bump ``_version``): one copy of the BatchNorm statistics stays alive
    per live model (0.2 MB for resnet50).
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = _modules_of(model)
        self.dicts = [m.__dict__ for m in self.modules]
        self.slots = list(chain.from_iterable(map(_SLOTS, self.dicts)))  # children, params, buffers per module
        self.children = self.slots[0::3]
        self.children_copies = list(map(dict.copy, self.children))
        self.tensor_dicts = [d for i, d in enumerate(self.slots) if i % 3]
        self.tensor_copies = list(map(dict.copy, self.tensor_dicts))
        self.tensor_lens = list(map(len, self.tensor_dicts))
        self.tensor_values = _values(self.tensor_dicts)
        # model.parameters() / buffers() order, shared tensors once
        self.params = [p for p in dict.fromkeys(_values(self.slots[1::3])) if p is not None]
        self.buffers = [b for b in dict.fromkeys(_values(self.slots[2::3])) if b is not None]
        self.buffer_copies: Callable[[int], torch.Tensor] | None = None
        self.buffer_versions: list[int] = []
        self.buffer_ptrs: list[int] = []

    def unchanged(self) -> bool:
        """True while the model is made of the same modules, parameters and buffers as when built."""
        slots = list(chain.from_iterable(map(_SLOTS, self.dicts)))
        return (len(slots) == len(self.slots) and all(map(is_, slots, self.slots))
                and self.children == self.children_copies  # values are modules: compared by identity
                and list(map(len, self.tensor_dicts)) == self.tensor_lens
                and all(map(is_, _values(self.tensor_dicts), self.tensor_values)))

    def restore_tree(self) -> None:
        """Put back every module's children, parameters and buffers (by identity)."""
        slots = list(chain.from_iterable(map(_SLOTS, self.dicts)))
        if len(slots) != len(self.slots) or not all(map(is_, slots, self.slots)):
            # a dictionary object replaced (Sequential.__delitem__ builds a new _modules)
            for md, i in zip(self.dicts, range(0, len(self.slots), 3), strict=True):
                md["_modules"], md["_parameters"], md["_buffers"] = self.slots[i : i + 3]
        if self.children != self.children_copies:
            for d, copy in zip(self.children, self.children_copies, strict=True):
                if d != copy:
                    d.clear()
                    d.update(copy)
        if list(map(len, self.tensor_dicts)) != self.tensor_lens or not all(
                map(is_, _values(self.tensor_dicts), self.tensor_values)):
            for d, copy in zip(self.tensor_dicts, self.tensor_copies, strict=True):
                if len(d) != len(copy) or not all(map(is_, d.values(), copy.values())) or list(d) != list(copy):
                    d.clear()
                    d.update(copy)

    def copies_of_buffers(self, versions: list[int]) -> Callable[[int], torch.Tensor]:
        ptrs = list(map(_DATA_PTR, self.buffers))
        if self.buffer_copies is None or versions != self.buffer_versions or ptrs != self.buffer_ptrs:
            self.buffer_copies = _snapshot(self.buffers)
            self.buffer_versions, self.buffer_ptrs = versions, ptrs
        return self.buffer_copies


#: model -> its _Structure from the last call
_STRUCTURES: weakref.WeakKeyDictionary[nn.Module, _Structure] = weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> _Structure:
    s = _STRUCTURES.get(model)  # (torch's own module walks need hashable modules too)
    if s is None or not s.unchanged():
        s = _STRUCTURES[model] = _Structure(model)
    return s


class ModelGuard:
    """Context manager that restores a model's full state on exit.

    Args:
        model: The user's model.
        eval_mode: Run the block in eval mode (BatchNorm statistics and dropout would otherwise make
            explanations random and update buffers).
        freeze_params: Set ``requires_grad=False`` on every parameter for the block; no method reads
            weight gradients, and skipping them is most of pytorch-grad-cam's excess cost.
        copy_params: Also copy every parameter's values and put them back (for backends that
            write into weights).

    The guard runs on every ``explain()``, and on a GPU, where a batch of 8 takes a few
    milliseconds that the CPU spends launching kernels, its cost adds in full. Hence the structure
    kept between calls and the flat lists: state is taken and compared with ``map``/``chain`` over
    all modules at once instead of a Python loop per module, and objects are compared by identity,
    never with ``==`` (on a tensor that computes element-wise and has no truth value).
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
        # has a key >= this one, and none was added at all if the counter has not moved.
        self._hook_id0 = RemovableHandle.next_id
        s = self._s = _structure(self.model)
        # Toolkits park attributes on modules (Captum's LRP: rule, activations); new ones are dropped.
        # Names per module (exact, 35 us for 185 modules), then a cheap count + last-name check on exit.
        self._attr_keys = list(map(tuple, s.dicts))
        self._attrs = _attr_shape(s.dicts)
        self._flags = _flags_of(s.dicts)
        params = s.params
        self._requires_grad = [p.requires_grad for p in params]
        self._grads = [p.grad for p in params]
        self._param_versions = list(map(_VERSION, params))
        self._param_ptrs = list(map(_DATA_PTR, params))
        self._buffer_versions = list(map(_VERSION, s.buffers))
        self._buffer_copies = s.copies_of_buffers(self._buffer_versions)
        self._param_copies = [(p, p.detach().clone()) for p in params] if self.copy_params else []
        try:
            for p in params:
                # Detach the user's .grad so a backend's backward() cannot accumulate into it.
                p.grad = None
                if self.freeze_params:
                    p.requires_grad_(False)
            # model.eval() walks the tree through nn.Module.__setattr__ (0.3 ms on resnet50 here);
            # skip it when no module is in training mode, as in most inference code.
            if self.eval_mode and any(f[0] for f in self._flags):
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
        s = self._s
        try:
            dicts = list(filter(None, chain.from_iterable(map(_HOOK_DICTS, s.dicts))))
        except KeyError:  # a torch without one of these dictionaries
            dicts = [d for md in s.dicts for name in MODULE_HOOK_DICTS if (d := md.get(name))]
        dicts += [d for name in GLOBAL_HOOK_DICTS if (d := getattr(_module_mod, name, None))]
        tensors = s.params + [b for b in s.buffers if b.requires_grad]  # those that can hold tensor hooks
        dicts += [d for t in tensors for name in TENSOR_HOOK_ATTRS if (d := getattr(t, name, None))]
        for d in dicts:
            for k in [k for k in d if isinstance(k, int) and k >= id0]:
                del d[k]

    def _drop_new_attributes(self) -> None:
        for md, keys in zip(self._s.dicts, self._attr_keys, strict=True):
            if tuple(md) != keys:
                kept = set(keys)
                for k in [k for k in md if k not in kept]:
                    del md[k]

    def restore(self) -> None:
        """Put everything back; safe to call more than once."""
        s = self._s
        s.restore_tree()
        if _attr_shape(s.dicts) != self._attrs:
            self._drop_new_attributes()
        if _flags_of(s.dicts) != self._flags:
            for m, (training, full_bw) in zip(s.modules, self._flags, strict=True):
                if m.__dict__.get("_is_full_backward_hook", _MISSING) is not full_bw:
                    m._is_full_backward_hook = full_bw
                if m.__dict__.get("training", _MISSING) is not training:
                    m.training = training
        if RemovableHandle.next_id != self._hook_id0:
            self._remove_new_hooks()
        with torch.no_grad():
            if list(map(_VERSION, s.buffers)) != self._buffer_versions:
                for i, (b, version) in enumerate(zip(s.buffers, self._buffer_versions, strict=True)):
                    if b._version != version:
                        b.copy_(self._buffer_copies(i))
            for p, copy in self._param_copies:
                if not torch.equal(p, copy):
                    p.copy_(copy)
        for p, req, grad in zip(s.params, self._requires_grad, self._grads, strict=True):
            if p.requires_grad is not req:
                p.requires_grad_(req)
            p.grad = grad

    def params_modified(self) -> list[str]:
        """Names of parameters whose storage or values were changed in place during the block."""
        params = self._s.params
        if self.copy_params:
            changed = [p for p, copy in self._param_copies if not torch.equal(p, copy)]
        elif list(map(_VERSION, params)) == self._param_versions and list(map(_DATA_PTR, params)) == self._param_ptrs:
            return []
        else:
            changed = [p for p, v, ptr in zip(params, self._param_versions, self._param_ptrs, strict=True)
                       if p._version != v or p.data_ptr() != ptr]
        if not changed:
            return []
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names.get(id(p), "?") for p in changed]
