"""Split each dense SwiGLU FFN into E experts and fit a router for it (MoEfication).

A SwiGLU FFN is a sum over its I neurons: ffn(x) = sum_i silu(g_i.x) (u_i.x) d_i. Partition the
neurons into E equal groups and each group is an expert (rows of gate/up, columns of down); the sum
of all experts is the dense FFN exactly, so the only approximation is which experts a token skips.
The partition should put neurons that fire together in one expert (then a token's output is
concentrated in few experts), and the router should predict, from the FFN input, which experts
matter most for this token.

Combining weights: Mixtral's router (softmax over all experts, top-k, renormalise over the k) can
only give weights that sum to 1, while the dense sum needs each selected expert at weight 1. So the
down projections are multiplied by K and the router logits are scaled so small (`spread`) that the
renormalised weights are 1/K up to a factor e^±spread: K * w ≈ 1 for every selected expert. The
ranking is unchanged by the scale, so the top-k is the fitted router's. With K = E and a zero router
the MoE is the dense model (`test_moefy.py` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from simulacra.inference.config import ModelConfig
from simulacra.inference.model import MLP, Transformer

METHODS = ("coact", "weights")


class MoefyError(ValueError):
    """A request `moefy` cannot satisfy; the message says what to change."""


@dataclass
class LayerSplit:
    order: Tensor  # [I] neuron ids grouped by expert: expert e is order[e * m : (e + 1) * m]
    router: Tensor  # [E, H] fp32 router weights, before the `scale` that flattens the weights
    scale: float  # router logits = scale * router @ x: their spread over experts is at most ~`spread`
    oracle_mass: dict[int, float] = field(default_factory=dict)  # K -> share of |act| in the best K experts
    router_recall: dict[int, float] = field(default_factory=dict)  # K -> share of oracle top-K the router picks


@dataclass
class MoePlan:
    n_experts: int
    method: str
    layers: list[LayerSplit]

    @property
    def expert_size(self) -> int:
        return self.layers[0].order.numel() // self.n_experts


def check_request(cfg: ModelConfig, n_experts: int, top_k: int) -> None:
    """Refuse, with a fix, what cannot be split: a non-Llama FFN, E not dividing I, K outside 1..E."""
    if cfg.family not in ("llama",) or cfg.is_moe or cfg.attn_bias or cfg.qk_norm:
        raise MoefyError(
            f"moefy needs a dense Llama-family model (SwiGLU FFN, no attention bias or q/k norm); "
            f"this one is {cfg.family}{' (already MoE)' if cfg.is_moe else ''}"
        )
    if n_experts < 2:
        raise MoefyError(f"--experts must be at least 2, got {n_experts}")
    if cfg.intermediate_size % n_experts:
        divisors = [e for e in range(2, 65) if cfg.intermediate_size % e == 0]
        raise MoefyError(
            f"--experts {n_experts} does not divide the FFN width {cfg.intermediate_size}; "
            f"choose one of {', '.join(map(str, divisors[:12]))}"
        )
    if not 1 <= top_k <= n_experts:
        raise MoefyError(f"--top-k must be between 1 and --experts ({n_experts}), got {top_k}")


def ffn_weights(mlp: MLP) -> tuple[Tensor, Tensor, Tensor]:
    """(gate [I, H], up [I, H], down [H, I]) of a dense layer, fp32."""
    gate, up = mlp.gate_up.weight.float().chunk(2, dim=0)
    return gate, up, mlp.down.weight.float()


def activations(mlp: MLP, x: Tensor) -> Tensor:
    """Per-neuron activations silu(g.x) * (u.x), [N, I] fp32."""
    gate, up = (x.float() @ mlp.gate_up.weight.float().T).chunk(2, dim=-1)
    return F.silu(gate) * up


def balanced_kmeans(points: Tensor, k: int, iters: int = 20, seed: int = 0) -> Tensor:
    """Equal-size clusters of the rows of `points` (unit vectors): labels [n].

    Lloyd iterations whose assignment step fills clusters greedily, best (point, centre) pairs
    first, each cluster up to n / k points; centres start from k-means++ seeding. For unit points the
    squared distance to a centre c is 1 - 2 p.c + |c|^2, so one matmul gives every distance."""
    n = points.shape[0]
    size = n // k
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=gen))
    c = points[first : first + 1]
    d = (2 - 2 * points @ c[0]).clamp(min=0)
    for _ in range(1, k):
        nxt = int(torch.multinomial(d + 1e-12, 1, generator=gen))
        c = torch.cat((c, points[nxt : nxt + 1]))
        d = torch.minimum(d, (2 - 2 * points @ c[-1]).clamp(min=0))
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        cost = (c * c).sum(1)[None, :] - 2 * points @ c.T  # [n, k]
        new = _balanced_assign(cost, size)
        if torch.equal(new, labels):
            break
        labels = new
        onehot = F.one_hot(labels, k).to(points.dtype)
        c = (onehot.T @ points) / size
    return labels


def _balanced_assign(cost: Tensor, size: int) -> Tensor:
    n, k = cost.shape
    flat = torch.argsort(cost.reshape(-1)).tolist()
    labels = [-1] * n
    room = [size] * k
    left = n
    for f in flat:
        i, j = divmod(f, k)
        if labels[i] < 0 and room[j]:
            labels[i], room[j], left = j, room[j] - 1, left - 1
            if not left:
                break
    return torch.tensor(labels)


def neuron_features(
    mlp: MLP, act: Tensor, method: str, max_tokens: int = 4096, top: float = 0.25, seed: int = 0
) -> Tensor:
    """What neurons are clustered on, unit-normalised: their co-activation pattern (over up to
    `max_tokens` captured tokens, whether the neuron is in that token's top `top` share by |act|, as
    MoEfication's co-activation graph), or their gate and up rows.

    The indicator beat raw |act| (which a few large tokens dominate) on the layers tried (3, 15, 27): SmolLM2
    layer 15, E=8, share of |act| in a token's best 2 / 4 experts: indicator 42% / 65%, |act| 34% / 60%,
    weights 33% / 58%, random split 28% / 53%."""
    if method == "coact":
        if act.shape[0] > max_tokens:
            gen = torch.Generator().manual_seed(seed)
            act = act[torch.randperm(act.shape[0], generator=gen)[:max_tokens]]
        a = act.abs()
        feats = (a >= a.quantile(1 - top, dim=1, keepdim=True)).float().T  # [I, T]
    elif method == "weights":
        gate, up, _ = ffn_weights(mlp)
        feats = torch.cat((gate, up), dim=1)
    else:
        raise MoefyError(f"unknown clustering method {method!r}; use one of {', '.join(METHODS)}")
    return F.normalize(feats, dim=1).contiguous()


def expert_contributions(act: Tensor, down: Tensor, order: Tensor, n_experts: int) -> Tensor:
    """||sum_{i in e} act_i d_i|| per token and expert: [N, E], what the router must rank."""
    m = order.numel() // n_experts
    out = []
    for e in range(n_experts):
        idx = order[e * m : (e + 1) * m]
        out.append((act[:, idx] @ down[:, idx].T).norm(dim=1))
    return torch.stack(out, dim=1)


def fit_router(x: Tensor, target: Tensor, ridge: float = 1e-3, log: bool = True) -> Tensor:
    """Least squares from FFN inputs [N, H] to per-token-centred scores [N, E]; weights [E, H].

    Only the order of a token's scores matters to top-k, so the fit is to log output norms (a few
    tokens with huge norms would otherwise decide the fit) with each token's mean removed (a linear
    router has no bias to absorb it); the solution's rows then sum to zero as well."""
    y = target.double()
    if log:
        y = (y + 1e-6 * y.mean()).log()
    x64, y = x.double(), y - y.mean(dim=1, keepdim=True)
    gram = x64.T @ x64
    gram += torch.eye(gram.shape[0], dtype=gram.dtype) * ridge * gram.diagonal().mean()
    return torch.linalg.solve(gram, x64.T @ y).T.float()


