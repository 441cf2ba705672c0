"""Helpers for testing code that uses cnnlens (and for cnnlens's own tests): tiny models and
model-state snapshots. Nothing here downloads anything."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cnnlens._guard import hook_count

__all__ = ["CountingHook", "TinyCNN", "assert_same_state", "hook_count", "one_line_error", "run_cli", "snapshot",
           "tiny_cnn", "tiny_input"]


class TinyCNN(nn.Module):
    """conv-bn-relu x2, pool, linear: every layer type each toolkit supports, each module used once."""

    def __init__(self, num_classes: int = 5, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, padding=1, stride=2),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def tiny_cnn(num_classes: int = 5, seed: int = 0) -> TinyCNN:
    """A seeded TinyCNN with non-trivial BatchNorm statistics, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model = TinyCNN(num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    model.cnnlens_categories = [f"class{i}" for i in range(num_classes)]
    return model.eval()


def zero_head_cnn(num_classes: int = 5) -> TinyCNN:
    """:func:`tiny_cnn` with its classifier head at zero (a fresh head's zero initialisation): every
    class gets the same score, so every map of it is constant."""
    model = tiny_cnn(num_classes)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    return model


def nan_cnn(num_classes: int = 5) -> TinyCNN:
    """:func:`tiny_cnn` whose scores are all NaN (a NaN in its classifier bias)."""
    model = tiny_cnn(num_classes)
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    return model


class CountingHook:
    """A forward hook that counts its calls; picklable, so it travels with a saved model."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *_args: Any) -> None:
        self.calls += 1


def tiny_input(n: int = 2, size: int = 32, seed: int = 0) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a well-behaved adapter must leave untouched."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "storage": [(k, v.data_ptr()) for k, v in model.state_dict(keep_vars=True).items()],
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grad": [(n, None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()],
        "grad_ids": [(n, id(p.grad)) for n, p in model.named_parameters()],
        "modules": [(n, id(m), type(m)) for n, m in model.named_modules()],
        "inplace": [(n, getattr(m, "inplace", None)) for n, m in model.named_modules()],
        "hooks": hook_count(model),
    }


def assert_same_state(before: dict[str, Any], model: nn.Module) -> None:
    """Raise AssertionError naming the first difference from ``before``."""
    after = snapshot(model)
    assert after["hooks"] == before["hooks"], f"hooks left behind: {before['hooks']} -> {after['hooks']}"
    changed = [k for (k, p0), (_, p1) in zip(before["storage"], after["storage"], strict=False) if p0 != p1]
    assert not changed, f"storage of {', '.join(changed[:3])} replaced (.data = ...)"
    assert after["modules"] == before["modules"], "module tree changed"
    assert after["inplace"] == before["inplace"], "in-place flags changed"
    assert after["training"] == before["training"], "train/eval flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad changed"
    assert after["grad_ids"] == before["grad_ids"], ".grad objects replaced"
    assert len(after["grad"]) == len(before["grad"]), "parameters added or removed"
    for (n, g0), (_, g1) in zip(before["grad"], after["grad"], strict=True):
        assert (g0 is None) == (g1 is None) and (g0 is None or torch.equal(g0, g1)), f".grad of {n} changed"
    assert before["state"].keys() == after["state"].keys(), "state_dict keys changed"
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{k} changed"


def run_cli(*args: Any) -> Any:
    """Run the ``cnnlens`` command line in-process (typer's ``CliRunner``); returns its result."""
    from typer.testing import CliRunner

    from cnnlens import cli

    return CliRunner().invoke(cli.app, [str(a) for a in args])


def one_line_error(result: Any, *words: str) -> str:
    """Assert the CLI's bad-input contract: exit code 2, exactly one line on stderr starting with
    ``cnnlens: error:``, no traceback, and each of ``words`` in that line; return the line."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cnnlens: error: ") and "Traceback" not in result.output, result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return str(lines[0])


def tiny_suite(name: str, images: str = 'demo = ["chelsea"]', *, shard: int | None = None,
               method: str = "gradcam", backend: str = "captum") -> str:
    """The TOML of the smallest study: :func:`tiny_cnn` at 32 px, one (method, backend) pair, every
    measure off. ``images`` is the ``[images]`` body (``demo = [...]`` or ``files = ["GLOB"]``)."""
    shard_line = f"\nshard = {shard}" if shard else ""
    off = "".join(f"[{section}]\nenabled = false\n" for section in ("agreement", "faithfulness", "sanity", "speed"))
    return (f'[study]\nname = "{name}"\nthreads = 1\n[[models]]\nid = "tiny"\nspec = "cnnlens.testing:tiny_cnn"\n'
            f'image_size = 32\n[images]\n{images}{shard_line}\n[methods]\ninclude = ["{method}"]\n'
            f'backends = ["{backend}"]\n{off}')
