"""conv2d's fast paths: Winograd F(4x4, 3x3) or F(2x2, 3x3) for 3x3 stride-1 sweeps with at least 8
channels each side (forward and input gradient), and im2col over blocks of several images. C against the NumPy reference,
float64 finite differences, torch autograd parity, edge tiles of odd and tiny planes, and batches that
span several blocks with a remainder."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad


def dweight_atol(dy, x, w, stride, padding) -> float:
    """dweight sums N*OH*OW products, so its float32 error scales with the sum of their magnitudes, not
    with the (cancelling) result: 1e-6 (about 16 ulp) of the largest such sum."""
    mags = np.zeros(w.shape)
    R.conv2d_backward(np.abs(dy), np.abs(x), w, stride, padding, dweight=mags)
    return 1e-6 * float(mags.max())

# Winograd's transforms scale values by up to 8 before the products and back after, so its float32
# error scales with sum |x| |w| rather than with the (cancelling) result. On the EATA network's F(4x4,
# 3x3) layers it is 1.3e-6 to 2.5e-6 of that sum against float64 (OPENBLAS_NUM_THREADS=1 python
# benchmarks/bench_conv_shapes.py prints it per layer); allowed here: 4e-6.
WINOGRAD_ERR = 4e-6


def winograd_y_atol(x, w, b, padding) -> np.ndarray:
    """Elementwise bound on a Winograd forward's error: WINOGRAD_ERR of sum |x| |w| (+ |b|)."""
    mag = R.conv2d_forward(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), None, 1, padding)
    return 1e-5 + WINOGRAD_ERR * (mag + (np.abs(b)[None, :, None, None] if b is not None else 0.0))


def winograd_dx_atol(dy, w, padding, shape) -> np.ndarray:
    """The same bound for the input gradient: WINOGRAD_ERR of sum |dy| |w|."""
    mag = np.zeros(shape)
    R.conv2d_backward(np.abs(dy).astype(np.float64), None, np.abs(w).astype(np.float64), 1, padding, dx=mag)
    return 1e-5 + WINOGRAD_ERR * mag


WINOGRAD_GEOMETRIES = [  # (image (IH, IW), padding (PH, PW)); 3x3 kernel, stride 1
    ((7, 7), (1, 1)),  # odd output: the last tile row and column are half outside
    ((14, 14), (1, 1)),
    ((5, 8), (0, 0)),  # input gradient padded by 2
    ((6, 5), (2, 2)),  # input gradient unpadded
    ((3, 7), (0, 1)),
    ((1, 1), (1, 1)),  # one output, one tile
    ((2, 3), (1, 0)),
]


def winograd_case(rng, hw, n=3, ic=8, oc=9, bias=True):
    return f32(rng, n, ic, *hw), f32(rng, oc, ic, 3, 3, scale=0.5), f32(rng, oc) if bias else None


