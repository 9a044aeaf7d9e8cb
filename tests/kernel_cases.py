"""One valid call of every array-taking function in peftc._C, described as data.

The boundary and call-safety tests derive their bad inputs from these cases (swap one array for a
wrong dtype, shape, layout, ...), so a new kernel is covered by adding one entry to ``CASES``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from peftc import _C

N, IC, OC, R, C, P = 5, 4, 3, 2, 4, 6


@dataclass
class KernelCase:
    """A valid argument list for ``_C.<fn>`` plus which positions hold which named arrays."""

    fn: str
    args: list
    names: dict[str, int]  # array argument name -> position in args
    outputs: set[str]  # arrays the kernel writes
    any_shape: set[str] = field(default_factory=set)  # arrays whose shape no other argument constrains
    optional: set[str] = field(default_factory=set)  # arrays that may be None

    def call(self, args: list | None = None):
        return getattr(_C, self.fn)(*(self.args if args is None else args))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.args[i] for name, i in self.names.items()}

    def copy(self) -> KernelCase:
        args = [a.copy() if isinstance(a, np.ndarray) else a for a in self.args]
        return KernelCase(self.fn, args, self.names, self.outputs, self.any_shape, self.optional)

    def replaced(self, name: str, value) -> list:
        args = list(self.copy().args)
        args[self.names[name]] = value
        return args


def _f(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _case(fn: str, named: list[tuple[str, object]], scalars: list, outputs: set[str], **kw) -> KernelCase:
    names = {name: i for i, (name, _) in enumerate(named)}
    return KernelCase(fn, [v for _, v in named] + scalars, names, outputs, **kw)


def make_cases(seed: int = 7) -> dict[str, KernelCase]:
    rng = np.random.default_rng(seed)
    labels = np.array([0, 3, -100, 1, 2], dtype=np.int64)
    probs = rng.random((N, C)).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    cases = [
        _case("linear_forward", [("y", _f(rng, N, OC)), ("x", _f(rng, N, IC)), ("weight", _f(rng, OC, IC)),
                                 ("bias", _f(rng, OC))], [], {"y"}, optional={"bias"}),
        _case("linear_backward", [("dx", _f(rng, N, IC)), ("dweight", _f(rng, OC, IC)), ("dbias", _f(rng, OC)),
                                  ("dy", _f(rng, N, OC)), ("x", _f(rng, N, IC)), ("weight", _f(rng, OC, IC))],
              [], {"dx", "dweight", "dbias"}, optional={"dx", "dweight", "dbias"}),
        _case("lora_forward", [("y", _f(rng, N, OC)), ("xd", _f(rng, N, IC)), ("u", _f(rng, N, R)),
                               ("x", _f(rng, N, IC)), ("weight", _f(rng, OC, IC)), ("bias", _f(rng, OC)),
                               ("lora_A", _f(rng, R, IC)), ("lora_B", _f(rng, OC, R)), ("lora_bias", _f(rng, OC))],
              [0.5, 0.3, 11, 2], {"y", "xd", "u"}, optional={"bias", "lora_bias"}),
        _case("lora_backward", [("dx", _f(rng, N, IC)), ("dlora_A", _f(rng, R, IC)), ("dlora_B", _f(rng, OC, R)),
                                ("dlora_bias", _f(rng, OC)), ("work", _f(rng, N * R + N * IC)),
                                ("dy", _f(rng, N, OC)), ("xin", _f(rng, N, IC)), ("u", _f(rng, N, R)),
                                ("weight", _f(rng, OC, IC)), ("lora_A", _f(rng, R, IC)), ("lora_B", _f(rng, OC, R))],
              [0.5, 0.3, 11, 2], {"dx", "dlora_A", "dlora_B", "dlora_bias", "work"},
              any_shape={"work"}, optional={"dx", "dlora_A", "dlora_B", "dlora_bias"}),
        _case("lora_merge", [("weight", _f(rng, OC, IC)), ("bias", _f(rng, OC)), ("lora_A", _f(rng, R, IC)),
                             ("lora_B", _f(rng, OC, R)), ("lora_bias", _f(rng, OC))], [0.5, 1.0],
              {"weight", "bias"}, optional={"bias", "lora_bias"}),
        _case("rng_uniform", [("out", _f(rng, N, IC))], [-1.0, 2.0, 3, 5], {"out"}, any_shape={"out"}),
        _case("rng_normal", [("out", _f(rng, N, IC))], [0.5, 2.0, 3, 5], {"out"}, any_shape={"out"}),
        _case("dropout_forward", [("out", _f(rng, N, IC)), ("x", _f(rng, N, IC))], [0.25, 3, 5], {"out"}),
        _case("dropout_backward", [("dx", _f(rng, N, IC)), ("dout", _f(rng, N, IC))], [0.25, 3, 5], {"dx"}),
        _case("cross_entropy_forward", [("probs", _f(rng, N, C)), ("logits", _f(rng, N, C)), ("labels", labels)],
              [-100], {"probs"}),
        _case("cross_entropy_backward", [("dlogits", _f(rng, N, C)), ("probs", probs), ("labels", labels.copy())],
              [-100], {"dlogits"}),
        _case("adamw_step", [("param", _f(rng, P)), ("m", _f(rng, P)), ("v", rng.random(P).astype(np.float32)),
                             ("grad", _f(rng, P))], [1e-2, 0.9, 0.999, 1e-8, 0.01, 3], {"param", "m", "v"}),
        _case("sgd_step", [("param", _f(rng, P)), ("momentum_buffer", _f(rng, P)), ("grad", _f(rng, P))],
              [1e-2, 0.9, 0.0, 0.01, True, 2], {"param", "momentum_buffer"}, optional={"momentum_buffer"}),
        _case("sumsq", [("x", _f(rng, P))], [], set(), any_shape={"x"}),
        _case("scale_inplace", [("x", _f(rng, P))], [0.5], {"x"}, any_shape={"x"}),
        # EVA kernels: a first incremental-PCA update (n_seen = 0) of K = R components
        _case("ipca_update", [("components", _f(rng, R, IC)), ("singular_values", _f(rng, R)), ("mean", _f(rng, IC)),
                              ("var", _f(rng, IC)), ("explained_variance_ratio", _f(rng, R)), ("cosine", _f(rng, R)),
                              ("work", _f(rng, _C.ipca_workspace_size(N, IC, R))), ("x", _f(rng, N, IC))],
              [0], {"components", "singular_values", "mean", "var", "explained_variance_ratio", "cosine", "work"},
              any_shape={"work"}),
    ]
    # cross_entropy_backward takes dloss between dlogits and probs
    ce = next(c for c in cases if c.fn == "cross_entropy_backward")
    ce.args.insert(1, 0.7)
    ce.names = {"dlogits": 0, "probs": 2, "labels": 3}
    return {c.fn: c for c in cases}


CASE_NAMES = sorted(make_cases())


def array_params() -> list[tuple[str, str]]:
    """(function, array argument) for every array argument of every case."""
    return [(fn, name) for fn, case in sorted(make_cases().items()) for name in case.names]


def output_params() -> list[tuple[str, str]]:
    return [(fn, name) for fn, case in sorted(make_cases().items()) for name in sorted(case.outputs)]
