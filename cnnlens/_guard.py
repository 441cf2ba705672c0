"""Leave the user's model exactly as it was found.

:class:`ModelGuard` snapshots everything a backend may touch (hooks of every kind, the module tree,
train/eval flags, ``requires_grad``, ``.grad``, buffers, the storage under every parameter and
buffer, the settings of torch's layers) and restores it on exit, including when the call raises
half-way. Toolkits leak hooks (FlashTorch never removes its own; pytorch-grad-cam leaks without
``with``), swap modules (pytorch-grad-cam's guided backprop replaces every ``nn.ReLU``), call
``model.eval()`` and swap storages (zennit's BatchNorm merge: ``weight.data = ...``, ``eps = 0.``);
none of that may survive a cnnlens call.

It also holds in the situations real programs meet: TorchScript models (scripted or traced), several
threads explaining one model (one at a time per model, by a per-model lock), Ctrl-C while the model is
being restored (held back until the restore is complete, then delivered), models unpickled from
another process (whose hook ids are above this process's counter) and models that are garbage: the
guard keeps nothing alive.
"""

from __future__ import annotations

import signal
import sys
import threading
import weakref
from itertools import chain, repeat
from operator import attrgetter, call, is_, itemgetter
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module_mod
from torch.utils.hooks import RemovableHandle

from cnnlens.errors import ModelError

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


def is_scripted(model: nn.Module) -> torch.jit.ScriptModule | None:
    """The first TorchScript module (``torch.jit.script`` or ``trace``) in ``model``'s tree, or None.

    Module hooks registered on a TorchScript module never run (its compiled forward calls its
    submodules in C++), so methods built on hooks cannot explain such a model.
    """
    for m in model.modules():
        if isinstance(m, torch.jit.ScriptModule):
            return m
    return None


def _children(m: nn.Module) -> Any:
    # ``_modules`` of an eager module is in its __dict__; a traced module forwards the attribute
    # to the script module it wraps.
    d = m.__dict__.get("_modules")
    return d if d is not None else m._modules


def _modules_of(model: nn.Module) -> tuple[list[nn.Module], bool]:
    """Every distinct module under ``model`` (breadth first), and whether any is a TorchScript module:
    ``model.modules()`` without its recursive generators and name strings, about half the cost on a
    185-module network."""
    out = [model]
    seen = {id(model)}
    scripted = False
    i = 0
    while i < len(out):
        m = out[i]
        if isinstance(m, torch.jit.ScriptModule):
            scripted = True
        for child in _children(m).values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                out.append(child)
        i += 1
    return out, scripted