@pytest.mark.parametrize("hw,padding", WINOGRAD_GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_forward_matches_reference(rng, hw, padding, bias):
    x, w, b = winograd_case(rng, hw, bias=bias)
    assert_close(F.conv2d_forward(x, w, b, 1, padding), R.conv2d_forward(x, w, b, 1, padding), 1e-5,
                 winograd_y_atol(x, w, b, padding), "y")


@pytest.mark.parametrize("hw,padding", WINOGRAD_GEOMETRIES)
def test_winograd_input_gradient_matches_reference_and_accumulates(rng, hw, padding):
    x, w, b = winograd_case(rng, hw)
    dy = f32(rng, *F.conv2d_forward(x, w, b, 1, padding).shape)
    start = {"x": f32(rng, *x.shape), "w": f32(rng, *w.shape), "b": f32(rng, *b.shape)}
    got = {k: v.copy() for k, v in start.items()}
    ref = {k: v.astype(np.float64) for k, v in start.items()}
    F.conv2d_backward(dy, x, w, 1, padding, dx=got["x"], dweight=got["w"], dbias=got["b"])
    R.conv2d_backward(dy, x, w, 1, padding, dx=ref["x"], dweight=ref["w"], dbias=ref["b"])
    dx_atol = winograd_dx_atol(dy, w, padding, x.shape)
    assert_close(got["x"], ref["x"], 1e-5, dx_atol, "dx")
    assert_close(got["w"], ref["w"], 1e-5, dweight_atol(dy, x, w, 1, padding), "dweight")
    assert_close(got["b"], ref["b"], 1e-5, 1e-5, "dbias")
    only_dx = start["x"].copy()
    F.conv2d_backward(dy, None, w, 1, padding, dx=only_dx)
    assert_close(only_dx, ref["x"], 1e-5, dx_atol, "dx without dweight")


@pytest.mark.parametrize("hw,padding", [((5, 4), (1, 1)), ((4, 5), (0, 2))])
def test_winograd_gradients_match_finite_differences(rng, hw, padding):
    x, w, b = winograd_case(rng, hw, n=2, ic=8, oc=8)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    dy = f32(rng, *F.conv2d_forward(x, w, b, 1, padding).shape)

    def loss():
        return float(np.sum(R.conv2d_forward(x64, w64, b64, 1, padding) * dy))

    dx = np.zeros_like(x)
    F.conv2d_backward(dy, None, w, 1, padding, dx=dx)
    assert_close(dx, numerical_grad(loss, x64), 1e-4, 1e-4, "dx")
    y = F.conv2d_forward(x, w, b, 1, padding)
    assert_close(y, R.conv2d_forward(x64, w64, b64, 1, padding), 1e-5, winograd_y_atol(x, w, b, padding),
                 "y against float64")


@pytest.mark.parametrize("hw,padding", WINOGRAD_GEOMETRIES[:4])
def test_winograd_matches_torch_autograd(rng, torch, hw, padding):
    x, w, b = winograd_case(rng, hw)
    y = F.conv2d_forward(x, w, b, 1, padding)
    dy = f32(rng, *y.shape)
    dx = np.zeros_like(x)
    F.conv2d_backward(dy, None, w, 1, padding, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, torch.tensor(w), torch.tensor(b), stride=1, padding=padding)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, winograd_y_atol(x, w, b, padding), "y")
    assert_close(dx, xt.grad.numpy(), 1e-4, winograd_dx_atol(dy, w, padding, x.shape), "dx")


BLOCK_CASES = [  # (N, IC, OC, (IH, IW), kernel, stride, padding): N just over one block of images
    (33, 8, 8, (20, 19), 3, 1, 1),  # Winograd: 32 images per block, remainder 1
    (17, 4, 4, (20, 19), 3, 2, 1),  # im2col: 16 images per block, remainder 1
    (7, 4, 5, (21, 22), (2, 3), (1, 2), (0, 1)),  # im2col, all images in one block
]


def is_winograd(ic, oc, kernel, stride, padding) -> bool:
    """conv.c's rule for its Winograd path."""
    return (F._pair(kernel, "kernel") == (3, 3) and F._pair(stride, "stride") == (1, 1)
            and max(F._pair(padding, "padding")) <= 2 and min(ic, oc) >= 8)


def checked_forward(rng, n, ic, oc, hw, kernel, stride, padding):
    """x, w and dy (shaped like y) of a convolution whose forward has been checked against the reference."""
    kh, kw = F._pair(kernel, "kernel")
    x, w, b = f32(rng, n, ic, *hw), f32(rng, oc, ic, kh, kw, scale=0.3), f32(rng, oc)
    y = F.conv2d_forward(x, w, b, stride, padding)
    winograd = is_winograd(ic, oc, kernel, stride, padding)
    assert_close(y, R.conv2d_forward(x, w, b, stride, padding), 1e-5,
                 winograd_y_atol(x, w, b, padding) if winograd else 1e-5, "y")
    return x, w, f32(rng, *y.shape)


