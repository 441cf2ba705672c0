"""ModelGuard's fast paths: hooks removed by handle id, buffer copies reused between calls.

Both exist to keep the guard's fixed cost per explain() low (it matters on a GPU, where a call takes
milliseconds); neither may lose anything the user owns."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_mod

from cnnlens._guard import ModelGuard, hook_count
from cnnlens.testing import assert_same_state, snapshot, tiny_cnn


def _noop(*_a: object) -> None:
    return None


def test_hooks_added_inside_are_removed_and_the_users_hooks_kept() -> None:
    model = tiny_cnn()
    model.fc.weight.requires_grad_(True)
    user = [
        model.features[0].register_forward_hook(_noop),
        model.features[3].register_full_backward_hook(_noop),
        model.fc.weight.register_hook(lambda g: g),
    ]
    user_global = module_mod.register_module_forward_pre_hook(_noop)
    try:
        before = hook_count(model)
        full_bw = model.features[3]._is_full_backward_hook
        with ModelGuard(model):
            model.features[0].register_forward_hook(_noop)
            model.features[1].register_forward_pre_hook(_noop)
            model.features[4].register_full_backward_hook(_noop)
            model.features[0].register_state_dict_pre_hook(_noop)
            model.fc.weight.requires_grad_(True)
            model.fc.weight.register_hook(lambda g: g)
            model.fc.weight.register_post_accumulate_grad_hook(_noop)
            inner_global = module_mod.register_module_forward_hook(_noop)
        assert hook_count(model) == before
        assert inner_global.id not in module_mod._global_forward_hooks
        assert user_global.id in module_mod._global_forward_pre_hooks
        assert not model.features[0]._state_dict_pre_hooks
        assert model.features[3]._is_full_backward_hook is full_bw and model.features[4]._is_full_backward_hook is None
        assert [h.id for h in user] == [*model.features[0]._forward_hooks, *model.features[3]._backward_hooks,
                                        *model.fc.weight._backward_hooks]
        # hooks the user adds after the block are theirs
        later = model.features[1].register_forward_hook(_noop)
        with ModelGuard(model):
            pass
        assert later.id in model.features[1]._forward_hooks
    finally:
        user_global.remove()
        for h in user:
            h.remove()


def test_buffers_restored_from_the_values_of_this_call() -> None:
    """Copies are reused only while every buffer is unchanged; a user's change between calls is kept."""
    model = tiny_cnn()
    bn = model.features[1]
    assert isinstance(bn, nn.BatchNorm2d)
    first = bn.running_mean.clone()
    with ModelGuard(model):
        bn.running_mean.add_(1.0)
    assert torch.equal(bn.running_mean, first)
    with ModelGuard(model):  # copies taken here (the restore above bumped the version) ...
        pass
    with ModelGuard(model):  # ... and reused here
        bn.running_mean.add_(2.0)
    assert torch.equal(bn.running_mean, first)
    bn.running_mean.fill_(3.0)  # the user's own change between calls
    with ModelGuard(model):
        bn.running_mean.zero_()
    assert torch.equal(bn.running_mean, torch.full_like(first, 3.0))
    bn.running_var = torch.full_like(bn.running_var, 4.0)  # a new tensor in place of the old one
    with ModelGuard(model):
        bn.running_var.zero_()
        bn.num_batches_tracked.add_(7)
    assert torch.equal(bn.running_var, torch.full_like(first, 4.0)) and int(bn.num_batches_tracked) == 0


def test_eval_mode_inside_and_flags_back() -> None:
    model = tiny_cnn()
    model.features[1].train()
    with ModelGuard(model):
        assert not any(m.training for m in model.modules())
    assert model.features[1].training and not model.training
    model.eval()
    with ModelGuard(model):
        model.features[4].train()  # a backend flipping a flag on an all-eval model
    assert not any(m.training for m in model.modules())


def test_replaced_parameters_buffers_and_modules_come_back_as_the_same_objects() -> None:
    """A backend that swaps tensors or submodules: the user's very objects are put back (compared by
    identity; ``==`` on two tensors is element-wise and once crashed the restore)."""
    model = tiny_cnn()
    conv, bn = model.features[0], model.features[1]
    children = list(model.features)
    weight, mean, scalar = conv.weight, bn.running_mean, bn.num_batches_tracked
    model.register_parameter("gain", nn.Parameter(torch.ones(1)))
    gain = model.gain
    with ModelGuard(model):
        conv.weight = nn.Parameter(torch.zeros_like(weight))
        bn.running_mean = torch.ones_like(mean)
        bn.num_batches_tracked = scalar.clone()  # equal values, another object
        model.gain = nn.Parameter(torch.ones(1))  # equal one-element tensor: == would say "same"
        model.features[2] = nn.Identity()
        del model.features[3]
        conv.bias = None
    assert conv.weight is weight and bn.running_mean is mean and bn.num_batches_tracked is scalar
    assert model.gain is gain and conv.bias is not None
    assert list(model.features) == children and list(model.features._modules) == [str(i) for i in range(6)]


