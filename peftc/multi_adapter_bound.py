"""The work of training N adapters on one frozen BERT, separately and together, and the ideal time ratio.

An adapter on a layer changes that layer's output, so every product downstream of it sees activations
that differ from adapter to adapter: N adapters trained together cannot share those products, whatever
the code does. What they can share is the frozen products whose inputs no adapter reaches: for
identical input rows (N hyperparameter variants on one batch) everything below the first adapted layer,
including that layer's own frozen product (its input is the shared block state); for different inputs,
nothing. The backward is never shared (each adapter's loss gradient is its own) and, for each adapter,
runs from the top down to its first adapted layer only (nothing below needs a gradient).

:func:`multi_adapter_work` counts, from the model's sizes, the adapters' placement and the real token
counts, the floating-point work of N separate runs and of the N together, in the products peftc's code
runs (:func:`peftc.functional` linear, LoRA and attention kernels; element-wise work, LayerNorm, GELU and
softmax, is left out): its ``ratio`` is the most that training together can gain over separate runs by
not repeating work, the bound a measured time ratio is compared with.

Example:
    >>> from peftc.models.bert import BertConfig
    >>> cfg = BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)
    >>> top = {5: {"query": 8, "value": 8}}     # LoRA r=8 on block 5's query and value
    >>> bound = multi_adapter_work(cfg, [top] * 4, [[20] * 32] * 4, shared_inputs=True)
    >>> round(bound.ratio, 2)
    2.39
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .models.bert import BertConfig

# a block's linear layers by their role, in the order the forward runs them: (stage, input size, output size)
# with H hidden and I intermediate; stage 1 is the attention core (between the projections and the output)
MODULES = ("query", "key", "value", "attention_output", "intermediate", "output")
_STAGE = {"query": 0, "key": 0, "value": 0, "attention_output": 2, "intermediate": 3, "output": 4}
_CORE = 1
_STAGES = 5
_PATH = re.compile(r"(?:^|\.)layer\.(\d+)\.(attention\.self\.(?:query|key|value)|attention\.output\.dense|"
                   r"intermediate\.dense|output\.dense)$")
_ROLE = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
         "attention.output.dense": "attention_output", "intermediate.dense": "intermediate", "output.dense": "output"}
SHARING = ("layer", "block", "none")

Placement = Mapping[int, Mapping[str, int]]  # block index -> {module role: adapter rank}


@dataclass(frozen=True)
class Work:
    """Flops of one side: ``gemm`` the matrix products of the linear layers (frozen, adapters, head), forward and
    backward; ``attention`` the attention core's (Q K^T, P V and their gradients)."""

    gemm_forward: int
    gemm_backward: int
    attention_forward: int
    attention_backward: int

    @property
    def gemm(self) -> int:
        return self.gemm_forward + self.gemm_backward

    @property
    def attention(self) -> int:
        return self.attention_forward + self.attention_backward

    @property
    def total(self) -> int:
        return self.gemm + self.attention


@dataclass(frozen=True)
class MultiAdapterBound:
    """The work of N separate runs and of the N adapters trained together; ``ratio`` = separate / together."""

    separate: Work
    together: Work

    @property
    def ratio(self) -> float:
        return self.separate.total / self.together.total

    def as_dict(self) -> dict[str, float | int]:
        """The flops and the ratio as a flat dict (for a results file)."""
        out: dict[str, float | int] = {"ratio": self.ratio}
        for side in ("separate", "together"):
            w = getattr(self, side)
            out.update({f"{side}_gemm_forward_flops": w.gemm_forward, f"{side}_gemm_backward_flops": w.gemm_backward,
                        f"{side}_attention_flops": w.attention, f"{side}_total_flops": w.total})
        return out


