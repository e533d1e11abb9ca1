"""Expert parallelism on gloo: outputs and gradients equal the single-process layer's."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moescope.moe import DeepSeekV3Router, Experts, Llama4Router, MoELayer, SharedExpert, SwitchRouter, TopKRouter
from moescope.moe.parallel import ExpertParallelMoE

H, I, E = 16, 12, 8
ROUTERS = {
    "topk": lambda: TopKRouter(H, E, 2),
    "switch": lambda: SwitchRouter(H, E, capacity_factor=1.0),
    "deepseek_v3": lambda: DeepSeekV3Router(H, E, 3, n_group=2, topk_group=1),
    "llama4": lambda: Llama4Router(H, E, 1),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(router: str, shared: bool) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(router=ROUTERS[router](), experts=Experts(E, H, I),
                    shared=SharedExpert(H, 10) if shared else None).double()


def _tokens(rank: int) -> torch.Tensor:
    return torch.randn(3, 5, H, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + rank))


CASES = [(router, shared) for router in ROUTERS for shared in (False, True)]


def _worker(rank, world, port, folder):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for router, shared in CASES:  # one process group for every case: spawning dominates the cost
            layer = ExpertParallelMoE.from_layer(_reference(router, shared))
            x = _tokens(rank).requires_grad_()
            out = layer(x)
            (out.hidden * torch.arange(out.hidden.numel(), dtype=x.dtype).view_as(out.hidden).sin()).sum().backward()
            torch.save({"out": out.hidden.detach(), "x_grad": x.grad,
                        "expert_grads": {n: p.grad for n, p in layer.experts.named_parameters()},
                        "router_grad": layer.router.weight.grad}, f"{folder}/{router}-{shared}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def parallel_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ep")
    mp.spawn(_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    return folder


@pytest.mark.parametrize(("router", "shared"), CASES)
def test_expert_parallel_equals_single_process(router, shared, parallel_runs):
    world = 2
    ranks = [torch.load(parallel_runs / f"{router}-{shared}-rank{r}.pt") for r in range(world)]
    ref = _reference(router, shared)
    xs = [_tokens(r).requires_grad_() for r in range(world)]
    # capacity-based routers see each rank's tokens separately, as in data-parallel training
    outs = [ref(x).hidden for x in xs]
    total = sum((o * torch.arange(o.numel(), dtype=o.dtype).view_as(o).sin()).sum() for o in outs)
    total.backward()
    n = E // world
    for r in range(world):
        torch.testing.assert_close(ranks[r]["out"], outs[r].detach(), atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(ranks[r]["x_grad"], xs[r].grad, atol=1e-12, rtol=1e-12)
        for name, g in ranks[r]["expert_grads"].items():
            torch.testing.assert_close(g, getattr(ref.experts, name).grad[r * n : (r + 1) * n], atol=1e-11, rtol=1e-11)
    # the router is replicated: its gradient summed over ranks (what DDP does) equals the reference
    torch.testing.assert_close(sum(rk["router_grad"] for rk in ranks), ref.router.weight.grad, atol=1e-11, rtol=1e-11)


def test_needs_an_initialised_process_group():
    with pytest.raises(RuntimeError, match="torch.distributed initialised"):
        ExpertParallelMoE(router=TopKRouter(H, E, 2), experts=Experts(4, H, I))