def test_changes_the_user_makes_between_calls_are_kept() -> None:
    """The guard keeps what it learnt about a model between calls; a change made in between (a new
    submodule, parameter, buffer, attribute, flag) must be the state it restores to, not the old one."""
    model = tiny_cnn()
    with ModelGuard(model):
        pass
    head = nn.Linear(model.fc.in_features, model.fc.out_features)
    model.fc = head
    new_weight = nn.Parameter(torch.randn_like(model.features[0].weight))
    model.features[0].weight = new_weight
    model.features[1].register_buffer("extra", torch.zeros(3))
    model.features[0].note = "mine"
    model.train()
    with ModelGuard(model):
        model.fc = nn.Identity()
        model.features[0].weight = nn.Parameter(torch.zeros_like(new_weight))
        model.features[0].other = 1
    assert model.fc is head and model.features[0].weight is new_weight and model.training
    assert "extra" in model.features[1]._buffers and model.features[0].note == "mine"
    assert not hasattr(model.features[0], "other")
    del model.features[1].extra
    with ModelGuard(model):
        pass
    assert "extra" not in model.features[1]._buffers and model.features[0].weight is new_weight


def _identities(model: nn.Module) -> tuple:
    """The identity of every module, parameter and buffer, every module's attribute names and its
    full-backward-hook flag (what snapshot() does not cover)."""
    return (
        [(n, id(p)) for n, p in model.named_parameters(remove_duplicate=False)],
        [(n, id(b)) for n, b in model.named_buffers(remove_duplicate=False)],
        [(n, tuple(vars(m)), m._is_full_backward_hook) for n, m in model.named_modules(remove_duplicate=False)],
    )


class _BackendFailed(Exception):
    pass


def _mutations(model: nn.Module, rng: random.Random) -> list:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    params = list(model.parameters())

    def tensor_hook() -> None:
        p = rng.choice(params)
        p.requires_grad_(True)
        p.register_hook(lambda g: g)

    def grad() -> None:
        p = rng.choice(params)
        p.grad = torch.ones_like(p)

    def replace_children_dict() -> None:
        model.features._modules = OrderedDict(reversed(list(model.features._modules.items())))

    return [
        lambda: setattr(rng.choice(convs), "weight", nn.Parameter(torch.zeros(1))),
        lambda: setattr(rng.choice(bns), "running_mean", torch.ones(3)),
        lambda: rng.choice(bns).running_var.add_(1.0),
        lambda: rng.choice(bns).num_batches_tracked.add_(3),
        lambda: model.features.__delitem__(rng.randrange(len(model.features))) if len(model.features) else None,
        lambda: setattr(model, "fc", nn.Linear(3, 3)),
        lambda: setattr(model, "extra", nn.ReLU()),
        lambda: setattr(rng.choice(list(model.modules())), "parked", object()),
        lambda: rng.choice(list(model.modules())).train(rng.random() < 0.5),
        lambda: rng.choice(list(model.modules())).register_forward_hook(_noop),
        lambda: rng.choice(list(model.modules())).register_full_backward_hook(_noop),
        tensor_hook,
        lambda: rng.choice(params).requires_grad_(rng.random() < 0.5),
        grad,
        lambda: rng.choice(bns).register_buffer("extra_buf", torch.zeros(2)),
        lambda: rng.choice(convs).register_parameter("bias", None),
        replace_children_dict,
        lambda: module_mod.register_module_forward_hook(_noop),
    ]


