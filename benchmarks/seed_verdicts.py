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


def forest_plot(rows: Sequence[dict[str, Any]], ax: Any = None, scale: float = 1.0, unit: str = "") -> Any:
    """Forest plot of a verdicts list: each claim's mean paired difference with its 95% interval, a line at 0;
    held claims filled, the others hollow. Returns the matplotlib Axes.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> ax = forest_plot([{"claim": "A > B", "holds": True, "p_holm": 0.01, "diff": 0.02, "ci95": [0.01, 0.03],
    ...                    "n_seeds": 5}], scale=100, unit="points")
    >>> ax.get_yticklabels()[0].get_text()
    'A > B (p_Holm 0.01)'
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1))
    for i, v in enumerate(rows):
        y = len(rows) - 1 - i
        if None not in v["ci95"]:
            lo, hi = (scale * c for c in v["ci95"])
            ax.plot([lo, hi], [y, y], color="black")
        ax.plot([scale * v["diff"]], [y], "o", color="black", markerfacecolor="black" if v["holds"] else "white")
    ax.axvline(0.0, color="gray", linestyle="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{v['claim']} (p_Holm {v['p_holm']:.2g})" for v in reversed(rows)])
    ax.set_xlabel(f"mean paired difference A - B over seeds, 95% t interval{' (' + unit + ')' if unit else ''}")
    return ax
