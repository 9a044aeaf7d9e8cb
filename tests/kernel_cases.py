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
    any_rows: set[str] = field(default_factory=set)  # lookup tables: only their first dimension is free
    # the function takes a list of argument tuples (ipca_update_many): the case is a one-job list,
    # and a job's reported failure is raised as the ValueError a single call would raise
    one_job: bool = False

    def call(self, args: list | None = None):
        args = self.args if args is None else args
        if not self.one_job:
            return getattr(_C, self.fn)(*args)
        (error,) = getattr(_C, self.fn)([tuple(args)])
        if error is not None:
            raise ValueError(error)
        return None

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.args[i] for name, i in self.names.items()}

    def copy(self) -> KernelCase:
        args = [_copied(a) for a in self.args]
        return KernelCase(self.fn, args, self.names, self.outputs, self.any_shape, self.optional, self.any_rows,
                          self.one_job)

    def replaced(self, name: str, value) -> list:
        args = list(self.copy().args)
        args[self.names[name]] = value
        return args


def _copied(arg):
    """An array copied; a tuple of arrays (one per adapter, lora_mixed_*) copied entry by entry."""
    if isinstance(arg, np.ndarray):
        return arg.copy()
    if isinstance(arg, tuple):
        return tuple(_copied(a) for a in arg)
    return arg


