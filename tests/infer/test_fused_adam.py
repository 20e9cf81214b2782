"""The engine's Adam: torch's fused Adam with a lean step, the same update to the bit."""

from __future__ import annotations

import pytest
import torch

from pvae.infer.engine import FusedAdam, adam


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((7, 5), (5,), (3, 7), (3,))]


def _run(make, steps: int = 6, unused_at: int = 3) -> tuple[list[torch.Tensor], dict]:
    """Steps of the optimiser on a fixed quadratic, with the learning rate changed
    half-way and the last parameter without a gradient at one step."""
    params = _params(0)
    opt = make(params)
    g = torch.Generator().manual_seed(1)
    targets = [torch.randn(p.shape, generator=g) for p in params]
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        used = params[:-1] if k == unused_at else params
        sum(((p - t) ** 2 * (1 + i)).sum() for i, (p, t) in enumerate(zip(used, targets))).backward()
        if k == steps // 2:
            for group in opt.param_groups:
                group["lr"] *= 0.5
        opt.step()
    return [p.detach().clone() for p in params], opt.state_dict()


def _groups(params, **kwargs):
    return [{"params": params[:2], **kwargs}, {"params": params[2:], "lr": 3e-2}]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fused_adam_updates_as_torch_fused_adam_to_the_bit(weight_decay):
    lean, lean_state = _run(lambda p: FusedAdam(_groups(p), lr=1e-1, weight_decay=weight_decay))
    ref, ref_state = _run(lambda p: torch.optim.Adam(_groups(p), lr=1e-1, weight_decay=weight_decay, fused=True))
    for a, b in zip(lean, ref):
        assert torch.equal(a, b)
    for key, state in ref_state["state"].items():
        for name, value in state.items():
            assert torch.equal(lean_state["state"][key][name], value), (key, name)
    # the parameter without a gradient at one step took one step fewer, in both
    assert int(ref_state["state"][3]["step"]) == int(ref_state["state"][0]["step"]) - 1


def _count_torch_steps(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = FusedAdam._torch_step
    monkeypatch.setattr(FusedAdam, "_torch_step", lambda self, closure=None: calls.append(1) or original(self, closure))
    return calls


def test_fused_adam_runs_the_kernel_directly_after_the_first_step(monkeypatch):
    calls = _count_torch_steps(monkeypatch)
    _run(lambda p: FusedAdam(p, lr=1e-1), steps=5, unused_at=-1)
    assert len(calls) == 1  # torch's step once, to create the state; then the lean path


def test_fused_adam_runs_step_hooks_once_and_takes_torch_step_for_amsgrad(monkeypatch):
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # torch wraps Adam.step with its hooks too now
    calls = _count_torch_steps(monkeypatch)
    seen = []

    def hooked(p):
        opt = FusedAdam(p, lr=1e-1)
        opt.register_step_post_hook(lambda *_: seen.append(1))
        return opt

    _run(hooked, steps=4, unused_at=-1)
    assert len(calls) == 1 and len(seen) == 4  # the hook once a step, lean or not
    calls.clear()
    lean, _ = _run(lambda p: FusedAdam(p, lr=1e-1, amsgrad=True), steps=4, unused_at=-1)
    ref, _ = _run(lambda p: torch.optim.Adam(p, lr=1e-1, amsgrad=True, fused=True), steps=4, unused_at=-1)
    assert len(calls) == 4 and all(torch.equal(a, b) for a, b in zip(lean, ref))


def test_fused_adam_resumes_from_a_state_dict_as_an_uninterrupted_run():
    whole, _ = _run(lambda p: FusedAdam(p, lr=1e-1), steps=6, unused_at=-1)
    params = _params(0)
    first = FusedAdam(params, lr=1e-1)
    g = torch.Generator().manual_seed(1)
    targets = [torch.randn(p.shape, generator=g) for p in params]

    def step(opt, k):
        opt.zero_grad(set_to_none=True)
        sum(((p - t) ** 2 * (1 + i)).sum() for i, (p, t) in enumerate(zip(params, targets))).backward()
        if k == 3:
            for group in opt.param_groups:
                group["lr"] *= 0.5
        opt.step()

    for k in range(3):
        step(first, k)
    second = FusedAdam(params, lr=1e-1)
    second.load_state_dict(first.state_dict())
    for k in range(3, 6):
        step(second, k)
    assert all(torch.equal(a, b.detach()) for a, b in zip(whole, params))


def test_fused_adam_steps_a_parameter_group_added_later():
    def run(cls_kwargs):
        params = _params(0)
        opt = cls_kwargs(params[:2])
        for k in range(5):
            if k == 2:
                opt.add_param_group({"params": params[2:]})
            opt.zero_grad(set_to_none=True)
            sum((p ** 2).sum() for p in params).backward()
            opt.step()
        return params

    lean = run(lambda p: FusedAdam(p, lr=1e-1))
    ref = run(lambda p: torch.optim.Adam(p, lr=1e-1, fused=True))
    assert all(torch.equal(a, b) for a, b in zip(lean, ref))
    assert not torch.equal(lean[3], _params(0)[3])  # the added group was stepped


def test_engine_adam_is_the_lean_fused_adam_on_the_cpu():
    opt = adam([torch.nn.Parameter(torch.zeros(3))], 1e-3)
    assert isinstance(opt, FusedAdam) and opt.param_groups[0]["fused"]


def test_fused_adam_steps_carry_the_profiler_label():
    opt = FusedAdam(_params(0), lr=1e-1)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert any(e.key == "Optimizer.step#FusedAdam.step" for e in prof.key_averages())


def test_torch_s_own_step_runs_without_autograd_in_a_fresh_process():
    """The first step (torch's) runs under torch's grad-mode decorator whether or not
    a plain Adam was ever built (torch wraps Adam.step with its hooks only then)."""
    import subprocess
    import sys

    code = ("import torch\nfrom pvae.infer.engine import FusedAdam\n"
            "seen = []\n"
            "orig = torch._fused_adam_\n"
            "def spy(*a, **k):\n    seen.append(torch.is_grad_enabled())\n    return orig(*a, **k)\n"
            "torch._fused_adam_ = spy\n"
            "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
            "o = FusedAdam([p], lr=0.1)\n"
            "o.step(); o.step()\n"
            "print(seen)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # torch's first step, the probe of the kernel, the lean step: all with autograd off
    assert out.strip().splitlines()[-1] == "[False, False, False]"