def test_random_mutations_inside_are_undone_and_changes_between_calls_kept() -> None:
    """200 seeded trials: the user changes the model (or not) between calls, then a "backend" makes
    1-5 random changes inside the guard, sometimes failing half-way; the model must come back exactly
    as the user left it, down to object identity."""
    for seed in range(200):
        rng = random.Random(seed)
        model = tiny_cnn()
        model.features[4].train()
        model.features[0].register_forward_hook(_noop)
        model.fc.weight.requires_grad_(True)
        model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
        with ModelGuard(model):  # the guard has seen this model before the user's change
            pass
        user_globals = dict(module_mod._global_forward_hooks)
        if rng.random() < 0.5:
            rng.choice(_mutations(model, rng))()  # the user's own change between calls
        before, ids = snapshot(model), _identities(model)
        globals_before = dict(module_mod._global_forward_hooks)
        fail = rng.random() < 0.3
        try:
            with ModelGuard(model):
                for _ in range(rng.randint(1, 5)):
                    rng.choice(_mutations(model, rng))()
                if fail:
                    raise _BackendFailed
        except _BackendFailed:
            pass
        try:
            assert_same_state(before, model)
            assert _identities(model) == ids
            assert dict(module_mod._global_forward_hooks) == globals_before
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc
        finally:
            for k in set(module_mod._global_forward_hooks) - set(user_globals):
                del module_mod._global_forward_hooks[k]



class _ToolkitFailed(Exception):
    pass


@pytest.mark.parametrize("fail", [False, True], ids=["returns", "raises"])
def test_replaced_storages_and_attribute_values_come_back(fail) -> None:
    """A "toolkit" that swaps the storage of a buffer and of a parameter (``.data = t``, which bumps no
    version counter; zennit's BatchNorm merge does this), puts a new tensor into ``_buffers`` and sets
    an existing attribute (``eps``): the same objects come back, on their own storages, with their values."""
    model = tiny_cnn()
    conv, bn = model.features[0], model.features[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 16, 16)
    out = model(x).detach()
    mean, var, weight, eps = bn.running_mean, bn.running_var, conv.weight, bn.eps
    ptrs = {"mean": mean.data_ptr(), "var": var.data_ptr(), "weight": weight.data_ptr()}
    values = {"mean": mean.clone(), "var": var.clone(), "weight": weight.detach().clone()}
    view = weight.data[0]  # the user's view of a weight keeps seeing the model's weight
    before = snapshot(model)
    try:
        with ModelGuard(model):
            bn.running_mean.data = torch.zeros_like(mean)
            conv.weight.data = conv.weight.data * 2.0
            bn._buffers["running_var"] = torch.ones_like(var)
            bn.eps = 0.0
            if fail:
                raise _ToolkitFailed
    except _ToolkitFailed:
        pass
    assert bn.running_mean is mean and bn.running_var is var and conv.weight is weight and bn.eps == eps
    assert {"mean": mean.data_ptr(), "var": var.data_ptr(), "weight": weight.data_ptr()} == ptrs
    assert torch.equal(mean, values["mean"]) and torch.equal(var, values["var"])
    assert torch.equal(weight, values["weight"]) and view.data_ptr() == weight.data_ptr()
    assert torch.equal(model(x), out)
    assert_same_state(before, model)


def test_state_a_users_module_keeps_in_its_attributes_is_its_own() -> None:
    """A user's forward may count calls or cache in its attributes: such a change is kept (an added
    attribute is still dropped), while torch's own layers get every setting back."""
    model = tiny_cnn()
    model.calls = 0
    relu = next(m for m in model.modules() if isinstance(m, nn.ReLU))
    with ModelGuard(model):
        model.calls += 1
        model.parked = object()
        relu.inplace = not relu.inplace
    assert model.calls == 1 and not hasattr(model, "parked") and relu.inplace is False


def test_writes_through_a_data_alias_are_undone_for_tensor_writing_backends() -> None:
    """``buffer.data.add_()`` bumps no version counter either; for a backend that writes tensors
    (``copy_params``) every buffer is compared with its copy."""
    model = tiny_cnn()
    bn = model.features[1]
    first = bn.running_var.clone()
    with ModelGuard(model, copy_params=True):
        bn.running_var.data.mul_(3.0)
        model.fc.weight.data.zero_()
    assert torch.equal(bn.running_var, first) and model.fc.weight.abs().sum() > 0


def test_a_weight_holding_nan_is_not_reported_as_changed() -> None:
    """NaN != NaN: a tensor-writing backend's check compared values with ``torch.equal`` and called
    a model with a NaN in an unused weight "modified in place"."""
    model = tiny_cnn()
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = float("nan")
        model.features[1].running_var[0] = float("nan")
    with ModelGuard(model, copy_params=True) as guard:
        pass
    assert guard.params_modified() == []
    assert torch.isnan(model.features[0].weight[0, 0, 0, 0]) and torch.isnan(model.features[1].running_var[0])