@pytest.mark.parametrize("n,ic,oc,hw,kernel,stride,padding", BLOCK_CASES)
def test_conv2d_batches_spanning_several_blocks_match_reference(rng, n, ic, oc, hw, kernel, stride, padding):
    x, w, dy = checked_forward(rng, n, ic, oc, hw, kernel, stride, padding)
    got = {"x": np.zeros_like(x), "w": np.zeros_like(w)}
    ref = {"x": np.zeros(x.shape), "w": np.zeros(w.shape)}
    F.conv2d_backward(dy, x, w, stride, padding, dx=got["x"], dweight=got["w"])
    R.conv2d_backward(dy, x, w, stride, padding, dx=ref["x"], dweight=ref["w"])
    winograd = is_winograd(ic, oc, kernel, stride, padding)
    assert_close(got["x"], ref["x"], 1e-5, winograd_dx_atol(dy, w, padding, x.shape) if winograd else 1e-5, "dx")
    assert_close(got["w"], ref["w"], 1e-5, dweight_atol(dy, x, w, stride, padding), "dweight")


PRODUCT_CASES = [  # (N, IC, OC, (IH, IW), kernel, stride, padding)
    # the register-blocked products' edges: column counts that leave a tail of fewer than one vector,
    # row counts that are not a multiple of the register block, k longer than one 128-k panel of the tail
    (2, 15, 7, (7, 9), 3, 2, 1),  # forward k = 135, input-gradient rows 135
    (3, 2, 130, (5, 3), 3, 2, 1),  # input-gradient k = 130 over a short tail
    (2, 131, 5, (3, 3), 1, 1, 0),  # pointwise: k = 131 forward, 9 columns each, accumulated dx
    (1, 3, 1, (1, 1), 3, 1, 1),  # one row, one column
    # strided sweeps without a patch matrix
    (13, 16, 32, (28, 28), 3, 2, 1),  # forward blocks of 2 images (7, the last of 1), input gradient 5 + 5 + 3
    (2, 120, 4, (5, 5), 3, 2, 1),  # forward k = 1080 is past the implicit product's rows: patch matrix
    (2, 4, 300, (5, 5), 3, 2, 1),  # input gradient rows 300 x 4 taps likewise
    (3, 5, 6, (9, 10), (3, 2), (2, 3), (1, 0)),  # unequal phases, some with no tap of one kernel axis
]


@pytest.mark.parametrize("n,ic,oc,hw,kernel,stride,padding", PRODUCT_CASES)
def test_conv2d_product_edges_and_strided_sweeps_match_reference(rng, n, ic, oc, hw, kernel, stride, padding):
    x, w, dy = checked_forward(rng, n, ic, oc, hw, kernel, stride, padding)
    got = f32(rng, *x.shape)  # the input gradient is added to what dx holds
    ref = got.astype(np.float64)
    F.conv2d_backward(dy, None, w, stride, padding, dx=got)
    R.conv2d_backward(dy, None, w, stride, padding, dx=ref)
    assert_close(got, ref, 1e-5, 1e-5, "dx")


def test_conv2d_workspace_grows_with_the_batch_only_up_to_a_block():
    # Winograd's blocks are whole vectors of images (16 lanes with AVX-512): 17 images need two
    small = F.conv2d_workspace_size((1, 16, 14, 14), (16, 16, 3, 3), 1, 1)
    assert F.conv2d_workspace_size((17, 16, 14, 14), (16, 16, 3, 3), 1, 1) > small
    assert F.conv2d_workspace_size((10**6, 16, 14, 14), (16, 16, 3, 3), 1, 1) < 2**21
    assert F.conv2d_workspace_size((3, 3, 5, 5), (4, 3, 1, 1), 1, 0) == 0  # pointwise: no scratch


def test_conv2d_rejects_a_workspace_sized_for_fewer_images(rng):
    x, w, b = winograd_case(rng, (7, 7), n=17)  # more images than one vector of lanes
    work = np.empty(F.conv2d_workspace_size((1,) + x.shape[1:], w.shape, 1, 1), np.float32)
    with pytest.raises(ValueError, match="work"):
        F.conv2d_forward(x, w, b, 1, 1, work=work)