def split_layer(
    mlp: MLP, x: Tensor, n_experts: int, method: str, spread: float, ks: tuple[int, ...], seed: int = 0
) -> LayerSplit:
    """Cluster one layer's neurons into experts and fit its router on the captured inputs `x`."""
    act = activations(mlp, x)
    labels = balanced_kmeans(neuron_features(mlp, act, method, seed=seed), n_experts, seed=seed)
    order = torch.cat([torch.nonzero(labels == e).flatten() for e in range(n_experts)])
    _, _, down = ffn_weights(mlp)
    target = expert_contributions(act, down, order, n_experts)
    router = fit_router(x.float(), target)
    scores = x.float() @ router.T
    rng = (scores.max(dim=1).values - scores.min(dim=1).values).max().item()
    split = LayerSplit(order, router, spread / rng if rng > 0 else 1.0)
    m = order.numel() // n_experts
    mass = act.abs()[:, order].reshape(act.shape[0], n_experts, m).sum(-1)
    for k in ks:
        if k < n_experts:
            best = target.topk(k, dim=1).indices
            picked = scores.topk(k, dim=1).indices
            split.oracle_mass[k] = (mass.topk(k, dim=1).values.sum(1) / mass.sum(1)).mean().item()
            hits = (best[:, :, None] == picked[:, None, :]).any(-1).float().mean().item()
            split.router_recall[k] = hits
    return split