class _BufferCopies:
    """Copies of tensors (one ``torch.cat`` per device and dtype); ``copies(i)`` is tensor ``i``'s.

    One concatenation instead of a clone per buffer: on a GPU that is one kernel launch instead of
    ~160 for a ResNet-50's BatchNorm buffers, paid on every call. Non-strided tensors are cloned.
    Holds only the copies, never the tensors themselves (they belong to the user's model).
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        self.single: dict[int, torch.Tensor] = {}
        for i, t in enumerate(tensors):
            if t.layout == torch.strided:
                groups.setdefault((t.device, t.dtype), []).append(i)
            else:
                self.single[i] = t.detach().clone()
        self.where: dict[int, tuple[torch.Tensor, int, int, torch.Size]] = {}
        for idx in groups.values():
            flat = torch.cat([tensors[i].detach().reshape(-1) for i in idx])
            offset = 0
            for i in idx:
                n = tensors[i].numel()
                self.where[i] = (flat, offset, n, tensors[i].shape)
                offset += n

    def __call__(self, i: int) -> torch.Tensor:
        if i in self.single:
            return self.single[i]
        flat, offset, n, shape = self.where[i]
        return flat[offset : offset + n].view(shape)


_VERSION = attrgetter("_version")
_DATA_PTR = torch.Tensor.data_ptr
_STORAGE = torch.Tensor.untyped_storage
_IS_INFERENCE = torch.Tensor.is_inference
_DICT = attrgetter("__dict__")
_SLOTS = itemgetter("_modules", "_parameters", "_buffers")
_FLAGS = itemgetter("training", "_is_full_backward_hook")
_HOOK_DICTS = itemgetter(*MODULE_HOOK_DICTS)
_MISSING = object()
_NONE = type(None)  # called, returns None: the "weak reference" kept for an empty (None) slot


def _flags_of(dicts: list[dict]) -> list[tuple[Any, Any]]:
    """(training, _is_full_backward_hook) of each module, from its ``__dict__``."""
    try:
        return list(map(_FLAGS, dicts))
    except KeyError:  # an attribute deleted by someone: compare what is there
        return [(d.get("training", _MISSING), d.get("_is_full_backward_hook", _MISSING)) for d in dicts]


#: Modules defined here are torch's and torchvision's own layers (``FrozenBatchNorm2d`` is in ``torchvision.ops``).
_LAYER_MODULES = ("torch.nn.", "torchvision.ops.")


def _torch_layers(modules: list[nn.Module]) -> list[bool]:
    """Which modules are torch's own layers (``torch.nn``, ``torchvision.ops``): their attributes are
    settings (``eps``, ``inplace``, ``padding``) that no forward changes, so any change inside the
    guard is undone. A user's module may keep state of its own in attributes (a call counter, a
    cache) that its forward legitimately changes; there only attributes that were added are dropped."""
    return [type(m).__module__.startswith(_LAYER_MODULES) for m in modules]


def _same_attributes(dicts: list[dict], copies: list[dict]) -> bool:
    """Whether every module's ``__dict__`` still holds what its copy holds (by identity, then ``==``:
    a value that is not identical and whose ``==`` fails or has no truth value counts as changed)."""
    try:
        return bool(dicts == copies)
    except Exception:  # e.g. a tensor attribute replaced by another tensor
        return False


def _values(dicts: list[dict]) -> list[Any]:
    return list(chain.from_iterable(map(dict.values, dicts)))


def _keys(dicts: list[dict]) -> list[Any]:
    return list(chain.from_iterable(dicts))


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal``, with NaN equal to NaN (a weight that holds a NaN is not "changed")."""
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _layout(t: torch.Tensor) -> tuple[torch.dtype, int, torch.Size, tuple[int, ...]]:
    """What, besides its storage, says which elements a tensor is: dtype, offset, size, stride."""
    return t.dtype, t.storage_offset(), t.size(), t.stride()


class _Storages:
    """The storages (and layouts) that a model's parameters and buffers use on entry, held for the call.

    ``param.data = t`` or ``buffer.data = t`` (zennit's canonizers merge BatchNorms that way, and
    ``module._buffers[k] = t`` is caught by the tree's identity check) gives the same tensor object
    another storage without bumping its ``_version``, and the original storage may then be freed.
    Holding it for the call lets the restore put the very same storage back under the very same
    tensor object: a user's view of a weight still sees the model's values afterwards.
    """

    def __init__(self, storages: list[Any], layouts: list[tuple[Any, ...]]) -> None:
        self.storages = storages
        self.layouts = layouts

    def put_back(self, t: torch.Tensor, i: int) -> None:
        """Make tensor ``t`` (number ``i`` on entry) view its entry storage again, as it did on entry."""
        dtype, offset, size, stride = self.layouts[i]
        storage = self.storages[i]
        alias = torch.empty(0, dtype=dtype, device=storage.device).set_(storage, offset, size, stride)
        t.data = alias


