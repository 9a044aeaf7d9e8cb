"""The results-file ``verdicts`` list of a benchmark whose seeds may still be running.

``peftc.evaluation.verdicts`` needs at least two seeds per claim; a seed file written by one
process has one. ``seed_verdicts`` then records every claim as not holding (p 1, no interval),
so each part file already has the contract's shape, and ``--merge`` recomputes the real verdicts.
"""
from __future__ import annotations

from typing import Any, Sequence


def seed_verdicts(claims: Sequence[Any]) -> list[dict[str, Any]]:
    """verdicts(claims) (paired t over seeds, Holm over the file) or, with one seed, the placeholder rows.

    >>> from peftc.evaluation import Claim
    >>> seed_verdicts([Claim("A > B", [0.6], [0.5])])[0]["why"]
    'only 1 seed (at least 5 needed)'
    """
    from peftc.evaluation import verdicts

    if not claims:
        return []
    if min(len(c.a) for c in claims) >= 2:
        return verdicts(claims)
    return [{"claim": c.claim, "holds": False, "p_holm": 1.0, "diff": float(c.a[0] - c.b[0]) if len(c.a) else None,
             "ci95": [None, None], "n_seeds": len(c.a), "expected": c.expected,
             "why": f"only {len(c.a)} seed (at least 5 needed)"} for c in claims]


def seed_verdicts_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table of :func:`seed_verdicts` rows (peftc's ``verdicts_markdown`` once there are intervals).

    >>> print(seed_verdicts_markdown([]).strip())
    No claims.
    """
    from peftc.evaluation import verdicts_markdown

    if not rows:
        return "No claims.\n"
    if all(None not in v["ci95"] for v in rows):
        return verdicts_markdown(rows)
    lines = ["| claim | holds | diff (A - B) | seeds | why |", "|---|---|---|---|---|"]
    lines += [f"| {v['claim']} | **no** | {v['diff']:+.4g} | {v['n_seeds']} | {v['why']} |" for v in rows]
    return "\n".join(lines) + "\n\nNot tested yet: merge the seed files (--merge) for the paired t test and Holm.\n"