def _f(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _h(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """bf16 bit patterns (uint16) of standard normal values: a packed weight's storage."""
    return (rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _case(fn: str, named: list[tuple[str, object]], scalars: list, outputs: set[str], **kw) -> KernelCase:
    names = {name: i for i, (name, _) in enumerate(named) if name is not None}
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
              [0.5, 0.3, 11, 2], {"y", "xd", "u"}, optional={"weight", "bias", "lora_bias"}),
        _case("lora_backward", [("dx", _f(rng, N, IC)), ("dlora_A", _f(rng, R, IC)), ("dlora_B", _f(rng, OC, R)),
                                ("dlora_bias", _f(rng, OC)), ("work", _f(rng, N * R + N * IC)),
                                ("dy", _f(rng, N, OC)), ("xin", _f(rng, N, IC)), ("u", _f(rng, N, R)),
                                ("weight", _f(rng, OC, IC)), ("lora_A", _f(rng, R, IC)), ("lora_B", _f(rng, OC, R))],
              [0.5, 0.3, 11, 2], {"dx", "dlora_A", "dlora_B", "dlora_bias", "work"},
              any_shape={"work"}, optional={"dx", "dlora_A", "dlora_B", "dlora_bias", "weight"}),
        _case("lora_merge", [("weight", _f(rng, OC, IC)), ("bias", _f(rng, OC)), ("lora_A", _f(rng, R, IC)),
                             ("lora_B", _f(rng, OC, R)), ("lora_bias", _f(rng, OC))], [0.5, 1.0],
              {"weight", "bias"}, optional={"bias", "lora_bias"}),
        _case("rng_uniform", [("out", _f(rng, N, IC))], [-1.0, 2.0, 3, 5], {"out"}, any_shape={"out"}),
        _case("rng_normal", [("out", _f(rng, N, IC))], [0.5, 2.0, 3, 5], {"out"}, any_shape={"out"}),
        _case("sample_tokens", [("tokens", rng.integers(0, C, N).astype(np.int64)), ("probs", _f(rng, N, C)),
                                ("logits", _f(rng, N, C))], [0.8, 2, 0.9, 3, 5], {"tokens", "probs"}),
        _case("bf16_round", [("out", _h(rng, N, IC)), ("x", _f(rng, N, IC))], [], {"out"}),
        _case("bf16_pack", [("packed", _h(rng, OC, 32)), ("weight", _f(rng, OC, IC))], [], {"packed"}),
        _case("bf16_unpack", [("weight", _f(rng, OC, IC)), ("packed", _h(rng, OC, 32))], [], {"weight"}),
        _case("bf16_linear_forward", [("y", _f(rng, N, OC)), ("work", _f(rng, 4)), ("x", _f(rng, N, IC)),
                                      ("packed_weight", _h(rng, OC, 32)), ("bias", _f(rng, OC))], [False, 0],
              {"y", "work"}, any_shape={"work"}, optional={"work", "bias"}),
        _case("bf16_linear_backward", [("dx", _f(rng, N, IC)), ("dy", _f(rng, N, OC)),
                                       ("packed_weight", _h(rng, OC, 32))], [0], {"dx"}),
        _case("dropout_forward", [("out", _f(rng, N, IC)), ("x", _f(rng, N, IC))], [0.25, 3, 5], {"out"}),
        _case("dropout_backward", [("dx", _f(rng, N, IC)), ("dout", _f(rng, N, IC))], [0.25, 3, 5], {"dx"}),
        _case("dropout_rows_forward", [("out", _f(rng, N, IC)), ("x", _f(rng, N, IC)),
                                       ("rows", np.arange(N, dtype=np.int64)[::-1].copy())], [0.25, 3, 5], {"out"}),
        _case("dropout_rows_backward", [("dx", _f(rng, N, IC)), ("dout", _f(rng, N, IC)),
                                        ("rows", np.arange(N, dtype=np.int64) * 2)], [0.25, 3, 5], {"dx"}),
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
        _case("fill", [("x", _f(rng, P))], [0.0], {"x"}, any_shape={"x"}),
        # EVA kernels: a first incremental-PCA update (n_seen = 0) of K = R components
        _case("ipca_update", [("components", _f(rng, R, IC)), ("singular_values", _f(rng, R)), ("mean", _f(rng, IC)),
                              ("var", _f(rng, IC)), ("explained_variance_ratio", _f(rng, R)), ("cosine", _f(rng, R)),
                              ("work", _f(rng, _C.ipca_workspace_size(N, IC, R))), ("x", _f(rng, N, IC))],
              [0], {"components", "singular_values", "mean", "var", "explained_variance_ratio", "cosine", "work"},
              any_shape={"work"}),
        _case("ipca_update_many", [("components", _f(rng, R, IC)), ("singular_values", _f(rng, R)),
                                   ("mean", _f(rng, IC)), ("var", _f(rng, IC)), ("explained_variance_ratio", _f(rng, R)),
                                   ("cosine", _f(rng, R)), ("work", _f(rng, _C.ipca_workspace_size(N, IC, R))),
                                   ("x", _f(rng, N, IC))],
              [0], {"components", "singular_values", "mean", "var", "explained_variance_ratio", "cosine", "work"},
              any_shape={"work"}, one_job=True),
    ]
    # LoRA with one adapter per row: two adapters of ranks R and 1, rows of adapter 1, none, 0, 1, 0; the
    # per-adapter sequences are unnamed (None): the tests of lora_mixed swap their entries themselves
    ranks, idx = (R, 1), np.array([1, -1, 0, 1, 0], dtype=np.int64)
    mixed_work = _C.lora_mixed_workspace_size(N, N, IC, OC, R)  # G = N: enough for any grouping

    def adapters(*fields: str) -> list[tuple[None, tuple]]:
        shapes = {"A": lambda r: (r, IC), "B": lambda r: (OC, r)}
        return [(None, tuple(_f(rng, *shapes[f](r)) for r in ranks)) for f in fields]

    scratch = [("work", _f(rng, mixed_work)), ("iwork", np.zeros(N + len(ranks) + 1, dtype=np.int64))]
    cases += [
        _case("lora_mixed_forward", [("y", _f(rng, N, OC)), ("u", _f(rng, N, R)), *scratch, ("x", _f(rng, N, IC)),
                                     ("weight", _f(rng, OC, IC)), ("bias", _f(rng, OC)), *adapters("A", "B"),
                                     (None, (_f(rng, OC), None)), ("scale", np.float32([0.5, 2.0])), ("idx", idx)],
              [], {"y", "u", "work", "iwork"}, any_shape={"work", "iwork"}, optional={"weight", "bias"}),
        _case("lora_mixed_backward", [("dx", _f(rng, N, IC)), *adapters("A", "B"), (None, (_f(rng, OC), None)),
                                      *scratch, ("dy", _f(rng, N, OC)), ("x", _f(rng, N, IC)), ("u", _f(rng, N, R)),
                                      ("weight", _f(rng, OC, IC)), *adapters("A", "B"),
                                      ("scale", np.float32([0.5, 2.0])), ("idx", idx.copy())],
              [], {"dx", "work", "iwork"}, any_shape={"work", "iwork"}, optional={"dx"}),
    ]
    # Bone / MiSS and Bat (Bat needs r | in and r | out: a 4 x 4 weight, r = 2)
    bw = 4
    cases += [
        _case("bone_forward", [("y", _f(rng, N, OC)), ("s", _f(rng, N, R)), ("xd", _f(rng, N, IC)),
                               ("x", _f(rng, N, IC)), ("weight", _f(rng, OC, IC)), ("bias", _f(rng, OC)),
                               ("miss_block", _f(rng, R, OC))], [0.3, 11, 2], {"y", "s", "xd"}, optional={"bias"}),
        _case("bone_backward", [("dx", _f(rng, N, IC)), ("dmiss_block", _f(rng, R, OC)),
                                ("work", _f(rng, N * R + N * IC)), ("dy", _f(rng, N, OC)), ("s", _f(rng, N, R)),
                                ("weight", _f(rng, OC, IC)), ("miss_block", _f(rng, R, OC))], [0.3, 11, 2],
              {"dx", "dmiss_block", "work"}, any_shape={"work"}, optional={"dx", "dmiss_block"}),
        # any r fits a merge (the r <= in_features rule belongs to the layer), so no size constrains its rows
        _case("bone_merge", [("weight", _f(rng, OC, IC)), ("miss_block", _f(rng, R, OC))], [1.0], {"weight"},
              any_shape={"miss_block"}),
        _case("bat_weight", [("weff", _f(rng, bw, bw)), ("weight", _f(rng, bw, bw)),
                             ("miss_block", _f(rng, bw // R, R, R))], [], {"weff"}),
        _case("bat_forward", [("y", _f(rng, N, bw)), ("weff", _f(rng, bw, bw)), ("x", _f(rng, N, bw)),
                              ("weight", _f(rng, bw, bw)), ("bias", _f(rng, bw)),
                              ("miss_block", _f(rng, bw // R, R, R))], [], {"y", "weff"}, optional={"bias"}),
        _case("bat_backward", [("dx", _f(rng, N, bw)), ("dmiss_block", _f(rng, bw // R, R, R)),
                               ("work", _f(rng, bw * bw)), ("dy", _f(rng, N, bw)), ("x", _f(rng, N, bw)),
                               ("weight", _f(rng, bw, bw)), ("miss_block", _f(rng, bw // R, R, R))], [],
              {"dx", "dmiss_block", "work"}, any_shape={"work"}, optional={"dx", "dmiss_block"}),
        _case("bat_merge", [("weight", _f(rng, bw, bw)), ("work", _f(rng, R * bw)),
                            ("miss_block", _f(rng, bw // R, R, R)), ("inverse", _f(rng, bw // R, R, R))], [],
              {"weight", "work"}, any_shape={"work"}, optional={"inverse"}),
    ]
    # SoRA and Hydra adapters (RS: the Hydra sequential rank)
    RS = 3
    cases += [
        _case("sora_forward", [("y", _f(rng, N, OC)), ("xd", _f(rng, N, IC)), ("u", _f(rng, N, R)),
                               ("work", _f(rng, OC * R)), ("x", _f(rng, N, IC)), ("weight", _f(rng, OC, IC)),
                               ("bias", _f(rng, OC)), ("lora_A", _f(rng, R, IC)), ("lora_B", _f(rng, OC, R)),
                               ("gate", _f(rng, R))],
              [0.5, 0.3, 11, 2], {"y", "xd", "u", "work"}, any_shape={"work"}, optional={"bias"}),
        _case("sora_backward", [("dx", _f(rng, N, IC)), ("dlora_A", _f(rng, R, IC)), ("dlora_B", _f(rng, OC, R)),
                                ("dgate", _f(rng, R)), ("work", _f(rng, 2 * OC * R + N * R + N * IC)),
                                ("dy", _f(rng, N, OC)), ("xin", _f(rng, N, IC)), ("u", _f(rng, N, R)),
                                ("weight", _f(rng, OC, IC)), ("lora_A", _f(rng, R, IC)), ("lora_B", _f(rng, OC, R)),
                                ("gate", _f(rng, R))],
              [0.5, 0.3, 11, 2], {"dx", "dlora_A", "dlora_B", "dgate", "work"}, any_shape={"work"},
              optional={"dx", "dlora_A", "dlora_B", "dgate"}),
        _case("sora_gate_threshold", [("gate", _f(rng, P))], [0.1, False], {"gate"}, any_shape={"gate"}),
        _case("hydra_forward", [("y", _f(rng, N, OC)), ("y0", _f(rng, N, OC)), ("p", _f(rng, N, R)),
                                ("q", _f(rng, N, RS)), ("x", _f(rng, N, IC)), ("weight", _f(rng, OC, IC)),
                                ("bias", _f(rng, OC)), ("par_A", _f(rng, R, IC)), ("par_B", _f(rng, OC, R)),
                                ("seq_A", _f(rng, RS, OC)), ("seq_B", _f(rng, OC, RS))],
              [0.5, 0.25], {"y", "y0", "p", "q"}, optional={"bias"}),
        _case("hydra_backward", [("dx", _f(rng, N, IC)), ("dpar_A", _f(rng, R, IC)), ("dpar_B", _f(rng, OC, R)),
                                 ("dseq_A", _f(rng, RS, OC)), ("dseq_B", _f(rng, OC, RS)),
                                 ("work", _f(rng, N * R + N * RS + N * OC)), ("dy", _f(rng, N, OC)),
                                 ("x", _f(rng, N, IC)), ("y0", _f(rng, N, OC)), ("p", _f(rng, N, R)),
                                 ("q", _f(rng, N, RS)), ("weight", _f(rng, OC, IC)), ("par_A", _f(rng, R, IC)),
                                 ("par_B", _f(rng, OC, R)), ("seq_A", _f(rng, RS, OC)), ("seq_B", _f(rng, OC, RS))],
              [0.5, 0.25], {"dx", "dpar_A", "dpar_B", "dseq_A", "dseq_B", "work"}, any_shape={"work"},
              optional={"dx", "dpar_A", "dpar_B", "dseq_A", "dseq_B"}),
        _case("hydra_merge", [("weight", _f(rng, OC, IC)), ("bias", _f(rng, OC)),
                              ("work", _f(rng, RS * IC + RS + RS * RS)), ("par_A", _f(rng, R, IC)),
                              ("par_B", _f(rng, OC, R)), ("seq_A", _f(rng, RS, OC)), ("seq_B", _f(rng, OC, RS))],
              [0.5, 0.25, 1.0], {"weight", "bias", "work"}, any_shape={"work"}, optional={"bias"}),
    ]
    # cross_entropy_backward takes dloss between dlogits and probs
    ce = next(c for c in cases if c.fn == "cross_entropy_backward")
    ce.args.insert(1, 0.7)
    ce.names = {"dlogits": 0, "probs": 2, "labels": 3}
    cases += _cnn_cases(rng) + _encoder_cases(rng) + _tta_cases(rng) + _fscil_cases(rng)
    cases += _bn_relu_cases(rng)
    cases += _packed_attention_cases(rng)
    cases += _distill_cases(rng)
    cases += _lifelong_cases(rng)
    return {c.fn: c for c in cases}


def _positive(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (0.5 + rng.random(shape)).astype(np.float32)


def _cnn_cases(rng: np.random.Generator) -> list[KernelCase]:
    """NCHW images; no dimension is 1, so a Fortran-ordered copy is never also C-contiguous."""
    n, ic, ih, iw, oc, ch = 2, 3, 5, 6, 4, 3
    # conv: kernel (3, 2), stride (1, 2), padding (1, 0) -> (5, 3) output plane
    conv = [1, 2, 1, 0]
    work = _f(rng, _C.conv2d_workspace_size(n, ic, ih, iw, oc, 3, 2, *conv))
    # pooling: kernel (3, 2), stride (2, 2), padding (1, 1) -> (3, 4) output plane
    pool = [3, 2, 2, 2, 1, 1]
    x_pool = _f(rng, n, ch, ih, iw)
    argmax = np.zeros((n, ch, 3, 4), dtype=np.int64)
    _C.maxpool2d_forward(_f(rng, n, ch, 3, 4), argmax, x_pool, *pool)
    return [
        _case("conv2d_forward", [("y", _f(rng, n, oc, 5, 3)), ("work", work.copy()), ("x", _f(rng, n, ic, ih, iw)),
                                 ("weight", _f(rng, oc, ic, 3, 2)), ("bias", _f(rng, oc))], conv, {"y", "work"},
              any_shape={"work"}, optional={"bias"}),
        _case("conv2d_backward", [("dx", _f(rng, n, ic, ih, iw)), ("dweight", _f(rng, oc, ic, 3, 2)),
                                  ("dbias", _f(rng, oc)), ("work", work.copy()), ("dy", _f(rng, n, oc, 5, 3)),
                                  ("x", _f(rng, n, ic, ih, iw)), ("weight", _f(rng, oc, ic, 3, 2))], conv,
              {"dx", "dweight", "dbias", "work"}, any_shape={"work"}, optional={"dx", "dweight", "dbias"}),
        # training with running buffers: both are then outputs
        _case("batchnorm2d_forward", [("y", _f(rng, n, ch, ih, iw)), ("mean", _f(rng, ch)), ("rstd", _f(rng, ch)),
                                      ("running_mean", _f(rng, ch)), ("running_var", _positive(rng, ch)),
                                      ("x", _f(rng, n, ch, ih, iw)), ("weight", _f(rng, ch)), ("bias", _f(rng, ch))],
              [True, 0.1, 1e-5], {"y", "mean", "rstd", "running_mean", "running_var"},
              optional={"y", "running_mean", "running_var", "weight", "bias"}),  # no y: statistics only
        _case("batchnorm2d_backward", [("dx", _f(rng, n, ch, ih, iw)), ("dweight", _f(rng, ch)), ("dbias", _f(rng, ch)),
                                       ("dy", _f(rng, n, ch, ih, iw)), ("x", _f(rng, n, ch, ih, iw)),
                                       ("mean", _f(rng, ch)), ("rstd", _positive(rng, ch)), ("weight", _f(rng, ch))],
              [True], {"dx", "dweight", "dbias"}, optional={"dx", "dweight", "dbias", "weight"}),
        _case("maxpool2d_forward", [("y", _f(rng, n, ch, 3, 4)), ("argmax", np.zeros((n, ch, 3, 4), np.int64)),
                                    ("x", x_pool)], pool, {"y", "argmax"}),
        _case("maxpool2d_backward", [("dx", _f(rng, n, ch, ih, iw)), ("dy", _f(rng, n, ch, 3, 4)),
                                     ("argmax", argmax)], [], {"dx"}),
        _case("avgpool2d_forward", [("y", _f(rng, n, ch, 3, 4)), ("x", _f(rng, n, ch, ih, iw))], pool, {"y"}),
        _case("avgpool2d_backward", [("dx", _f(rng, n, ch, ih, iw)), ("dy", _f(rng, n, ch, 3, 4))], pool, {"dx"}),
        _case("global_avgpool2d_forward", [("y", _f(rng, n, ch)), ("x", _f(rng, n, ch, ih, iw))], [], {"y"}),
        _case("global_avgpool2d_backward", [("dx", _f(rng, n, ch, ih, iw)), ("dy", _f(rng, n, ch))], [], {"dx"}),
        _case("relu_forward", [("y", _f(rng, N, IC)), ("x", _f(rng, N, IC))], [], {"y"}),
        _case("relu_backward", [("dx", _f(rng, N, IC)), ("dy", _f(rng, N, IC)), ("x", _f(rng, N, IC))], [], {"dx"}),
    ]


def _encoder_cases(rng: np.random.Generator) -> list[KernelCase]:
    """Token batches (B, T) of width H split into NH heads; tables V, NP, NT rows."""
    b, t, h, nh, v, np_, nt = 2, 3, 4, 2, 7, 5, 2
    ids = rng.integers(0, v, (b, t))
    types = rng.integers(0, nt, (b, t))
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=np.int64)
    tables = {"word_embeddings", "position_embeddings", "token_type_embeddings"}
    dtables = {"d" + name for name in tables}
    p, seed, offset = 0.1, 3, 5
    return [
        _case("embedding_forward", [("out", _f(rng, b, t, h)), ("input_ids", ids), ("token_type_ids", types),
                                    ("word_embeddings", _f(rng, v, h)), ("position_embeddings", _f(rng, np_, h)),
                                    ("token_type_embeddings", _f(rng, nt, h))], [], {"out"},
              optional={"token_type_ids"}, any_rows=tables),
        _case("embedding_backward", [("dword_embeddings", _f(rng, v, h)), ("dposition_embeddings", _f(rng, np_, h)),
                                     ("dtoken_type_embeddings", _f(rng, nt, h)), ("dout", _f(rng, b, t, h)),
                                     ("input_ids", ids.copy()), ("token_type_ids", types.copy())], [int(ids[0, 0])],
              dtables, optional=dtables | {"token_type_ids"}, any_rows=dtables),
        _case("layernorm_forward", [("out", _f(rng, N, IC)), ("mean", _f(rng, N)), ("rstd", _f(rng, N)),
                                    ("x", _f(rng, N, IC)), ("weight", _f(rng, IC)), ("bias", _f(rng, IC))], [1e-5],
              {"out", "mean", "rstd"}),
        _case("layernorm_backward", [("dx", _f(rng, N, IC)), ("dweight", _f(rng, IC)), ("dbias", _f(rng, IC)),
                                     ("dout", _f(rng, N, IC)), ("x", _f(rng, N, IC)), ("weight", _f(rng, IC)),
                                     ("mean", _f(rng, N)), ("rstd", _positive(rng, N))], [],
              {"dx", "dweight", "dbias"}, optional={"dx", "dweight", "dbias"}),
        _case("layernorm_residual_forward", [("out", _f(rng, N, IC)), ("mean", _f(rng, N)), ("rstd", _f(rng, N)),
                                             ("x", _f(rng, N, IC)), ("residual", _f(rng, N, IC)),
                                             ("weight", _f(rng, IC)), ("bias", _f(rng, IC))], [1e-5],
              {"out", "mean", "rstd", "x"}),
        _case("gelu_forward", [("out", _f(rng, N, IC)), ("x", _f(rng, N, IC))], [], {"out"}),
        _case("gelu_backward", [("dx", _f(rng, N, IC)), ("dout", _f(rng, N, IC)), ("x", _f(rng, N, IC))], [], {"dx"}),
        _case("gelu_tanh_forward", [("out", _f(rng, N, IC)), ("x", _f(rng, N, IC))], [], {"out"}),
        _case("gelu_tanh_backward", [("dx", _f(rng, N, IC)), ("dout", _f(rng, N, IC)), ("x", _f(rng, N, IC))], [],
              {"dx"}),
        _case("attention_forward", [("out", _f(rng, b, t, h)), ("att", _f(rng, b, nh, t, t)),
                                    ("work", _f(rng, _C.attention_forward_workspace_size(t, p))),
                                    ("q", _f(rng, b, t, h)), ("k", _f(rng, b, t, h)), ("v", _f(rng, b, t, h)),
                                    ("attention_mask", mask)], [False, p, seed, offset, nh], {"out", "att", "work"},
              any_shape={"work"}, optional={"work", "attention_mask"}),
        _case("attention_backward", [("dq", _f(rng, b, t, h)), ("dk", _f(rng, b, t, h)), ("dv", _f(rng, b, t, h)),
                                     ("work", _f(rng, _C.attention_backward_workspace_size(t, p))),
                                     ("dout", _f(rng, b, t, h)), ("q", _f(rng, b, t, h)), ("k", _f(rng, b, t, h)),
                                     ("v", _f(rng, b, t, h)), ("att", _positive(rng, b, nh, t, t) / t)],
              [p, seed, offset, nh], {"dq", "dk", "dv", "work"}, any_shape={"work"}, optional={"dq", "dk", "dv"}),
        _case("mean_pool_forward", [("out", _f(rng, b, h)), ("x", _f(rng, b, t, h)), ("attention_mask", mask.copy())],
              [], {"out"}, optional={"attention_mask"}),
        _case("mean_pool_backward", [("dx", _f(rng, b, t, h)), ("dout", _f(rng, b, h)),
                                     ("attention_mask", mask.copy())], [], {"dx"}, optional={"attention_mask"}),
        _case("l2_normalize_forward", [("out", _f(rng, N, IC)), ("norm", _f(rng, N)), ("x", _f(rng, N, IC))], [1e-12],
              {"out", "norm"}),
        _case("l2_normalize_backward", [("dx", _f(rng, N, IC)), ("dout", _f(rng, N, IC)), ("out", _f(rng, N, IC)),
                                        ("norm", _positive(rng, N))], [1e-12], {"dx"}),
    ]


def _tta_cases(rng: np.random.Generator) -> list[KernelCase]:
    """Test-time adaptation: softmax entropy and EATA's sample selection."""
    ent_probs = rng.random((N, C)).astype(np.float32)
    ent_probs /= ent_probs.sum(axis=1, keepdims=True)
    return [
        _case("softmax_entropy_forward", [("ent", _f(rng, N)), ("probs", _f(rng, N, C)), ("logits", _f(rng, N, C))],
              [], {"ent", "probs"}),
        _case("softmax_entropy_backward", [("dlogits", _f(rng, N, C)), ("dent", _f(rng, N)),
                                           ("probs", ent_probs.copy()), ("logits", _f(rng, N, C))], [], {"dlogits"}),
        # the ema_set flag sits between the arrays: (weight, ema, ema_set, ent, probs, e0, d_margin, momentum)
        KernelCase("eata_select", [_f(rng, N), ent_probs[0].copy(), True, _positive(rng, N), ent_probs.copy(),
                                   0.4 * np.log(C), 0.05, 0.9],
                   {"weight": 0, "ema": 1, "ent": 3, "probs": 4}, {"weight", "ema"}),
    ]


def _fscil_cases(rng: np.random.Generator) -> list[KernelCase]:
    """FSCIL losses: SupCon over unit rows and the alignment to fixed prototypes (dloss sits after the outputs)."""
    z = _f(rng, N, IC)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    pair = np.array([0, 1, 0, 1, 2], dtype=np.int64)
    probs = rng.random((N, N)).astype(np.float32)
    feat_labels = np.array([0, 2, -100, 1, 2], dtype=np.int64)
    return [
        _case("supcon_forward", [("probs", _f(rng, N, N)), ("z", z), ("labels", pair)], [0.1], {"probs"}),
        KernelCase("supcon_backward", [_f(rng, N, IC), _f(rng, N, N), 0.7, probs, z.copy(), pair.copy(), 0.1],
                   {"dz": 0, "work": 1, "probs": 3, "z": 4, "labels": 5}, {"dz", "work"}),
        _case("etf_align_forward", [("dots", _f(rng, N)), ("feat", z.copy()), ("targets", _f(rng, 3, IC)),
                                    ("labels", feat_labels)], [-100], {"dots"}, any_rows={"targets"}),
        KernelCase("etf_align_backward", [_f(rng, N, IC), 0.7, _f(rng, N), _f(rng, 3, IC), feat_labels.copy(), -100],
                   {"dfeat": 0, "dots": 2, "targets": 3, "labels": 4}, {"dfeat"}, any_rows={"targets"}),
    ]


def _bn_relu_cases(rng: np.random.Generator) -> list[KernelCase]:
    """Fused batch norm + ReLU: the batchnorm2d pair's arguments, plus the forward's output y in the backward."""
    n, ch, ih, iw = 2, 3, 5, 6
    return [
        _case("batchnorm2d_relu_forward", [("y", _f(rng, n, ch, ih, iw)), ("mean", _f(rng, ch)),
                                           ("rstd", _f(rng, ch)), ("running_mean", _f(rng, ch)),
                                           ("running_var", _positive(rng, ch)), ("x", _f(rng, n, ch, ih, iw)),
                                           ("weight", _f(rng, ch)), ("bias", _f(rng, ch))],
              [True, 0.1, 1e-5], {"y", "mean", "rstd", "running_mean", "running_var"},
              optional={"running_mean", "running_var", "weight", "bias"}),
        _case("batchnorm2d_relu_backward", [("dx", _f(rng, n, ch, ih, iw)), ("dweight", _f(rng, ch)),
                                            ("dbias", _f(rng, ch)), ("dy", _f(rng, n, ch, ih, iw)),
                                            ("y", _f(rng, n, ch, ih, iw)), ("x", _f(rng, n, ch, ih, iw)),
                                            ("mean", _f(rng, ch)), ("rstd", _positive(rng, ch)),
                                            ("weight", _f(rng, ch))],
              [True], {"dx", "dweight", "dbias"}, optional={"dx", "dweight", "dbias", "weight"}),
        _case("batchnorm2d_add_relu_forward", [("y", _f(rng, n, ch, ih, iw)), ("mean", _f(rng, ch)),
                                               ("rstd", _f(rng, ch)), ("running_mean", _f(rng, ch)),
                                               ("running_var", _positive(rng, ch)), ("x", _f(rng, n, ch, ih, iw)),
                                               ("weight", _f(rng, ch)), ("bias", _f(rng, ch)),
                                               ("residual", _f(rng, n, ch, ih, iw)), ("res_mean", _f(rng, ch)),
                                               ("res_scale", _f(rng, ch)), ("res_shift", _f(rng, ch))],
              [True, 0.1, 1e-5], {"y", "mean", "rstd", "running_mean", "running_var"},
              optional={"running_mean", "running_var", "weight", "bias", "res_mean", "res_scale", "res_shift"}),
    ]


def _packed_attention_cases(rng: np.random.Generator) -> list[KernelCase]:
    """Packed-sequence attention: sequences of 2, 0 and 3 rows stored back to back."""
    n, h, nh = 5, 4, 2
    offsets = np.array([0, 2, 2, 5], dtype=np.int64)
    starts = np.array([1, 0, 0], dtype=np.int64)  # padded rows of T = 4
    return [
        _case("attention_packed_forward", [("out", _f(rng, n, h)), ("att", _f(rng, nh * 13)),
                                           ("work", _f(rng, _C.attention_packed_forward_workspace_size(3))),
                                           ("q", _f(rng, n, h)), ("k", _f(rng, n, h)), ("v", _f(rng, n, h)),
                                           ("offsets", offsets), ("starts", starts)], [0.2, 3, 5, 4, nh],
              {"out", "att", "work"}, any_shape={"att", "work", "offsets", "starts"}, optional={"att", "starts"}),
        _case("attention_packed_backward", [("dq", _f(rng, n, h)), ("dk", _f(rng, n, h)), ("dv", _f(rng, n, h)),
                                            ("work", _f(rng, _C.attention_packed_backward_workspace_size(3, 0.2))),
                                            ("dout", _f(rng, n, h)), ("q", _f(rng, n, h)), ("k", _f(rng, n, h)),
                                            ("v", _f(rng, n, h)), ("att", _f(rng, nh * 13)), ("offsets", offsets),
                                            ("starts", starts)], [0.2, 3, 5, 4, nh], {"dq", "dk", "dv", "work"},
              any_shape={"att", "work", "offsets", "starts"}, optional={"dq", "dk", "dv", "starts"}),
        _case("attention_cached_forward", [("out", _f(rng, 2, 2, h)),
                                           ("work", _f(rng, _C.attention_cached_forward_workspace_size(2, 3, nh))),
                                           ("q", _f(rng, 2, 2, h)), ("k_cache", _f(rng, 2, 5, h)),
                                           ("v_cache", _f(rng, 2, 5, h))], [3, nh], {"out", "work"},
              any_shape={"work"}),
    ]


def _distill_cases(rng: np.random.Generator) -> list[KernelCase]:
    """Data-free distillation losses: logits (N, C), BN inputs and images (n, ch, h, w), none of size 1."""
    n, ch, h, w = 2, 3, 4, 5
    probs = rng.random((N, C)).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    pbar = probs.mean(axis=0)
    return [
        _case("kd_kl_forward", [("student_probs", _f(rng, N, C)), ("teacher_probs", _f(rng, N, C)),
                                ("student_logits", _f(rng, N, C)), ("teacher_logits", _f(rng, N, C))], [2.0],
              {"student_probs", "teacher_probs"}),
        # dloss sits between the gradients and the saved tensors
        KernelCase("kd_kl_backward", [_f(rng, N, C), _f(rng, N, C), 0.5, probs.copy(), probs[::-1].copy(),
                                      _f(rng, N, C), _f(rng, N, C), 2.0],
                   {"dstudent_logits": 0, "dteacher_logits": 1, "student_probs": 3, "teacher_probs": 4,
                    "student_logits": 5, "teacher_logits": 6}, {"dstudent_logits", "dteacher_logits"},
                   optional={"dstudent_logits", "dteacher_logits"}),
        _case("adi_js_forward", [("student_probs", _f(rng, N, C)), ("teacher_probs", _f(rng, N, C)),
                                 ("student_logits", _f(rng, N, C)), ("teacher_logits", _f(rng, N, C))], [3.0],
              {"student_probs", "teacher_probs"}),
        KernelCase("adi_js_backward", [_f(rng, N, C), _f(rng, N, C), 0.5, probs.copy(), probs[::-1].copy(), 3.0],
                   {"dstudent_logits": 0, "dteacher_logits": 1, "student_probs": 3, "teacher_probs": 4},
                   {"dstudent_logits", "dteacher_logits"}, optional={"dstudent_logits", "dteacher_logits"}),
        _case("bn_stat_match_forward", [("mean", _f(rng, ch)), ("var", _f(rng, ch)), ("x", _f(rng, n, ch, h, w)),
                                        ("running_mean", _f(rng, ch)), ("running_var", _positive(rng, ch))], [],
              {"mean", "var"}, any_shape={"x"}),  # only x has the batch and plane sizes
        KernelCase("bn_stat_match_backward", [_f(rng, n, ch, h, w), 0.5, _f(rng, n, ch, h, w), _f(rng, ch),
                                              _positive(rng, ch), _f(rng, ch), _positive(rng, ch)],
                   {"dx": 0, "x": 2, "mean": 3, "var": 4, "running_mean": 5, "running_var": 6}, {"dx"}),
        _case("dafl_activation_forward", [("features", _f(rng, N, IC))], [], set(), any_shape={"features"}),
        KernelCase("dafl_activation_backward", [_f(rng, N, IC), 0.5, _f(rng, N, IC)],
                   {"dfeatures": 0, "features": 2}, {"dfeatures"}),
        _case("dafl_entropy_forward", [("probs", _f(rng, N, C)), ("mean_probs", _f(rng, C)),
                                       ("logits", _f(rng, N, C))], [], {"probs", "mean_probs"}),
        KernelCase("dafl_entropy_backward", [_f(rng, N, C), 0.5, probs.copy(), pbar.copy()],
                   {"dlogits": 0, "probs": 2, "mean_probs": 3}, {"dlogits"}),
        _case("tv_forward", [("norms", _f(rng, 4)), ("x", _f(rng, n, ch, h, w))], [], {"norms"}, any_shape={"x"}),
        KernelCase("tv_backward", [_f(rng, n, ch, h, w), 0.3, 0.7, _f(rng, n, ch, h, w), _positive(rng, 4)],
                   {"dx": 0, "x": 3, "norms": 4}, {"dx"}),
    ]


def _lifelong_cases(rng: np.random.Generator) -> list[KernelCase]:
    """Adapt-inf's per-example LoRA gradients (E = 2 examples over the N rows) and the k-means steps (K = 3)."""
    k = 3
    return [
        _case("lora_per_example_grad", [("dlora_A", _f(rng, 2, R, IC)), ("dlora_B", _f(rng, 2, OC, R)),
                                        ("work", _f(rng, 2 * N * R)), ("x", _f(rng, N, IC)), ("dy", _f(rng, N, OC)),
                                        ("lora_A", _f(rng, R, IC)), ("lora_B", _f(rng, OC, R)),
                                        ("offsets", np.array([0, 2, N], dtype=np.int64))], [0.5],
              {"dlora_A", "dlora_B", "work"}, any_shape={"work"}),
        _case("kmeans_assign", [("labels", np.zeros(N, dtype=np.int64)), ("dist", _f(rng, N)),
                                ("work", _f(rng, N * k + k)), ("x", _f(rng, N, IC)), ("centroids", _f(rng, k, IC))],
              [], {"labels", "dist", "work"}, any_shape={"work"}, any_rows={"centroids"}),  # any number of clusters
        _case("kmeans_update", [("centroids", _f(rng, k, IC)), ("counts", np.zeros(k, dtype=np.int64)),
                                ("x", _f(rng, N, IC)), ("labels", np.array([0, 2, 1, 0, 2], dtype=np.int64))], [],
              {"centroids", "counts"}),
    ]


# functions of peftc._C that take only sizes, no arrays (and the bf16 path query and peak loop): not kernels, so
# no case
SIZE_QUERIES = {"bf16_linear_workspace_size", "bf16_cpu_paths", "bf16_dot_peak", "lora_backward_workspace_size", "lora_mixed_workspace_size", "conv2d_workspace_size", "attention_forward_workspace_size",
                "attention_backward_workspace_size", "bone_backward_workspace_size", "sora_forward_workspace_size",
                "sora_backward_workspace_size", "hydra_backward_workspace_size", "hydra_merge_workspace_size", "ipca_workspace_size",
                "attention_packed_forward_workspace_size", "attention_packed_backward_workspace_size",
                "attention_cached_forward_workspace_size", "lora_per_example_grad_workspace_size",
                "kmeans_assign_workspace_size"}
# the BLAS thread settings take no arrays; their boundary cases are in test_blas_threads.py
BLAS_SETTINGS = {"blas_get_threads", "blas_set_threads", "sgemm_threads", "sgemm_single_thread_count", "sgemm_profile",
                 "sgemm_profile_read"}
CASE_NAMES = sorted(make_cases())


def array_params() -> list[tuple[str, str]]:
    """(function, array argument) for every array argument of every case."""
    return [(fn, name) for fn, case in sorted(make_cases().items()) for name in case.names]


def output_params() -> list[tuple[str, str]]:
    return [(fn, name) for fn, case in sorted(make_cases().items()) for name in sorted(case.outputs)]


# Cases a check does not apply to are left out at parametrisation, not skipped at run time, so that the
# skips the suite reports are only the real ones (a missing oracle, a missing data package).
_CASES = make_cases()
SIZED_PARAMS = [(fn, name) for fn, name in array_params() if name not in _CASES[fn].any_shape]
RANKED_PARAMS = [(fn, name) for fn, name in array_params() if name not in _CASES[fn].any_shape or name == "work"]
LAYOUT_PARAMS = [(fn, name, layout) for fn, name in array_params() for layout in ("strided", "misaligned", "fortran")
                 if layout != "fortran" or _CASES[fn].arrays()[name].ndim >= 2]  # 1-D: both C and Fortran ordered
ALIASING_PARAMS = [(fn, name) for fn, name in output_params() if len(_CASES[fn].names) > 1]
