"""find_moe_layers refuses what it cannot describe faithfully, with errors that say why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moescope.models import find_moe_layers


def _mixtral_block():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    block = MixtralSparseMoeBlock(MixtralConfig(hidden_size=32, intermediate_size=24, num_local_experts=4))
    with torch.no_grad():  # the block's parameters start as torch.empty: give them values
        for p in block.parameters():
            p.normal_(generator=torch.Generator().manual_seed(0))
    return block


def test_expert_index_out_of_range():
    view = find_moe_layers(nn.Sequential(_mixtral_block()))[0]
    assert view.expert(3).gate.shape == (24, 32)
    for bad in (4, -1, 1.0, True):
        with pytest.raises(ValueError, match=r"expert index must be an int in \[0, 4\)"):
            view.expert(bad)


def test_a_changed_expert_layout_is_refused():
    block = _mixtral_block()
    block.experts.gate_up_proj = nn.Parameter(block.experts.gate_up_proj.detach().transpose(1, 2).contiguous())
    with pytest.raises(ValueError, match=r"gate_up_proj has shape \(4, 32, 48\).*layout changed"):
        find_moe_layers(block)


def test_a_block_missing_its_parts_is_refused():
    block = _mixtral_block()
    del block.gate
    with pytest.raises(ValueError, match=r"MixtralSparseMoeBlock does not have the layout moescope expects"):
        find_moe_layers(nn.ModuleDict({"moe": block}))


def test_views_are_read_only_views_not_copies():
    block = _mixtral_block()
    view = find_moe_layers(block)[0]
    assert view.router_weight.data_ptr() == block.gate.weight.data_ptr()
    assert view.expert(1).down.data_ptr() == block.experts.down_proj[1].data_ptr()
    assert not view.router_weight.requires_grad
    torch.testing.assert_close(view.expert(2).up, block.experts.gate_up_proj[2, 24:].detach())
