"""Bone / MiSS and Bat kernels: C against the NumPy reference, float64 finite differences, torch
autograd on PEFT's formulas, merge/unmerge identities and dimension errors."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

N = 5
# (in_features, out_features, r, block columns): r | in, r does not divide in (padding), mini
BONE_SHAPES = {"balance": (8, 6, 4, 6), "padded": (7, 6, 3, 6), "mini": (8, 6, 2, 3), "mini_1": (5, 4, 2, 1)}
BAT_SHAPES = {"square": (6, 6, 2), "wide": (9, 6, 3), "r1": (4, 3, 1)}


def bone_case(rng, shape):
    ic, oc, r, mr = BONE_SHAPES[shape]
    return dict(x=f32(rng, N, ic), weight=f32(rng, oc, ic), bias=f32(rng, oc), miss_block=f32(rng, r, mr))


def bat_case(rng, shape):
    ic, oc, r = BAT_SHAPES[shape]
    return dict(x=f32(rng, N, ic), weight=f32(rng, oc, ic), bias=f32(rng, oc),
                miss_block=f32(rng, oc // r, r, r, scale=0.3))


# ---- Bone / MiSS -----------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("shape", sorted(BONE_SHAPES))
def test_bone_forward_matches_reference(rng, shape, p):
    c = bone_case(rng, shape)
    args = (c["x"], c["weight"], c["bias"], c["miss_block"], p, 3, 11)
    y, xd, s = F.bone_forward(*args)
    y_ref, xd_ref, s_ref = R.bone_forward(*args)
    assert_close(y, y_ref, 1e-5, 1e-5, "y")
    assert_close(s, s_ref, 1e-5, 1e-5, "s")
    assert (xd is None) == (p == 0.0)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("shape", sorted(BONE_SHAPES))
def test_bone_backward_matches_finite_differences(rng, shape, p):
    c = bone_case(rng, shape)
    c64 = {k: v.astype(np.float64) for k, v in c.items()}
    dy = f32(rng, N, c["weight"].shape[0])

    def loss():
        y, _, _ = R.bone_forward(c64["x"], c64["weight"], c64["bias"], c64["miss_block"], p, 3, 11)
        return float(np.sum(y * dy))

    _, _, s = F.bone_forward(c["x"], c["weight"], c["bias"], c["miss_block"], p, 3, 11)
    dx, dd = np.zeros_like(c["x"]), np.zeros_like(c["miss_block"])
    F.bone_backward(dy, s, c["weight"], c["miss_block"], p, 3, 11, dx=dx, dmiss_block=dd)
    assert_close(dx, numerical_grad(loss, c64["x"]), 1e-4, 1e-4, "dx")
    assert_close(dd, numerical_grad(loss, c64["miss_block"]), 1e-4, 1e-4, "dmiss_block")


def test_bone_backward_accumulates(rng):
    c = bone_case(rng, "padded")
    dy = f32(rng, N, 6)
    _, _, s = F.bone_forward(c["x"], c["weight"], c["bias"], c["miss_block"])
    dx, dd = np.ones_like(c["x"]), np.ones_like(c["miss_block"])
    F.bone_backward(dy, s, c["weight"], c["miss_block"], dx=dx, dmiss_block=dd)
    dx_ref, dd_ref = np.ones_like(dx), np.ones_like(dd)
    R.bone_backward(dy, s, c["weight"], c["miss_block"], dx=dx_ref, dmiss_block=dd_ref)
    assert_close(dx, dx_ref, 1e-5, 1e-5, "dx")
    assert_close(dd, dd_ref, 1e-5, 1e-5, "dmiss_block")


@pytest.mark.parametrize("shape", sorted(BONE_SHAPES))
def test_bone_merge_matches_unmerged_and_unmerge_restores(rng, shape):
    c = bone_case(rng, shape)
    y, _, _ = F.bone_forward(c["x"], c["weight"], c["bias"], c["miss_block"])
    w = c["weight"].copy()
    F.bone_merge(w, c["miss_block"], 1.0)
    w_ref = c["weight"].copy()
    R.bone_merge(w_ref, c["miss_block"], 1.0)
    assert_close(w, w_ref, 1e-6, 1e-6, "merged weight")
    assert_close(F.linear_forward(c["x"], w, c["bias"]), y, 1e-5, 1e-5, "merged forward")
    F.bone_merge(w, c["miss_block"], -1.0)
    assert_close(w, c["weight"], 0, 1e-6, "unmerged weight")


@pytest.mark.parametrize("shape", ["balance", "padded", "mini"])
def test_bone_matches_peft_miss_layer_in_torch(rng, shape, torch):
    """Forward and autograd of PEFT's MiSS layer (balance / mini) on the same arrays."""
    from peft import MissConfig
    from peft.tuners.miss.layer import MissLinear

    c = bone_case(rng, shape)
    ic, oc, r, mr = BONE_SHAPES[shape]
    base = torch.nn.Linear(ic, oc)
    with torch.no_grad():
        base.weight.copy_(torch.from_numpy(c["weight"]))
        base.bias.copy_(torch.from_numpy(c["bias"]))
    mini = mr != oc
    layer = MissLinear(base, "default", MissConfig(r=r, mini_r=mr, init_weights="mini" if mini else True), r=r)
    with torch.no_grad():
        layer.miss_block["default"].copy_(torch.from_numpy(c["miss_block"]))
    xt = torch.from_numpy(c["x"].copy()).requires_grad_(True)
    dy = f32(rng, N, oc)
    yt = layer(xt)
    yt.backward(torch.from_numpy(dy))
    y, _, s = F.bone_forward(c["x"], c["weight"], c["bias"], c["miss_block"])
    dx, dd = np.zeros_like(c["x"]), np.zeros_like(c["miss_block"])
    F.bone_backward(dy, s, c["weight"], c["miss_block"], dx=dx, dmiss_block=dd)
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-5, "dx")
    assert_close(dd, layer.miss_block["default"].grad.numpy(), 1e-5, 1e-5, "dmiss_block")
    w = c["weight"].copy()
    F.bone_merge(w, c["miss_block"])
    layer.merge()
    assert_close(w, layer.base_layer.weight.detach().numpy(), 1e-6, 1e-6, "merged weight")


