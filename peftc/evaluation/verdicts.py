"""The ``verdicts`` list every results file carries, and its markdown table.

A benchmark states its claims ("EATA's error is below TENT's") and gives, per claim, one score per
seed for each side, paired by seed. ``verdicts`` tests each claim across seeds with the paired t
test (Wilcoxon's p is recorded beside it), applies Holm's correction over the claims of the one
results file, and says a claim holds only when it has at least ``min_seeds`` seeds, its Holm-
adjusted p is below ``alpha`` and the mean difference has the claimed sign. Each entry is a
JSON-ready dict whose first six keys are the results contract:

    {"claim": str, "holds": bool, "p_holm": float, "diff": float, "ci95": [lo, hi], "n_seeds": int}

followed by "expected" ("greater": mean(a) > mean(b) is claimed, "less": mean(a) < mean(b)),
"test", "p" (unadjusted), "p_wilcoxon" and "why" (the reason for the verdict in words). ``diff``
is mean(a - b) over seeds and ``ci95`` its 95% t interval (not adjusted for multiplicity). A non-zero
difference that is identical with every seed gives the t test nothing to weigh (SciPy says p = 0); such a
claim gets p = 1 and does not hold, since its seeds are no evidence.
``verdicts_markdown`` renders the same list as the table the markdown file shows. In a benchmark:

    claims = [Claim("EATA error < TENT error", eata_error_per_seed, tent_error_per_seed, "less"), ...]
    payload["verdicts"] = verdicts(claims)
    markdown += verdicts_markdown(payload["verdicts"])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ._inputs import check_count
from .hypothesis import paired_t_test, wilcoxon_signed_rank
from .multiple import holm

DIRECTIONS = ("greater", "less")
TESTS = ("t", "wilcoxon")


@dataclass(frozen=True)
class Claim:
    """A claim about A against B: ``a[i]`` and ``b[i]`` are the two sides' scores with seed i;
    ``expected`` is "greater" when the claim says mean(a) > mean(b), "less" when it says <."""

    claim: str
    a: Sequence[float]
    b: Sequence[float]
    expected: str = "greater"


def _as_claim(item: Any, i: int) -> Claim:
    if isinstance(item, Claim):
        claim = item
    elif isinstance(item, Mapping):
        unknown = set(item) - {"claim", "a", "b", "expected"}
        if unknown:
            raise ValueError(f"claims[{i}] has unknown keys {sorted(unknown)}")
        claim = Claim(**item)
    else:
        raise TypeError(f"claims[{i}] must be a Claim or a mapping, got {type(item).__name__}")
    if not isinstance(claim.claim, str) or not claim.claim:
        raise ValueError(f"claims[{i}].claim must be a non-empty string, got {claim.claim!r}")
    if claim.expected not in DIRECTIONS:
        raise ValueError(f"claims[{i}].expected must be one of {DIRECTIONS}, got {claim.expected!r}")
    return claim


def _flat(c: Claim) -> bool:
    """Whether a - b is non-zero and the same with every seed, up to rounding."""
    d = np.asarray(c.a, dtype=np.float64) - np.asarray(c.b, dtype=np.float64)
    return bool(np.any(d != 0.0)) and float(np.ptp(d)) <= 1e-12 * float(np.max(np.abs(d)))


def verdicts(claims: Sequence[Claim | Mapping[str, Any]], *, alpha: float = 0.05, test: str = "t",
             min_seeds: int = 5) -> list[dict[str, Any]]:
    """The verdict of each claim, Holm-corrected over ``claims`` (one results file's family)."""
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    min_seeds = check_count("min_seeds", min_seeds, 2)
    parsed = [_as_claim(c, i) for i, c in enumerate(claims)]
    if not parsed:
        raise ValueError("claims must not be empty")
    rows = []
    for i, c in enumerate(parsed):
        try:
            t = paired_t_test(c.a, c.b)
            w = wilcoxon_signed_rank(c.a, c.b)
        except (TypeError, ValueError) as e:
            raise type(e)(f"claims[{i}] ({c.claim!r}): {e}") from None
        rows.append((c, t, w))
    # a difference that is the same with every seed has no spread for the t test to weigh (t = +-inf, p = 0):
    # the seeds then carry no evidence at all, so the claim gets p = 1 (Wilcoxon's ranks stay valid)
    flat = [test == "t" and _flat(c) for c, _, _ in rows]
    p_raw = [1.0 if f else (t if test == "t" else w).p_value for (_, t, w), f in zip(rows, flat)]
    p_adj = holm(p_raw)
    out = []
    for (c, t, w), p, q, f in zip(rows, p_raw, p_adj, flat):
        right_sign = t.estimate > 0 if c.expected == "greater" else t.estimate < 0
        enough = t.n >= min_seeds
        holds = bool(enough and q < alpha and right_sign)
        if not enough:
            why = f"only {t.n} seeds (at least {min_seeds} needed)"
        elif f:
            why = (f"the difference is {t.estimate:+.4g} with every seed: no spread to test across seeds "
                   "(compare per example instead)")
        elif not right_sign:
            why = f"the mean difference {t.estimate:+.4g} has the wrong sign"
        elif q >= alpha:
            why = f"Holm-adjusted p {q:.3g} >= {alpha:g}"
        else:
            why = f"Holm-adjusted p {q:.3g} < {alpha:g} with the claimed sign"
        assert t.ci is not None
        out.append({"claim": c.claim, "holds": holds, "p_holm": float(q), "diff": float(t.estimate),
                    "ci95": [float(t.ci[0]), float(t.ci[1])], "n_seeds": int(t.n), "expected": c.expected,
                    "test": "paired t" if test == "t" else "Wilcoxon signed-rank", "p": float(p),
                    "p_wilcoxon": float(w.p_value), "why": why})
    return out


def verdicts_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table of a ``verdicts`` list (the same rows the JSON file holds)."""
    lines = ["| claim | holds | diff (A - B) | 95% CI | p (Holm) | seeds | why |",
             "|---|---|---|---|---|---|---|"]
    for v in rows:
        lo, hi = v["ci95"]
        lines.append(f"| {v['claim']} | {'yes' if v['holds'] else '**no**'} | {v['diff']:+.4g} | "
                     f"[{lo:+.4g}, {hi:+.4g}] | {v['p_holm']:.3g} | {v['n_seeds']} | {v['why']} |")
    tests = sorted({v.get("test", "paired t") for v in rows})
    return ("\n".join(lines) + f"\n\nPer claim: {', '.join(tests)} test across seeds, Holm-corrected over the "
            f"{len(rows)} claims; diff and its 95% t interval are the mean over seeds of A - B.\n")