class _Structure:
    """What is known about an eager model between calls: its modules, parameters and buffers.

    Kept (weakly keyed by model) while the model is made of the very same objects: walking ~200
    modules and copying their dictionaries was half of the guard's cost, paid on every explain().
    :meth:`bind` checks that nothing changed since, with C loops over flat lists (the children,
    parameters and buffers of every module, in one list): lengths and names by equality, values by
    identity (``==`` on two tensors is element-wise and has no truth value). The structure is
    rebuilt otherwise, so a change the user makes between calls is never reverted.

    It holds weak references only: an entry that held the model, or anything that can reach it (a
    submodule, a hook bound to the model), would keep every explained model alive. Buffer values are
    copied once and reused while every buffer keeps its version counter and storage (in-place writes
    bump ``_version``): one copy of the BatchNorm statistics stays alive per live model (0.2 MB for
    resnet50).
    """

    def __init__(self, modules: list[nn.Module], dicts: list[dict]) -> None:
        # Any object of the structure that dies makes it stale: its id may be reused, and a dead
        # reference reads None, like an empty slot.
        stale = self.stale = [False]

        def died(_ref: weakref.ref, stale: list[bool] = stale) -> None:
            stale[0] = True

        self.module_refs = [weakref.ref(m, died) for m in modules]
        slots = list(chain.from_iterable(map(_SLOTS, dicts)))  # children, params, buffers per module
        full = list(filter(None, slots))
        values = _values(full)
        self.lens = list(map(len, slots))
        self.keys = _keys(full)
        self.refs = [_NONE if v is None else weakref.ref(v, died) for v in values]
        # model.parameters() / buffers() order, shared tensors once, as positions in ``values``
        kinds = list(chain.from_iterable(repeat(k % 3, n) for k, n in enumerate(self.lens)))
        self.param_at = self._unique(values, kinds, 1)
        self.buffer_at = self._unique(values, kinds, 2)
        tensors = [values[i] for i in self.param_at + self.buffer_at]
        self.inference = any(map(_IS_INFERENCE, tensors))
        self.torch_layers = _torch_layers(modules)
        # Hooks are told apart by handle id (ModelGuard._take); a model unpickled from another
        # process brings that process's ids, maybe above this one's counter: move the counter past
        # them, once per structure (hooks added later, in this process, have ids below it).
        _move_hook_ids_past(dicts)
        self.buffer_copies: _BufferCopies | None = None
        self.buffer_versions: list[int] = []
        self.buffer_ptrs: list[int] = []
        # weak references to the storages of params + buffers, valid while their pointers and versions hold
        self.storage_refs: list[weakref.ref] = []
        self.storage_layouts: list[tuple[Any, ...]] = []
        self.storage_key: tuple[list[int], list[int]] | None = None

    @staticmethod
    def _unique(values: list[Any], at: list[int], kind: int) -> list[int]:
        first: dict[int, int] = {}
        for i, (v, k) in enumerate(zip(values, at, strict=True)):
            if k == kind and v is not None:
                first.setdefault(id(v), i)
        return list(first.values())

    def bind(self, model: nn.Module) -> _Eager | None:
        """This call's view of ``model``, or None if it is no longer made of the same objects."""
        modules = list(map(call, self.module_refs))
        if self.stale[0] or modules[0] is not model:
            return None
        dicts = list(map(_DICT, modules))
        try:
            slots = list(chain.from_iterable(map(_SLOTS, dicts)))
        except KeyError:
            return None
        if list(map(len, slots)) != self.lens:
            return None
        full = list(filter(None, slots))  # the same positions are empty, as the lengths are equal
        values = _values(full)
        if not (all(map(is_, values, map(call, self.refs))) and _keys(full) == self.keys):
            return None
        return _Eager(self, modules, dicts, slots, values)

    def storages(self, tensors: list[torch.Tensor], ptrs: list[int], versions: list[int]) -> _Storages:
        """The entry storages of ``tensors``, from weak references kept between calls while every
        tensor keeps its data pointer and version (an in-place resize or restride bumps the version)."""
        key = (ptrs, versions)
        if self.storage_key == key:
            storages = list(map(call, self.storage_refs))
            if storages.count(None) == 0:
                return _Storages(storages, self.storage_layouts)
        storages = list(map(_STORAGE, tensors))
        self.storage_refs = list(map(weakref.ref, storages))
        self.storage_layouts = list(map(_layout, tensors))
        self.storage_key = key
        return _Storages(storages, self.storage_layouts)

    def copies_of_buffers(self, buffers: list[torch.Tensor], versions: list[int], ptrs: list[int]) -> _BufferCopies:
        if self.buffer_copies is None or versions != self.buffer_versions or ptrs != self.buffer_ptrs:
            self.buffer_copies = _BufferCopies(buffers)
            self.buffer_versions, self.buffer_ptrs = versions, ptrs
        return self.buffer_copies


def _move_hook_ids_past(dicts: list[dict]) -> None:
    """Make the handle counter larger than every hook id these modules' ``__dict__`` hold."""
    top = _top_hook_id(dicts)
    if top >= RemovableHandle.next_id:
        RemovableHandle.next_id = top + 1