def adapter_placement(model, adapter_name: str) -> dict[int, dict[str, int]]:
    """{block: {module role: rank}} of the adapter ``adapter_name`` in a peftc model with BERT-named blocks
    (``...layer.<i>.attention.self.query`` ...): where :func:`multi_adapter_work` needs it.

    Example:
        >>> adapter_placement(peft_model, "default")  # doctest: +SKIP
        {4: {'query': 8, 'value': 8}, 5: {'query': 8, 'value': 8}}
    """
    from .nn import LoraLinear

    out: dict[int, dict[str, int]] = {}
    for path, m in model.named_modules():
        if isinstance(m, LoraLinear) and adapter_name in m.lora_adapters:
            match = _PATH.search(path)
            if match is None:
                raise ValueError(f"adapter {adapter_name!r} sits on {path!r}, which is not a linear layer of a BERT "
                                 f"block (layer.<i>.attention.self.query ... output.dense)")
            out.setdefault(int(match.group(1)), {})[_ROLE[match.group(2)]] = m.lora_adapters[adapter_name].r
    if not out:
        raise ValueError(f"no layer of the model holds the adapter {adapter_name!r}")
    return dict(sorted(out.items()))


def _shape(role: str, h: int, i: int) -> tuple[int, int]:
    return {"intermediate": (h, i), "output": (i, h)}.get(role, (h, h))


def _first(placement: Placement) -> int:
    """The position (block * 5 + stage) of the adapter's first adapted layer."""
    return min(b * _STAGES + _STAGE[role] for b, mods in placement.items() for role in mods)


def _check(config: BertConfig, placements: Sequence[Placement], lengths: Sequence[Sequence[int]],
           shared_inputs: bool, sharing: str) -> None:
    if len(placements) == 0 or len(placements) != len(lengths):
        raise ValueError(f"placements ({len(placements)}) and lengths ({len(lengths)}) need one entry per adapter, "
                         f"and at least one adapter")
    for k, placement in enumerate(placements):
        if not placement or not all(placement.values()):
            raise ValueError(f"placements[{k}] names no adapted layer: {dict(placement)!r}")
        for b, mods in placement.items():
            if not 0 <= b < config.num_hidden_layers:
                raise ValueError(f"placements[{k}] has block {b}; the model has blocks "
                                 f"0..{config.num_hidden_layers - 1}")
            for role, r in mods.items():
                if role not in _STAGE or int(r) != r or r <= 0:
                    raise ValueError(f"placements[{k}][{b}] has {role!r}: {r!r}; expected a role in {MODULES} and a "
                                     f"positive rank")
    for k, lens in enumerate(lengths):
        if len(lens) == 0 or any(int(n) != n or n <= 0 for n in lens):
            raise ValueError(f"lengths[{k}] must list each row's real token count (positive integers), got {lens!r}")
    if shared_inputs and any(list(lens) != list(lengths[0]) for lens in lengths):
        raise ValueError("shared_inputs=True means every adapter trains on the same rows: the lengths lists differ")
    if sharing not in SHARING:
        raise ValueError(f"sharing must be one of {SHARING}, got {sharing!r}")