def plan_moe(
    model: Transformer,
    inputs: list[Tensor],
    n_experts: int,
    method: str = "coact",
    spread: float = 0.05,
    ks: tuple[int, ...] = (2, 4, 6),
    seed: int = 0,
) -> MoePlan:
    """Split every layer of a dense `model`; `inputs[l]` are layer l's captured FFN inputs [N, H]."""
    layers = []
    for i, block in enumerate(model.layers):
        if not isinstance(block.ffn, MLP):
            raise MoefyError(f"layer {i} is not a dense SwiGLU FFN")
        layers.append(split_layer(block.ffn, inputs[i], n_experts, method, spread, ks, seed=seed + i))
    return MoePlan(n_experts, method, layers)


def uniform_plan(model: Transformer, n_experts: int) -> MoePlan:
    """Neurons in their own order and a zero router: with K = E the MoE is the dense model exactly."""
    cfg = model.cfg
    layers = [
        LayerSplit(torch.arange(cfg.intermediate_size), torch.zeros(n_experts, cfg.hidden_size), 1.0)
        for _ in range(cfg.n_layers)
    ]
    return MoePlan(n_experts, "uniform", layers)


def moe_config(cfg: ModelConfig, n_experts: int, top_k: int) -> ModelConfig:
    """The dense config as a Mixtral: E experts of I/E neurons, top-k renormalised routing."""
    m = cfg.intermediate_size // n_experts
    return replace(
        cfg,
        family="mixtral",
        intermediate_size=m,
        n_experts=n_experts,
        n_experts_per_tok=top_k,
        moe_intermediate_size=m,
        norm_topk_prob=True,
        router_mode="softmax_topk",
        moe_layers=[True] * cfg.n_layers,
    )


@torch.no_grad()
def build_moe(dense: Transformer, plan: MoePlan, top_k: int) -> Transformer:
    """The MoE `Transformer` (fp32) of `plan` at `top_k`; attention, norms and embeddings are the dense
    model's own tensors, copied."""
    cfg = moe_config(dense.cfg, plan.n_experts, top_k)
    e, m = plan.n_experts, cfg.moe_intermediate_size
    state = {k: v.float().clone() for k, v in dense.state_dict().items() if ".ffn." not in k}
    for i, split in enumerate(plan.layers):
        gate, up, down = ffn_weights(dense.layers[i].ffn)
        idx = split.order.reshape(e, m)
        state[f"layers.{i}.ffn.router.weight"] = (split.router * split.scale).float().contiguous()
        state[f"layers.{i}.ffn.gate_up"] = torch.cat((gate[idx], up[idx]), dim=1).contiguous()
        state[f"layers.{i}.ffn.down"] = (down[:, idx].permute(1, 0, 2) * top_k).contiguous()
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        moe = Transformer(cfg)
    moe.load_state_dict(state, strict=not cfg.tie_embeddings, assign=True)
    moe.tie_weights()
    moe.inv_freq, moe.rope_scale = dense.inv_freq.clone(), dense.rope_scale
    return moe.eval().requires_grad_(False)


def set_top_k(moe: Transformer, top_k: int) -> None:
    """Change a built MoE's K in place (down projections rescaled so the weights stay ~1)."""
    old = moe.cfg.n_experts_per_tok
    moe.cfg.n_experts_per_tok = top_k
    for block in moe.layers:
        block.ffn.k = top_k
        block.ffn.down.data.mul_(top_k / old)


def summary(plan: MoePlan) -> dict[str, dict[int, float]]:
    """Mean over layers of the oracle mass and router recall per K."""
    out: dict[str, dict[int, float]] = {"oracle_mass": {}, "router_recall": {}}
    for key in out:
        ks = sorted({k for s in plan.layers for k in getattr(s, key)})
        out[key] = {k: sum(getattr(s, key)[k] for s in plan.layers) / len(plan.layers) for k in ks}
    return out


__all__ = [
    "METHODS",
    "LayerSplit",
    "MoePlan",
    "MoefyError",
    "activations",
    "balanced_kmeans",
    "build_moe",
    "check_request",
    "moe_config",
    "plan_moe",
    "set_top_k",
    "split_layer",
    "summary",
    "uniform_plan",
]
