"""Token sampling in fp32, one seeded generator per request.

Guarantee: a request with the same prompt, parameters and seed, run in a batch of the same
composition, yields the same tokens. Each request draws only from its own generator, so the
random stream never depends on its neighbours; what can still change with the neighbours is the
logits themselves (the matmul reduction order depends on batch shape), which the engine benchmark
measures for greedy decoding; `EngineConfig(deterministic=True)` fixes the logits too. Everything here
works on one row at a time, so a row's token never depends on the other rows: `apply_penalties` works
on the whole batch at once, but each row's result reads only that row and its own sample's tokens.

Order for one row: the grammar mask (structured.py), then the penalties and the n-gram bans
(`apply_penalties`, only for rows that ask for one: other rows are not touched, so their bits are
today's), then temperature, top-k and top-p (`sample_row`). The n samples of a request (n > 1) each
have their own generator, seeded by `port.sample_seed(seed, i)`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from simulacra.inference.port import SamplingParams

Ngrams = dict[tuple[int, ...], set[int]]  # the first N-1 tokens of banned N-grams -> their last tokens

NUCLEUS_PROBE = 256  # candidates ranked before falling back to a full sort (filter_logits)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A request's own random stream, on the device its logits live on (torch samples there)."""
    return torch.Generator(device=device).manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Mask (to -inf) everything outside the top-k and the top-p nucleus of one fp32 row."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        probs = torch.softmax(logits, dim=-1)
        # The nucleus is nearly always inside the top few hundred tokens (a grammar mask or a peaked
        # distribution): rank those only, and sort the whole vocabulary (~5 ms for 49k) only when
        # they do not hold top_p of the mass. Same tokens kept either way.
        top, order = torch.topk(probs, min(NUCLEUS_PROBE, probs.shape[-1]))
        if float(top.sum()) < top_p:
            top, order = torch.sort(probs, descending=True)
        # keep a token while the mass before it is below top_p (the first token always stays)
        keep = order[(top.cumsum(-1) - top) < top_p]
        out = torch.full_like(logits, float("-inf"))
        out[keep] = logits[keep]
        return out
    return logits


def sample_row(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from one fp32 logits row (already masked by any grammar)."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def ngram_table(token_lists: Iterable[list[int]], size: int, into: Ngrams | None = None) -> Ngrams:
    """Every `size`-gram of `token_lists`, as (first size-1 tokens) -> {last tokens}."""
    table: Ngrams = {} if into is None else into
    for tokens in token_lists:
        for i in range(len(tokens) - size + 1):
            table.setdefault(tuple(tokens[i : i + size - 1]), set()).add(tokens[i + size - 1])
    return table


class NgramBans:
    """The no-repeat rule of one sample: no N-gram of the request's texts or of its own output is written again.

    At each step the output's last N-1 tokens are looked up (N = 1: the empty prefix, which bans every
    token seen); until the output holds N-1 tokens, nothing is banned. The prompt is not searched: it
    usually holds names and formats the output should repeat. `texts` is the request's table
    (`ngram_table` of its tokenised `no_repeat_texts`), shared read-only by its samples.
    """

    def __init__(self, size: int, texts: Ngrams) -> None:
        self.size, self.texts = size, texts
        self.own: Ngrams = {}
        self.indexed = 0  # output tokens whose N-grams are in `own`

    def banned(self, output: list[int]) -> set[int]:
        """Tokens that would complete a banned N-gram after `output`."""
        n = self.size
        if len(output) > self.indexed:  # index the N-grams the new tokens ended
            ngram_table([output[max(self.indexed - n + 1, 0) :]], n, self.own)
            self.indexed = len(output)
        if len(output) < n - 1:
            return set()
        key = tuple(output[len(output) - n + 1 :])
        return self.texts.get(key, set()) | self.own.get(key, set())


class Penalties:
    """One sample's penalty state: token counts kept up to date from its sequence's token lists.

    Holds the sequence's own `prompt_ids` and `output_ids` (lists that grow in place) and counts only
    the tokens added since the last step, so a step costs O(new tokens), not O(context).
    """

    def __init__(self, params: SamplingParams, prompt_ids: list[int], output_ids: list[int], texts: Ngrams) -> None:
        self.params, self.prompt_ids, self.output_ids = params, prompt_ids, output_ids
        size = params.no_repeat_ngram_size
        self.ngrams = NgramBans(size, texts) if size else None
        self.counts: Tensor | None = None  # [V] fp32: occurrences in the output
        self.seen: Tensor | None = None  # [V] bool: in the prompt or the output
        self.counted = 0  # output tokens already in `counts` and `seen`

    def update(self, vocab: int, device: torch.device) -> None:
        if self.counts is None:
            self.counts = torch.zeros(vocab, device=device)
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.seen[torch.tensor(self.prompt_ids, dtype=torch.long, device=device)] = True
        new = self.output_ids[self.counted :]
        if new:
            idx = torch.tensor(new, dtype=torch.long, device=device)
            self.counts.index_put_((idx,), torch.ones(len(new), device=device), accumulate=True)
            self.seen[idx] = True  # type: ignore[index]
            self.counted = len(self.output_ids)


def apply_penalties(logits: Tensor, rows: list[int], states: list[Penalties]) -> None:
    """Penalise, then ban, rows `rows` of fp32 `logits` [B, V] in place (`states[k]` is row `rows[k]`'s).

    presence/frequency: logit -= presence * (count > 0) + frequency * count over the sample's output;
    repetition p, over its prompt and output: logit / p where positive, logit * p elsewhere (HF, vLLM);
    then every token a no-repeat N-gram bans gets -inf. A ban never empties a row: when it would
    leave no token (the grammar allowed only banned ones), that row keeps its unbanned logits this
    step, so the grammar's allowed set wins. Zero penalties leave a row's bits as they were
    (x - 0 and x / 1 are exact), so one batch can mix rows with and without them.
    """
    device = logits.device
    for st in states:
        st.update(logits.shape[-1], device)
    idx = torch.tensor(rows, dtype=torch.long, device=device)
    sub = logits.index_select(0, idx)

    def column(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=sub.dtype, device=device)[:, None]

    if any(st.params.presence_penalty or st.params.frequency_penalty for st in states):
        counts = torch.stack([st.counts for st in states])  # type: ignore[misc]
        presence = column([st.params.presence_penalty for st in states])
        frequency = column([st.params.frequency_penalty for st in states])
        sub -= presence * (counts > 0) + frequency * counts
    if any(st.params.repetition_penalty != 1.0 for st in states):
        seen = torch.stack([st.seen for st in states])  # type: ignore[misc]
        p = column([st.params.repetition_penalty for st in states])
        sub = torch.where(seen, torch.where(sub > 0, sub / p, sub * p), sub)
    ban_rows: list[int] = []
    ban_tokens: list[int] = []
    for k, st in enumerate(states):
        if st.ngrams is not None:
            banned = sorted(st.ngrams.banned(st.output_ids))
            ban_rows += [k] * len(banned)
            ban_tokens += banned
    if ban_tokens:
        r = torch.tensor(ban_rows, dtype=torch.long, device=device)
        t = torch.tensor(ban_tokens, dtype=torch.long, device=device)
        kept = sub[r, t]
        sub[r, t] = float("-inf")
        emptied = ~torch.isfinite(sub).any(-1)
        if bool(emptied.any()):
            back = emptied[r]
            sub[r[back], t[back]] = kept[back]
    logits[idx] = sub