def _top_hook_id(dicts: list[dict]) -> int:
    """The largest handle id among the hooks in these modules' ``__dict__`` (-1 if none)."""
    try:
        hooks = list(filter(None, chain.from_iterable(map(_HOOK_DICTS, dicts))))
    except KeyError:  # a torch without one of these dictionaries
        hooks = [d for md in dicts for name in MODULE_HOOK_DICTS if (d := md.get(name))]
    if not hooks:
        return -1
    try:
        return max(map(max, hooks))
    except TypeError:  # a key that is not a handle id (put there by hand)
        return max((k for d in hooks for k in d if isinstance(k, int)), default=-1)


class _Eager:
    """One call's view of an eager model: strong references to what was there on entry, so that
    whatever a backend removes or replaces can be put back."""

    def __init__(self, s: _Structure, modules: list[nn.Module], dicts: list[dict], slots: list[dict],
                 values: list[Any]) -> None:
        self.s = s
        self.modules = modules
        self.dicts = dicts
        self.slots = slots
        self.values = values
        self.params = list(map(values.__getitem__, s.param_at))
        self.buffers = list(map(values.__getitem__, s.buffer_at))
        self.inference = s.inference
        self.torch_layers = s.torch_layers

    def flags(self) -> list[tuple[Any, Any]]:
        return _flags_of(self.dicts)

    def set_flags(self, flags: list[tuple[Any, Any]]) -> None:
        for m, (training, full_bw) in zip(self.modules, flags, strict=True):
            if m.__dict__.get("_is_full_backward_hook", _MISSING) is not full_bw:
                m._is_full_backward_hook = full_bw
            if m.__dict__.get("training", _MISSING) is not training:
                m.training = training

    def copies_of_buffers(self, versions: list[int], ptrs: list[int]) -> _BufferCopies:
        return self.s.copies_of_buffers(self.buffers, versions, ptrs)

    def storages(self, tensors: list[torch.Tensor], ptrs: list[int], versions: list[int]) -> _Storages:
        return self.s.storages(tensors, ptrs, versions)

    def restore_tree(self) -> None:
        """Put back every module's children, parameters and buffers (by identity)."""
        dicts, slots, values, s = self.dicts, self.slots, self.values, self.s
        now = list(chain.from_iterable(map(_SLOTS, dicts)))
        if len(now) != len(slots) or not all(map(is_, now, slots)):
            # a dictionary object replaced (Sequential.__delitem__ builds a new _modules)
            for md, i in zip(dicts, range(0, len(slots), 3), strict=True):
                md["_modules"], md["_parameters"], md["_buffers"] = slots[i : i + 3]
        if list(map(len, slots)) == s.lens:
            full = list(filter(None, slots))
            if all(map(is_, _values(full), values)) and _keys(full) == s.keys:
                return
        at = 0
        for d, n in zip(slots, s.lens, strict=True):
            keys, vals = s.keys[at : at + n], values[at : at + n]
            at += n
            if len(d) != n or list(d) != keys or not all(map(is_, d.values(), vals)):
                d.clear()
                d.update(zip(keys, vals, strict=True))


