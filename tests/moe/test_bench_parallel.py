"""The expert-parallel profile and ``bench parallel``: numerics untouched, bytes counted exactly."""

import json
import re
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from typer.testing import CliRunner

from moescope.cli import app
from moescope.moe import Experts, MoELayer, SharedExpert, TopKRouter
from moescope.moe import bench_parallel as bp
from moescope.moe.benchmark import MoeShape
from moescope.moe.parallel import ExpertParallelMoE

H, I, E, K = 32, 16, 8, 2
TINY = MoeShape("tiny", hidden=H, intermediate=I, num_experts=E, top_k=K)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layer(shared: bool) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(router=TopKRouter(H, E, K), experts=Experts(E, H, I), shared=SharedExpert(H, 8) if shared else None)


def _tokens(rank: int) -> torch.Tensor:
    return torch.randn(4, 6, H, generator=torch.Generator().manual_seed(10 + rank))


def _remote_pairs(layer: MoELayer, x: torch.Tensor, rank: int, world: int) -> int:
    """Pairs whose expert another rank owns, counted from the single-process routing."""
    with torch.no_grad():
        idx = layer.router(x).indices
    return int(((idx // (E // world)) != rank).sum())


def _profile_worker(rank, world, port, folder):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for shared in (False, True):
            layer = ExpertParallelMoE.from_layer(_layer(shared))
            runs = {}
            for on in (False, True):
                layer.zero_grad(set_to_none=True)
                x = _tokens(rank).requires_grad_()
                if on:
                    with layer.profile() as prof:
                        out = layer(x)
                        out.hidden.sin().sum().backward()
                else:
                    out = layer(x)
                    out.hidden.sin().sum().backward()
                runs[on] = {"out": out.hidden.detach(), "x_grad": x.grad,
                            "grads": {n: p.grad for n, p in layer.named_parameters()}}
            results[shared] = {"runs": runs, "seconds": dict(prof.seconds), "sent": dict(prof.bytes_sent),
                               "received": dict(prof.bytes_received), "pairs": prof.pairs,
                               "remote_pairs": prof.remote_pairs, "calls": prof.calls}
        torch.save(results, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ep-profile")
    mp.spawn(_profile_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("shared", [False, True])
def test_profile_changes_no_number(profiled, shared):
    for rank in profiled:
        off, on = rank[shared]["runs"][False], rank[shared]["runs"][True]
        assert torch.equal(off["out"], on["out"]) and torch.equal(off["x_grad"], on["x_grad"])
        assert off["grads"].keys() == on["grads"].keys()
        for name, g in off["grads"].items():
            assert torch.equal(g, on["grads"][name]), name


@pytest.mark.parametrize("shared", [False, True])
def test_profile_counts_bytes_from_the_routing(profiled, shared):
    world = 2
    for r, rank in enumerate(profiled):
        p = rank[shared]
        remote = _remote_pairs(_layer(shared), _tokens(r), r, world)
        assert p["pairs"] == 4 * 6 * K and p["remote_pairs"] == remote and p["calls"] == 1
        # hand count: each remote pair's float32 row goes out (tokens) and back (outputs), and its
        # gradient does the same in the backward; the expert id is one int64; one count per other rank
        for name in ("tokens", "outputs", "tokens_grad", "outputs_grad"):
            assert p["sent"][name] == remote * H * 4, name
        assert p["sent"]["expert_ids"] == remote * 8 and p["sent"]["counts"] == 8
        assert set(p["seconds"]) == {"routing", "communication", "experts", "combine", "communication_backward",
                                     "experts_backward"}
        assert all(s > 0 for s in p["seconds"].values())
    # what one rank sends the other receives
    for name in ("tokens", "outputs", "expert_ids"):
        assert profiled[0][shared]["sent"][name] == profiled[1][shared]["received"][name]


def test_expected_bytes_by_hand():
    # N = 4, H = 512, k = 2: 2 directions · 2 pairs · 512 values · 4 bytes · 3/4 remote = 6144
    assert bp.expected_bytes_per_token(hidden=512, top_k=2, world=4) == 6144
    assert bp.expected_bytes_per_token(hidden=512, top_k=2, world=4, backward=True) == 12288
    assert bp.expected_bytes_per_token(hidden=512, top_k=2, world=1) == 0


@pytest.fixture(scope="module")
def bench():
    return bp.bench_parallel(world_sizes=(1, 2), shapes=(TINY,), tokens=24, quick=True)


@pytest.mark.slow  # spawns 1 and 2 processes: ~10-25 s
def test_bench_rows_count_bytes_exactly(bench):
    rows = bench["rows"]
    assert [(r["pass"], r["world_size"]) for r in rows] == [(p, n) for p in bp.PASSES for n in (1, 2)]
    for r in rows:
        directions = 4 if r["pass"] == "forward+backward" else 2
        assert r["pairs"] == r["world_size"] * 24 * K
        assert r["hidden_bytes_sent"] == directions * r["remote_pairs"] * H * 4
        assert r["bytes_per_pair"] == directions * r["remote_pairs"] * H * 4 / r["pairs"]
        assert r["bytes_per_token"] == r["bytes_per_pair"] * K
        assert r["ep_s"] > 0 and r["plain_s"] > 0 and r["single_plain_s"] > 0
        assert all(s >= 0 for s in r["split_s"].values()) and r["split_s"]["experts"] > 0
    single = [r for r in rows if r["world_size"] == 1]
    assert all(r["remote_pairs"] == 0 and r["hidden_bytes_sent"] == r["index_bytes_sent"] == 0 for r in single)
    # the plain layer's rank 0 tokens, routed by hand: the remote pairs of rank 0 in the N = 2 run
    torch.manual_seed(0)
    layer = MoELayer(router=TopKRouter(H, E, K), experts=Experts(E, H, I))
    g = torch.Generator().manual_seed(1)
    remote = [_remote_pairs(layer, torch.randn(24, H, generator=g), 0, 2)]
    g = torch.Generator().manual_seed(2)
    remote.append(_remote_pairs(layer, torch.randn(24, H, generator=g), 1, 2))
    assert next(r for r in rows if r["world_size"] == 2)["remote_pairs"] == sum(remote)


@pytest.mark.slow  # spawns 1 and 2 processes: ~10-25 s
def test_table_lists_every_row(bench):
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(bp.parallel_table(bench["rows"]))
    for line in bp.parallel_lines(bench):
        console.print(line)
    text = console.export_text()
    assert text.count("MoELayer") == 2 and text.count(" EP ") == 4
    assert "torch.set_num_threads(1)" in text


@pytest.mark.parametrize(("sizes", "needle"), [((3,), "does not divide the 8 experts"), ((0,), "positive"),
                                               ((), "at least one"), ((10_000,), "more than this machine")])
def test_bad_world_sizes_are_clear_errors(sizes, needle):
    with pytest.raises(ValueError, match=needle):
        bp.check_world_sizes(sizes, (TINY,))


def test_profile_is_not_reentrant():
    layer = object.__new__(ExpertParallelMoE)  # no process group needed for the guard
    torch.nn.Module.__init__(layer)
    layer._prof, layer.experts = None, Experts(2, H, I)
    with layer.profile(), pytest.raises(RuntimeError, match="already active"), layer.profile():
        pass
    assert layer._prof is None


def _text(output: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─┃━┏┓┗┛┡┩└┘┌┐╇╈┳┻]", " ", output).split())


@pytest.mark.slow  # spawns 1 and 2 processes: ~10-25 s
def test_cli_bench_parallel(tmp_path, monkeypatch):
    monkeypatch.setattr(bp, "QUICK_SHAPES", (TINY,))
    out = tmp_path / "ep.json"
    result = CliRunner().invoke(app, ["bench", "parallel", "--quick", "--world-sizes", "1,2", "--tokens", "16",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = _text(result.output)
    assert "1 torch thread per process" in text and "÷1 proc" in text
    data = json.loads(out.read_text())
    assert {r["world_size"] for r in data["rows"]} == {1, 2} and data["machine"]["tokens_per_rank"] == 16


def test_cli_bench_parallel_bad_world_size():
    result = CliRunner().invoke(app, ["bench", "parallel", "--world-sizes", "3"])
    assert result.exit_code == 2 and "does not divide" in _text(result.output)
    result = CliRunner().invoke(app, ["bench", "parallel", "--world-sizes", "1,x"])
    assert result.exit_code == 2 and "1,x" in _text(result.output)