def multi_adapter_work(config: BertConfig, placements: Sequence[Placement], lengths: Sequence[Sequence[int]],
                       shared_inputs: bool = False, num_labels: int = 0, sharing: str = "layer") -> MultiAdapterBound:
    """The flops of training N LoRA adapters on a frozen BERT encoder in N separate runs and all together.

    ``placements[k]``: adapter k's {block: {module role: rank}} (roles in :data:`MODULES`; from a model:
    :func:`adapter_placement`). ``lengths[k]``: the real token count of every row adapter k trains on, over
    all its steps (training runs on the real tokens only). ``shared_inputs``: every adapter trains on the same
    rows (then the lengths lists must be equal). ``num_labels``: the size of a linear head per adapter on the
    pooled states (0: no head).

    Per adapter, each side runs: the forward of every block on its tokens (frozen products 2 T in out per
    layer, attention core 4 H sum n^2, the adapter's 2 T r (in + out)) and the head; the backward from the
    top down to its first adapted layer: above its lowest adapted block every input gradient (the frozen
    products again, the attention core 8 H sum n^2, the adapter's 8 T r ... with its input gradient), in that
    block only what lies above the first adapted layer (the query / key / value projections never need their
    input gradient there; the attention core only the gradients of the adapted projections), the head's
    input and weight gradients.

    What the together side shares, with ``shared_inputs``: ``sharing="layer"`` (the bound) every frozen
    product whose input no adapter reaches, once for all the adapters still on the base path there: below
    each adapter's first adapted layer, and that layer's own frozen product; ``"block"`` only the whole
    blocks below the lowest adapted block; ``"none"`` nothing. :class:`peftc.models.BertModel` runs what
    ``"layer"`` counts when each adapter's first adapted layer is a query, key or value projection (it shares
    the plain blocks below, then that block's q, k, v products of the identical rows,
    :mod:`peftc.nn.shared_rows`), and what ``"block"`` counts plus those q, k, v products otherwise.
    Different inputs share nothing: the ratio is then 1 in flops (training together can only save per-call
    costs and run bigger, more efficient products).

    Example:
        >>> cfg = BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)
        >>> every_block = {b: {"query": 8, "value": 8} for b in range(6)}
        >>> multi_adapter_work(cfg, [every_block] * 4, [[20] * 32, [18] * 32, [25] * 32, [9] * 32]).ratio
        1.0
    """
    _check(config, placements, lengths, shared_inputs, sharing)
    h, inter, blocks = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    firsts = [_first(p) for p in placements]

    def forward_at(position: int, tokens: int, squares: int) -> tuple[int, int]:
        """(gemm, attention) flops of the frozen products at ``position`` for one copy of the rows."""
        stage = position % _STAGES
        if stage == _CORE:
            return 0, 4 * h * squares
        return sum(2 * tokens * i * o for i, o in (_shape(r, h, inter) for r in MODULES if _STAGE[r] == stage)), 0

    def adapter_forward(placement: Placement, tokens: int) -> int:
        return sum(2 * tokens * r * sum(_shape(role, h, inter)) for mods in placement.values()
                   for role, r in mods.items())

    def backward(placement: Placement, lens: Sequence[int]) -> tuple[int, int]:
        """(gemm, attention) flops of one adapter's backward on its rows, head included."""
        tokens, squares = sum(lens), sum(n * n for n in lens)
        first = _first(placement)
        lowest, start = divmod(first, _STAGES)
        gemm = 4 * len(lens) * h * num_labels
        attention = 0
        for b in range(lowest, blocks):
            mods = placement.get(b, {})
            for role in MODULES:
                i, o = _shape(role, h, inter)
                needs_dx = b > lowest or start < _STAGE[role]
                gemm += 2 * tokens * i * o if needs_dx else 0
                if role in mods:  # gu = dy B, dB, dA, and the adapter's share of dx
                    r = mods[role]
                    gemm += 2 * tokens * r * (2 * o + i + (i if needs_dx else 0))
            if b > lowest:
                attention += 8 * h * squares
            elif start == 0:  # the lowest block's attention core: the gradients of the adapted projections only
                adapted = [role for role in ("query", "key", "value") if role in mods]
                qk = [role for role in adapted if role != "value"]
                attention += 2 * h * squares * (len(adapted) + (1 if qk else 0))
        return gemm, attention

    def side(shared: bool) -> Work:
        gf = gb = af = ab = 0
        for lens, placement in zip(lengths, placements):
            gf += adapter_forward(placement, sum(lens)) + 2 * len(lens) * h * num_labels
            g, a = backward(placement, lens)
            gb, ab = gb + g, ab + a
        lowest_block = min(firsts) // _STAGES
        for position in range(blocks * _STAGES):
            if shared and sharing == "layer":
                copies = sum(f < position for f in firsts) + any(f >= position for f in firsts)
                rows = [lengths[0]] * copies
            elif shared and sharing == "block" and position // _STAGES < lowest_block:
                rows = [lengths[0]]
            else:
                rows = lengths
            for lens in rows:
                g, a = forward_at(position, sum(lens), sum(n * n for n in lens))
                gf, af = gf + g, af + a
        return Work(gf, gb, af, ab)

    return MultiAdapterBound(side(False), side(shared_inputs and sharing != "none"))