class _Scripted:
    """One call's view of a model that holds TorchScript modules, built on every call.

    A TorchScript module keeps its parameters, buffers, submodules and ``training`` flag in C++,
    behind wrappers that read them on every access, so the eager fast paths (``__dict__`` lookups,
    dictionary copies) do not apply; everything here goes through the public accessors. Its tree
    and tensors can only be reassigned, never added or removed, so a reassignment is undone.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.dicts = list(map(_DICT, modules))
        self.tensors = [(m, kind, list(getattr(m, kind).items())) for m in modules
                        for kind in ("_modules", "_parameters", "_buffers")]
        self.params = list(dict.fromkeys(p for _m, kind, items in self.tensors if kind == "_parameters"
                                         for _n, p in items if p is not None))
        self.buffers = list(dict.fromkeys(b for _m, kind, items in self.tensors if kind == "_buffers"
                                          for _n, b in items if b is not None))
        self.inference = any(map(_IS_INFERENCE, self.params + self.buffers))
        self.torch_layers = _torch_layers(modules)
        _move_hook_ids_past(self.dicts)

    def flags(self) -> list[tuple[Any, Any]]:
        return [(m.training, m.__dict__.get("_is_full_backward_hook", _MISSING)) for m in self.modules]

    def set_flags(self, flags: list[tuple[Any, Any]]) -> None:
        for m, (training, full_bw) in zip(self.modules, flags, strict=True):
            if m.__dict__.get("_is_full_backward_hook", _MISSING) is not full_bw:
                m._is_full_backward_hook = full_bw
            if m.training != training:
                m.training = training

    def copies_of_buffers(self, _versions: list[int], _ptrs: list[int]) -> _BufferCopies:
        return _BufferCopies(self.buffers)

    def storages(self, tensors: list[torch.Tensor], _ptrs: list[int], _versions: list[int]) -> _Storages:
        return _Storages(list(map(_STORAGE, tensors)), list(map(_layout, tensors)))

    def restore_tree(self) -> None:
        for m, kind, items in self.tensors:
            d = getattr(m, kind)
            now = list(d.items())
            if len(now) == len(items) and all(a[0] == b[0] and a[1] is b[1] for a, b in zip(now, items, strict=True)):
                continue
            if isinstance(d, dict):  # an eager module inside the scripted tree
                d.clear()
                d.update(items)
            else:
                for name, value in items:
                    if d[name] is not value:
                        d[name] = value


#: model -> its _Structure from the last call (eager models only)
_STRUCTURES: weakref.WeakKeyDictionary[nn.Module, _Structure] = weakref.WeakKeyDictionary()
#: model -> the lock held from ModelGuard.__enter__ to the end of its restore
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _view(model: nn.Module) -> _Eager | _Scripted:
    s = _STRUCTURES.get(model)  # (torch's own module walks need hashable modules too)
    view = s.bind(model) if s is not None else None
    if view is None:
        modules, scripted = _modules_of(model)
        if scripted:
            _STRUCTURES.pop(model, None)
            return _Scripted(modules)
        s = _STRUCTURES[model] = _Structure(modules, list(map(_DICT, modules)))
        view = s.bind(model)
        if view is None:  # (cannot happen: nothing changed since the line above) the slow, safe path
            _STRUCTURES.pop(model, None)
            return _Scripted(modules)
    return view


def _lock_of(model: nn.Module) -> threading.RLock:
    lock = _LOCKS.get(model)
    if lock is None:
        with _LOCKS_LOCK:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
    return lock


# ------------------------------------------------------------------------------------------------
# Ctrl-C while the model is being snapshot or restored
# ------------------------------------------------------------------------------------------------

_THIS_FILE = __file__


class _Sigint:
    """SIGINT handling for the main thread while a guard is active.

    The user's handler is wrapped, not replaced: a Ctrl-C that arrives while this module's code is
    on the stack (taking or restoring the snapshot, however deep inside torch) is held back, and
    delivered to the user's handler when the outermost guard has finished restoring; one that arrives
    anywhere else (the backend's work inside the block) goes to the user's handler at once. The test
    is by stack frame, not by a flag set on entry to ``__exit__``: Python may run a pending handler
    on a function's first instruction, before any statement of it has run.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.user: Any = None
        self.pending = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        f = frame
        while f is not None:
            if f.f_code.co_filename == _THIS_FILE:
                self.pending = True
                return
            f = f.f_back
        self._deliver(self.user, signum, frame)

    @staticmethod
    def _deliver(user: Any, signum: int, frame: FrameType | None) -> None:
        if callable(user):
            user(signum, frame)
        elif user == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def enter(self) -> bool:
        """Wrap the handler (main thread, outermost guard); True if this guard must call :meth:`leave`."""
        if threading.current_thread() is not threading.main_thread():
            return False  # Python runs signal handlers on the main thread only
        if self.depth == 0:
            user = signal.getsignal(signal.SIGINT)
            if user is None:  # a handler installed outside Python: leave it alone
                return False
            if user == self.handler:  # (left installed by an interrupted unwrap)
                user = signal.default_int_handler
            self.user, self.pending = user, False
            signal.signal(signal.SIGINT, self.handler)
        self.depth += 1
        return True

    def deliver_pending(self, user: Any = _MISSING) -> None:
        """Hand a held-back Ctrl-C to the user's handler now (which raises KeyboardInterrupt).

        ``pending`` is cleared only right after it was read as set: the handler may set it between
        any two instructions, and a Ctrl-C must never be lost (two may merge into one).
        """
        if self.pending:
            self.pending = False
            self._deliver(self.user if user is _MISSING else user, signal.SIGINT, sys._getframe())

    def leave(self) -> None:
        """Unwrap (outermost guard), then deliver a held-back Ctrl-C to the user's handler (from a
        nested guard it reaches the outer guard's block, whose exit restores in turn)."""
        self.depth -= 1
        user = self.user
        if not self.depth:
            if signal.getsignal(signal.SIGINT) == self.handler:
                signal.signal(signal.SIGINT, user)  # from here a Ctrl-C goes straight to the user's handler
            self.user = None
        self.deliver_pending(user)


_SIGINT = _Sigint()


class ModelGuard:
    """Context manager that restores a model's full state on exit.

    Args:
        model: The user's model.
        eval_mode: Run the block in eval mode (BatchNorm statistics and dropout would otherwise make
            explanations random and update buffers).
        freeze_params: Set ``requires_grad=False`` on every parameter for the block; no method reads
            weight gradients, and skipping them is most of pytorch-grad-cam's excess cost.
        copy_params: Also copy every parameter's values and put them back, and compare every buffer
            with its copy (for backends that write into weights, maybe through ``.data``, which
            bumps no version counter).

    Raises:
        ModelError: On entry, before anything is changed, if the model's parameters or buffers are
            inference tensors (made under ``torch.inference_mode()``), which autograd cannot use.

    Guards of one model run one at a time: a re-entrant lock per model (kept weakly) is held from
    ``__enter__`` to the end of the restore, so threads sharing a model (a web app's workers) each
    see, and leave, the user's model rather than another call's frozen, eval-mode one.

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
        self._sigint = _SIGINT.enter()  # before anything else: from here a Ctrl-C waits for us
        try:
            self._lock = _lock_of(self.model)
            self._acquire()
        except BaseException:  # Ctrl-C while another thread held the model: nothing to undo
            if self._sigint:
                self._sigint = False
                _SIGINT.leave()
            raise
        try:
            self._take()
        except BaseException:
            self._release()
            raise
        try:
            self._change()
        except BaseException:
            self._exit()
            raise
        if self._sigint and _SIGINT.pending:  # a Ctrl-C held back during the snapshot: deliver it
            try:
                _SIGINT.deliver_pending()
            except BaseException:  # the usual KeyboardInterrupt: no block, so undo here
                self._exit()
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._exit()

    def _acquire(self) -> None:
        """Take the model's lock; while another thread holds it, a Ctrl-C is delivered at once."""
        if not self._sigint:
            self._lock.acquire()
            return
        while not self._lock.acquire(timeout=0.05):
            _SIGINT.deliver_pending()

    def _exit(self) -> None:
        try:
            self.restore()
        finally:
            self._release()

    def _release(self) -> None:
        try:
            self._lock.release()
        finally:
            if self._sigint:
                self._sigint = False
                _SIGINT.leave()

    def _take(self) -> None:
        """Snapshot the model; changes nothing."""
        s = self._s = _view(self.model)
        if s.inference:
            raise ModelError(
                "the model's parameters are inference tensors (it was created or loaded under "
                "torch.inference_mode()), which autograd cannot differentiate or restore; create or load "
                "the model outside torch.inference_mode(), or make ordinary copies of its tensors first: "
                "model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)"
            )
        # Hooks need no snapshot: every torch API that adds one (module, global or tensor hooks) keys
        # it by RemovableHandle.next_id, a process-wide counter, so a hook added during the block has
        # a key >= this one, and none was added at all if the counter has not moved. (The structure
        # moved the counter past the ids that a model unpickled from another process brought along.)
        self._hook_id0 = RemovableHandle.next_id
        # Toolkits park attributes on modules (Captum's LRP: rule, activations) and set existing ones
        # (zennit's BatchNorm merge sets ``eps = 0.``): a shallow copy of every module's ``__dict__``
        # (17 us for resnet50's 161 modules), compared on exit with one ``==`` over all of them
        # (what is restored where: _torch_layers).
        self._attr_copies = list(map(dict.copy, s.dicts))
        self._flags = s.flags()
        params = s.params
        self._requires_grad = [p.requires_grad for p in params]
        self._grads = [p.grad for p in params]
        # Storage identity of every parameter and buffer (``.data = t`` swaps it without a version bump)
        tensors = self._tensors = params + s.buffers
        self._ptrs = list(map(_DATA_PTR, tensors))
        self._versions = list(map(_VERSION, tensors))
        n = len(params)
        self._param_versions, self._param_ptrs = self._versions[:n], self._ptrs[:n]
        self._buffer_versions = self._versions[n:]
        self._storages = s.storages(tensors, self._ptrs, self._versions)
        self._buffer_copies = s.copies_of_buffers(self._buffer_versions, self._ptrs[n:])
        self._param_copies = [(p, p.detach().clone()) for p in params] if self.copy_params else []

    def _change(self) -> None:
        """Detach the user's gradients, freeze the parameters and switch to eval mode for the block."""
        for p in self._s.params:
            # Detach the user's .grad so a backend's backward() cannot accumulate into it.
            p.grad = None
            if self.freeze_params:
                p.requires_grad_(False)
        # model.eval() walks the tree through nn.Module.__setattr__ (0.3 ms on resnet50 here);
        # skip it when no module is in training mode, as in most inference code.
        if self.eval_mode and any(f[0] for f in self._flags):
            self.model.eval()

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

    def _restore_attributes(self) -> None:
        """Give each of torch's own layers exactly the attribute names and objects it held on entry;
        drop the attributes added to any other module."""
        for md, copy, torch_layer in zip(self._s.dicts, self._attr_copies, self._s.torch_layers, strict=True):
            if len(md) == len(copy) and list(md) == list(copy) and all(map(is_, md.values(), copy.values())):
                continue
            if torch_layer:
                md.clear()
                md.update(copy)
            else:
                for k in [k for k in md if k not in copy]:
                    del md[k]

    def _restore_storages(self) -> None:
        """Give every parameter and buffer whose storage was swapped (``.data = t``) its own back."""
        put_back = self._storages.put_back
        for i, (t, ptr) in enumerate(zip(self._tensors, self._ptrs, strict=True)):
            if t.data_ptr() != ptr:
                put_back(t, i)

    def restore(self) -> None:
        """Put everything back; safe to call more than once."""
        s = self._s
        s.restore_tree()
        if not _same_attributes(s.dicts, self._attr_copies):
            self._restore_attributes()
        if s.flags() != self._flags:
            s.set_flags(self._flags)
        if RemovableHandle.next_id != self._hook_id0:
            self._remove_new_hooks()
        with torch.no_grad():
            if list(map(_DATA_PTR, self._tensors)) != self._ptrs:
                self._restore_storages()
            if self.copy_params:  # a backend that writes tensors may also write through ``.data`` (no version bump)
                for i, b in enumerate(s.buffers):
                    copy = self._buffer_copies(i)
                    if not _same_values(b, copy):
                        b.copy_(copy)
            elif list(map(_VERSION, s.buffers)) != self._buffer_versions:
                for i, (b, version) in enumerate(zip(s.buffers, self._buffer_versions, strict=True)):
                    if b._version != version:
                        b.copy_(self._buffer_copies(i))
            for p, copy in self._param_copies:
                if not _same_values(p, copy):
                    p.copy_(copy)
        for p, req, grad in zip(s.params, self._requires_grad, self._grads, strict=True):
            if p.requires_grad is not req:
                p.requires_grad_(req)
            p.grad = grad

    def params_modified(self) -> list[str]:
        """Names of parameters whose storage or values were changed in place during the block."""
        params = self._s.params
        if self.copy_params:
            changed = [p for p, copy in self._param_copies if not _same_values(p, copy)]
        elif list(map(_VERSION, params)) == self._param_versions and list(map(_DATA_PTR, params)) == self._param_ptrs:
            return []
        else:
            changed = [p for p, v, ptr in zip(params, self._param_versions, self._param_ptrs, strict=True)
                       if p._version != v or p.data_ptr() != ptr]
        if not changed:
            return []
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names.get(id(p), "?") for p in changed]