def test_bone_rejects_block_that_does_not_tile_the_outputs(rng):
    c = bone_case(rng, "balance")
    with pytest.raises(ValueError, match="out_features=6"):
        F.bone_forward(c["x"], c["weight"], c["bias"], f32(rng, 4, 4))
    with pytest.raises(ValueError, match="out_features=6"):
        F.bone_merge(c["weight"], f32(rng, 4, 5))
    with pytest.raises(ValueError, match="r=0"):
        F.bone_forward(c["x"], c["weight"], c["bias"], np.zeros((0, 6), dtype=np.float32))


# ---- Bat -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", sorted(BAT_SHAPES))
def test_bat_forward_matches_reference(rng, shape):
    c = bat_case(rng, shape)
    y = F.bat_forward(c["x"], c["weight"], c["bias"], c["miss_block"])
    assert_close(y, R.bat_forward(c["x"], c["weight"], c["bias"], c["miss_block"]), 1e-5, 1e-5, "y")
    assert_close(F.bat_weight(c["weight"], c["miss_block"]), R.bat_weight(c["weight"], c["miss_block"]),
                 1e-5, 1e-5, "weff")


@pytest.mark.parametrize("shape", sorted(BAT_SHAPES))
def test_bat_backward_matches_finite_differences(rng, shape):
    c = bat_case(rng, shape)
    c64 = {k: v.astype(np.float64) for k, v in c.items()}
    dy = f32(rng, N, c["weight"].shape[0])

    def loss():
        return float(np.sum(R.bat_forward(c64["x"], c64["weight"], c64["bias"], c64["miss_block"]) * dy))

    dx, dt = np.zeros_like(c["x"]), np.zeros_like(c["miss_block"])
    F.bat_backward(dy, c["x"], c["weight"], c["miss_block"], dx=dx, dmiss_block=dt)
    assert_close(dx, numerical_grad(loss, c64["x"]), 1e-4, 1e-4, "dx")
    assert_close(dt, numerical_grad(loss, c64["miss_block"]), 1e-4, 1e-4, "dmiss_block")
    dx_ref, dt_ref = np.ones_like(dx), np.ones_like(dt)
    R.bat_backward(dy, c["x"], c["weight"], c["miss_block"], dx=dx_ref, dmiss_block=dt_ref)
    F.bat_backward(dy, c["x"], c["weight"], c["miss_block"], dx=dx, dmiss_block=dt)
    assert_close(dx + 1, dx_ref + (dx_ref - 1), 1e-4, 1e-4, "dx accumulated twice")
    assert_close(dt + 1, dt_ref + (dt_ref - 1), 1e-4, 1e-4, "dmiss_block accumulated twice")


