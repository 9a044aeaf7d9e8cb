"""The pool of selector experts and the per-cluster choice among them by histogram entropy.

Scores per example, all from one forward pass of the current model (and the per-example gradient):

- ``entropy``: predictive entropy of the softmax, -sum_c p_c log p_c;
- ``el2n``: the error L2 norm ||p - onehot(y)||_2;
- ``grad_norm``: GraNd, the L2 norm of the example's (unprojected) adapter gradient;
- ``loss``: the cross-entropy -log p_y (for a one-token classifier the paper's log-perplexity score).

The paper's image-grounding score has no meaning for text-only data and is left out.

Per cluster the chosen selector is the one whose score histogram has the highest entropy
(:func:`hist_entropy`): standardise the scores, count them in 49 bins between -4 and +4 standard units,
H = -sum q log2 q with empty bins at machine epsilon. The paper's code sets the bin edges at +-4 *raw*
standard deviations on the already standardised scores (``compat=True`` reproduces that).
"""
from __future__ import annotations

import numpy as np

SELECTORS = ("entropy", "el2n", "grad_norm", "loss")


def selector_scores(logits: np.ndarray, labels: np.ndarray, grad_norms: np.ndarray) -> dict[str, np.ndarray]:
    """{selector: (N,) float64} from logits (N, C), integer labels (N,) and gradient norms (N,).

    >>> s = selector_scores(np.array([[0.0, 0.0]]), np.array([1]), np.array([2.0]))
    >>> round(float(s["loss"][0]), 4), round(float(s["el2n"][0]), 4), float(s["grad_norm"][0])
    (0.6931, 0.7071, 2.0)
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels)
    g = np.asarray(grad_norms, np.float64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or g.shape != (z.shape[0],):
        raise ValueError(f"logits (N, C), labels (N,) and grad_norms (N,) must agree, got {z.shape}, {y.shape}, "
                         f"{g.shape}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must lie in [0, C = {z.shape[1]}), got range [{y.min()}, {y.max()}]")
    if not (np.isfinite(z).all() and np.isfinite(g).all()):
        raise ValueError(f"logits {z.shape} or grad_norms {g.shape} hold NaN or Inf")
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    rows = np.arange(z.shape[0])
    err = p.copy()
    err[rows, y] -= 1.0
    return {"entropy": -(p * logp).sum(axis=1), "el2n": np.linalg.norm(err, axis=1), "grad_norm": g,
            "loss": -logp[rows, y]}


def hist_entropy(x: np.ndarray, nbins: int = 50, width: float = 4.0, compat: bool = False) -> float:
    """Entropy in bits of the histogram of the standardised scores (``nbins`` edges, ``nbins - 1`` bins of
    (e_{j-1}, e_j] over [-width, width]); 0 for constant scores.

    >>> hist_entropy(np.ones(10))
    0.0
    >>> round(hist_entropy(np.linspace(-1, 1, 100000)), 2)  # uniform over the middle bins
    4.44
    """
    x = np.nan_to_num(np.asarray(x, np.float64))
    sd = float(x.std())
    if x.size == 0 or sd == 0.0:
        return 0.0
    z = (x - x.mean()) / sd
    half = width * sd if compat else width
    edges = np.linspace(-half, half, nbins)
    counts = np.array([np.count_nonzero((z > edges[j - 1]) & (z <= edges[j])) for j in range(1, nbins)],
                      dtype=np.float64)
    if counts.sum() == 0:
        return 0.0
    q = counts / counts.sum()
    q = np.where(q == 0, np.finfo(float).eps, q)
    return float(-(q * np.log2(q)).sum())


def choose_selector(scores: dict[str, np.ndarray], rows: np.ndarray, compat: bool = False) -> tuple[str, dict]:
    """(name, {name: entropy}) of the selector whose scores on ``rows`` have the highest histogram entropy
    (the first in ``scores``' order among equals).

    >>> s = {"loss": np.ones(6), "el2n": np.arange(6.0)}
    >>> choose_selector(s, np.arange(6))[0]
    'el2n'
    """
    ent = {name: hist_entropy(v[rows], compat=compat) for name, v in scores.items()}
    best = max(ent, key=lambda k: ent[k])  # max keeps the first of equal values
    return best, ent