@pytest.mark.parametrize("shape", sorted(BAT_SHAPES))
def test_bat_merge_matches_unmerged_and_unmerge_inverts(rng, shape):
    c = bat_case(rng, shape)
    y = F.bat_forward(c["x"], c["weight"], c["bias"], c["miss_block"])
    w = c["weight"].copy()
    F.bat_merge(w, c["miss_block"])
    assert_close(F.linear_forward(c["x"], w, c["bias"]), y, 1e-5, 1e-5, "merged forward")
    F.bat_unmerge(w, c["miss_block"])
    assert_close(w, c["weight"], 1e-4, 1e-5, "unmerge(merge(W))")
    w_ref = c["weight"].astype(np.float64)
    R.bat_merge(w_ref, c["miss_block"].astype(np.float64))
    R.bat_unmerge(w_ref, c["miss_block"].astype(np.float64))
    assert_close(w_ref, c["weight"], 1e-10, 1e-10, "reference round trip")


def test_bat_matches_peft_miss_layer_in_torch(rng, torch):
    """Forward, autograd, merge and unmerge (through the inverse) of PEFT's Bat."""
    from peft import MissConfig
    from peft.tuners.miss.layer import MissLinear

    c = bat_case(rng, "wide")
    ic, oc, r = BAT_SHAPES["wide"]
    base = torch.nn.Linear(ic, oc)
    with torch.no_grad():
        base.weight.copy_(torch.from_numpy(c["weight"]))
        base.bias.copy_(torch.from_numpy(c["bias"]))
    layer = MissLinear(base, "default", MissConfig(r=r, init_weights="bat"), r=r)
    with torch.no_grad():
        layer.miss_block["default"].copy_(torch.from_numpy(c["miss_block"]))
    xt = torch.from_numpy(c["x"].copy()).requires_grad_(True)
    dy = f32(rng, N, oc)
    yt = layer(xt)
    yt.backward(torch.from_numpy(dy))
    dx, dt = np.zeros_like(c["x"]), np.zeros_like(c["miss_block"])
    F.bat_backward(dy, c["x"], c["weight"], c["miss_block"], dx=dx, dmiss_block=dt)
    assert_close(F.bat_forward(c["x"], c["weight"], c["bias"], c["miss_block"]), yt.detach().numpy(), 1e-5, 1e-5,
                 "y")
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-5, "dx")
    assert_close(dt, layer.miss_block["default"].grad.numpy(), 1e-4, 1e-5, "dmiss_block")
    w = c["weight"].copy()
    F.bat_merge(w, c["miss_block"])
    layer.merge()
    assert_close(w, layer.base_layer.weight.detach().numpy(), 1e-5, 1e-6, "merged weight")
    F.bat_unmerge(w, c["miss_block"])
    layer.unmerge()
    assert_close(w, layer.base_layer.weight.detach().numpy(), 1e-5, 1e-6, "unmerged weight")


def test_bat_rejects_sizes_not_divisible_by_r(rng):
    x, w = f32(rng, N, 7), f32(rng, 6, 7)
    with pytest.raises(ValueError, match=r"in_features=7 and out_features=6 multiples of r=3"):
        F.bat_forward(x, w, None, f32(rng, 2, 3, 3))
    with pytest.raises(ValueError, match=r"multiples of r=2"):
        F.bat_merge(f32(rng, 6, 4), f32(rng, 2, 2, 2))     # 2 row-blocks for 6 outputs
    with pytest.raises(ValueError, match="I \\+ miss_block is singular"):
        F.bat_unmerge(f32(rng, 4, 4), -np.eye(2, dtype=np.float32)[None].repeat(2, axis=0))
