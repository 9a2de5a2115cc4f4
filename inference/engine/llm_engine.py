"""The shared local engine behind the `LLM` port.

Any number of coroutines `await engine.generate(...)`; each request becomes a `Sequence` handed to a
background worker thread, which runs scheduler steps as long as there is work: every step is one
forward pass over all running requests (prefill chunks and decodes together). Results and stream
deltas go back to the caller's event loop thread-safely, so the event loop (viewer, server) stays
responsive while the model computes. A request for n > 1 samples is n sequences over one prompt:
the prefix cache computes the prompt's full blocks once and the samples share them (ref counts),
each with its own generator (`port.sample_seed`) and, under a schema, its own grammar matcher.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simulacra.inference.engine.block_manager import BlockManager
from simulacra.inference.engine.paged_kv import PagedKV
from simulacra.inference.engine.runner import ModelRunner
from simulacra.inference.engine.sampling import Penalties, apply_penalties, make_generator, ngram_table, sample_row
from simulacra.inference.engine.scheduler import Chunk, Scheduler
from simulacra.inference.engine.sequence import Sequence
from simulacra.inference.loader import LoadedModel, load_model, resolve_device
from simulacra.inference.port import (
    GenerateResult,
    Prompt,
    RequestError,
    SamplingParams,
    Schema,
    StreamEvent,
    merge_samples,
    sample_seed,
)

logger = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    block_size: int = 16
    kv_cache_gb: float = 1.0
    max_num_seqs: int = 128
    max_batched_tokens: int = 2048  # per step: bounds prefill chunk size and step latency
    seed: int = 0  # seeds requests that bring none, in arrival order
    # where the model, KV cache and sampling run: "auto" = CUDA when torch sees a GPU, else CPU (for a
    # model given already loaded: where it is), or "cpu" / "cuda" / "cuda:N"
    device: str = "auto"
    # a request's tokens bit-identical whatever else is batched, however its prompt is chunked, whether
    # its prefix is cached: batch-invariant kernels (docs/ARCHITECTURE.md), CPU only, slower
    deterministic: bool = False


def _loaded_device(lm: LoadedModel, wanted: str) -> torch.device:
    """The device of an already loaded model; an explicit `wanted` device must be that one."""
    device = lm.model.embed.weight.device
    if wanted == "auto":
        return device
    target = torch.device(resolve_device(wanted))
    if target.type != device.type or target.index not in (None, device.index):
        raise ValueError(
            f"the model is loaded on {device} but EngineConfig.device is {wanted!r}: load it with "
            f"load_model(..., device={wanted!r}), or pass the path instead, or leave device='auto'"
        )
    return device


class Counters:
    """Running totals for progress displays, the viewer and benchmarks."""

    def __init__(self) -> None:
        self.requests = self.finished = self.steps = 0
        self.batch_tokens = self.batch_seqs = 0
        self.peak_batch_seqs = 0  # largest batch so far; callers may reset it to measure a window
        self.prompt_tokens = self.prefill_tokens = self.decode_tokens = 0
        self.step_seconds = self.mask_seconds = 0.0
        self.close_seconds = 0.0  # keeping constrained values closable within max_tokens (structured.py)
        self.started = time.perf_counter()

    def as_dict(self, running: int, waiting: int, preemptions: int, cached_tokens: int) -> dict[str, float]:
        steps = max(self.steps, 1)
        return {
            "requests": self.requests,
            "finished": self.finished,
            "running": running,
            "waiting": waiting,
            "steps": self.steps,
            "mean_batch_seqs": self.batch_seqs / steps,
            "peak_batch_seqs": self.peak_batch_seqs,
            "mean_batch_tokens": self.batch_tokens / steps,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": cached_tokens,
            "prefill_tokens": self.prefill_tokens,
            "decode_tokens": self.decode_tokens,
            "cache_hit_rate": cached_tokens / max(self.prompt_tokens, 1),
            "tokens_per_s": (self.prefill_tokens + self.decode_tokens) / max(self.step_seconds, 1e-9),
            "decode_tokens_per_s": self.decode_tokens / max(self.step_seconds, 1e-9),
            "step_seconds": self.step_seconds,
            "mask_seconds": self.mask_seconds,
            "close_seconds": self.close_seconds,
            "preemptions": preemptions,
        }


def _check_text(prompt: Prompt, stop: list[str], no_repeat: Iterable[str] = ()) -> None:
    """RequestError naming the first prompt text, stop string or no-repeat text that is not valid Unicode (a lone
    surrogate, which JSON can carry as `"\\ud800"` but no tokenizer can encode)."""
    texts: list[tuple[str, Any]] = [("prompt", prompt)] if isinstance(prompt, str) else []
    if isinstance(prompt, list):
        for i, m in enumerate(prompt):
            if isinstance(m, dict):
                texts += [(f"messages[{i}].{k}", v) for k, v in m.items()]
    texts += [(f"stop[{i}]", s) for i, s in enumerate(stop)]
    texts += [(f"no_repeat_texts[{i}]", s) for i, s in enumerate(no_repeat)]
    for param, text in texts:
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(
                f"{param} is not valid Unicode: it holds a lone surrogate (U+{ord(text[exc.start]):04X}) at "
                f"character {exc.start}",
                param,
                "invalid_unicode",
            ) from None


class _Request:
    """A request's sequences (one per sample) plus the way back to its caller's event loop."""

    def __init__(self, seqs: list[Sequence], schema: Schema, loop: asyncio.AbstractEventLoop) -> None:
        self.seqs, self.schema, self.loop = seqs, schema, loop
        self.events: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()
        self.sent = [0] * len(seqs)  # characters of each sample's text already streamed
        self.results: list[GenerateResult | None] = [None] * len(seqs)
        self.failed = False  # an error was sent: the request is over for its caller

    @property
    def seq(self) -> Sequence:
        """Sample 0's sequence (the only one when n = 1)."""
        return self.seqs[0]

    def send(self, item: StreamEvent | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Engine:
    def __init__(self, model: LoadedModel | str | Path | None = None, config: EngineConfig | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        if isinstance(model, LoadedModel):
            self.lm = model
            self.device = _loaded_device(model, cfg.device)
        else:
            self.device = torch.device(resolve_device(cfg.device))
            self.lm = load_model(model, device=str(self.device))  # dtype: `loader.default_dtype(device)`
        if cfg.deterministic and self.device.type != "cpu":
            raise ValueError(
                f"EngineConfig.deterministic runs on the CPU only (its attention kernel is numba), not {self.device}"
            )
        mcfg = self.lm.model.cfg
        kv_dtype = PagedKV.cache_dtype(self.lm.model.dtype, str(self.device))
        per_token = PagedKV.bytes_per_token(mcfg.n_layers, mcfg.n_kv_heads, mcfg.head_dim, kv_dtype)
        num_blocks = max(int(cfg.kv_cache_gb * 2**30) // (per_token * cfg.block_size), 2)
        self.blocks = BlockManager(num_blocks, cfg.block_size)
        self.scheduler = Scheduler(self.blocks, cfg.max_num_seqs, cfg.max_batched_tokens)
        self.runner = ModelRunner(self.lm.model, num_blocks, cfg.block_size, cfg.deterministic)
        self.tokenizer = self.lm.tokenizer
        self.context_length = min(mcfg.max_position, num_blocks * cfg.block_size - 1)
        self.counters = Counters()
        self._seed_rng = random.Random(cfg.seed)
        self._grammars: Any = None
        self._inbox: list[_Request] = []
        self._requests: dict[int, _Request] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None

    # ----------------------------------------------------------------- public API

    async def generate(self, prompt: Prompt, *, schema: Schema = None, **sampling: Any) -> GenerateResult:
        result = None
        async for event in self.stream(prompt, schema=schema, **sampling):
            result = event.result
        assert result is not None
        return result

    async def stream(self, prompt: Prompt, *, schema: Schema = None, **sampling: Any) -> AsyncIterator[StreamEvent]:
        request = self._make_request(prompt, schema, sampling)
        self._submit(request)
        try:
            while True:
                item = await request.events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.result is not None:
                    return
        finally:
            if any(seq.finish_reason is None for seq in request.seqs):
                for seq in request.seqs:
                    seq.cancelled = True  # the caller went away: free its blocks at the next step
                self._notify()

    def stats(self) -> dict[str, float]:
        sched = self.scheduler
        return self.counters.as_dict(len(sched.running), len(sched.waiting), sched.preemptions, sched.reused_tokens)

    async def aclose(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join)

    # ----------------------------------------------------------------- requests

    def _grammar_compiler(self) -> Any:
        if self._grammars is None:
            from simulacra.inference.engine.structured import GrammarCompiler

            self._grammars = GrammarCompiler(self.tokenizer, self.lm.model.cfg.vocab_size)
        return self._grammars

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        if prompt and all(isinstance(t, int) for t in prompt):
            if not all(0 <= t < self.lm.model.cfg.vocab_size for t in prompt):
                raise RequestError("token ids must lie in [0, vocab size)", "prompt")
            return list(prompt)
        if not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise RequestError("messages must be a non-empty list of {role, content} objects", "messages")
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(prompt), add_special_tokens=False)

    def _make_request(self, prompt: Prompt, schema: Schema, sampling: dict[str, Any]) -> _Request:
        stop = sampling.pop("stop", None)
        seed = sampling.pop("seed", None)
        sampling["no_repeat_texts"] = list(sampling.get("no_repeat_texts") or [])
        try:
            params = SamplingParams(**sampling, stop=[stop] if isinstance(stop, str) else list(stop or []))
        except TypeError as exc:
            raise RequestError(str(exc)) from exc
        params.validate(self.context_length)
        _check_text(prompt, params.stop, params.no_repeat_texts)
        ids = self.encode(prompt)
        param = "prompt" if isinstance(prompt, str) else "messages"
        if not ids:
            raise RequestError("the prompt is empty", param)
        if len(ids) + params.max_tokens > self.context_length:
            raise RequestError(
                f"the prompt has {len(ids)} tokens and max_tokens is {params.max_tokens}, more than the "
                f"context length of {self.context_length}; shorten the prompt or lower max_tokens",
                param,
                "context_length_exceeded",
            )
        constraints = [
            self._grammar_compiler().matcher(schema) if schema is not None else None for _ in range(params.n)
        ]
        if constraints[0] is not None:
            constraints[0].check_budget(params.max_tokens)  # no value the schema allows fits: refused up front
        texts = ngram_table(
            (self.tokenizer.encode(t, add_special_tokens=False) for t in params.no_repeat_texts),
            params.no_repeat_ngram_size,
        )
        params.seed = seed if seed is not None else self._seed_rng.getrandbits(63)
        seqs = []
        for i, constraint in enumerate(constraints):
            generator = make_generator(sample_seed(params.seed, i), self.device)
            seq = Sequence(ids, params, generator, constraint, index=i)
            if params.penalised:
                seq.penalties = Penalties(params, seq.prompt_ids, seq.output_ids, texts)
            seqs.append(seq)
        return _Request(seqs, schema, asyncio.get_running_loop())

    def _submit(self, request: _Request) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._inbox.append(request)
            self._wake.notify()
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name="simulacra-engine", daemon=True)
            self._worker.start()

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify()

    # ----------------------------------------------------------------- worker thread

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._inbox or self.scheduler.has_work):
                    self._wake.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
            for request in inbox:
                self.counters.requests += 1
                for seq in request.seqs:  # the samples of one prompt, admitted in order: they share its blocks
                    self._requests[seq.id] = request
                    self.scheduler.add(seq)
                    self.counters.prompt_tokens += len(seq.prompt_ids)
            try:
                self.step()
            except Exception as exc:  # a bug in a step fails the requests in flight, not the engine
                logger.exception("engine step failed; failing %d requests", len(self._requests))
                for seq in [*self.scheduler.running, *self.scheduler.waiting]:
                    if seq in self.scheduler.waiting:
                        self.scheduler.waiting.remove(seq)
                    self._fail(seq, exc)
        for request in {id(r): r for r in [*self._requests.values(), *self._inbox]}.values():
            request.send(RuntimeError("the engine was closed before this request finished"))

    @torch.inference_mode()
    def step(self) -> None:
        """One scheduler step: schedule, forward, sample, finish."""
        for seq in self.scheduler.drop_cancelled():
            self._requests.pop(seq.id, None)
        chunks = self.scheduler.schedule()
        if not chunks:
            return
        t0 = time.perf_counter()
        try:
            logits = self.runner.run(chunks)
        except Exception as exc:  # a failed forward fails its requests, never the engine
            for c in chunks:
                self._fail(c.seq, exc)
            return
        counters = self.counters
        for c in chunks:
            c.seq.num_computed += c.num_tokens
            self.blocks.publish(c.seq)
            if c.start >= len(c.seq.prompt_ids):
                counters.decode_tokens += c.num_tokens
            else:
                counters.prefill_tokens += c.num_tokens
        self._sample([c for c in chunks if c.samples], logits)
        counters.steps += 1
        counters.batch_seqs += len(chunks)
        counters.peak_batch_seqs = max(counters.peak_batch_seqs, len(chunks))
        counters.batch_tokens += sum(c.num_tokens for c in chunks)
        counters.step_seconds += time.perf_counter() - t0

    def _sample(self, chunks: list[Chunk], logits: torch.Tensor) -> None:
        # a row whose close the token budget forces needs no mask: its token is the close's
        constraints = [
            None if c.seq.constraint is None or c.seq.constraint.forcing else c.seq.constraint for c in chunks
        ]
        if any(x is not None for x in constraints):
            from simulacra.inference.engine.structured import apply_masks

            seconds = apply_masks(constraints, logits)
            self.counters.mask_seconds += seconds
            n = sum(x is not None for x in constraints)
            for c, x in zip(chunks, constraints, strict=True):
                if x is not None:
                    c.seq.mask_seconds += seconds / n
        # penalties and bans after the grammar's mask (a ban never empties what the grammar allows)
        penalised = [
            (row, c.seq.penalties)
            for row, c in enumerate(chunks)
            if c.seq.penalties is not None and not (c.seq.constraint is not None and c.seq.constraint.forcing)
        ]
        if penalised:
            apply_penalties(logits, [row for row, _ in penalised], [p for _, p in penalised])
        for row, c in enumerate(chunks):
            seq = c.seq
            constraint = seq.constraint
            try:
                if constraint is not None and constraint.forcing:
                    token = constraint.next_forced()
                else:
                    token = sample_row(logits[row], seq.params, seq.generator)
                    if constraint is not None and token not in self.tokenizer.eos_ids:
                        # the budget after this token: if the value could no longer be closed within
                        # it, the constraint refuses the token and starts forcing its close instead
                        spent = constraint.close_seconds
                        token = constraint.accept(token, seq.params.max_tokens - len(seq.output_ids) - 1)
                        self.counters.close_seconds += constraint.close_seconds - spent
                self._append(seq, token)
            except Exception as exc:  # one request's failure must not take the others down
                self._fail(seq, exc)

    def _append(self, seq: Sequence, token: int) -> None:
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        request = self._requests[seq.id]
        reason = None
        forced = seq.constraint is not None and seq.constraint.forcing  # the budget forced the value's end
        if token in self.tokenizer.eos_ids and not seq.params.ignore_eos:
            reason = "length" if forced else "stop"
        else:
            seq.output_ids.append(token)
            seq.text = self.tokenizer.decode(seq.output_ids)
            for s in seq.params.stop:
                cut = seq.text.find(s)
                if cut >= 0:
                    seq.text, reason = seq.text[:cut], "stop"
            if reason is None and forced and seq.constraint.closed:
                reason = "length"
            elif reason is None and seq.constraint is not None and seq.constraint.is_done():
                reason = "stop"
            elif reason is None and (len(seq.output_ids) >= seq.params.max_tokens or len(seq) >= self.context_length):
                reason = "length"
        if reason is None:
            self._stream_delta(request, seq, final=False)
            return
        self.scheduler.finish(seq, reason)
        try:
            request.results[seq.index] = self._result(request, seq)
        except Exception as exc:
            self._fail(seq, exc)
            return
        self._requests.pop(seq.id, None)
        if any(r is None for r in request.results):
            self._stream_delta(request, seq, final=True)  # the rest of this sample; the result comes with the last
            return
        self.counters.finished += 1
        self._stream_delta(request, seq, final=True, result=merge_samples(request.results))  # type: ignore[arg-type]

    def _stream_delta(
        self, request: _Request, seq: Sequence, final: bool, result: GenerateResult | None = None
    ) -> None:
        text, sent = seq.text, request.sent[seq.index]
        end = len(text)
        if not final:
            hold = max((len(s) - 1 for s in seq.params.stop), default=0)  # might start a stop string
            end = max(sent, end - hold)
            if text[sent:end].endswith("\ufffd"):  # an incomplete UTF-8 character
                return
        if end > sent or result is not None:
            request.send(StreamEvent(text[sent:end], result, seq.index))
            request.sent[seq.index] = end

    def _result(self, request: _Request, seq: Sequence) -> GenerateResult:
        """One sample's result."""
        parsed = None
        complete = seq.constraint is not None and seq.constraint.is_accepting()
        if request.schema is not None and (seq.finish_reason == "stop" or complete):
            from simulacra.inference.engine.structured import parse_output

            parsed = parse_output(request.schema, seq.text)  # a value the budget closed parses too
        now = time.perf_counter()
        return GenerateResult(
            text=seq.text,
            parsed=parsed,
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.num_cached,
            finish_reason=seq.finish_reason or "stop",
            timings={
                "first_token_s": (seq.first_token_at or now) - seq.arrived,
                "total_s": now - seq.arrived,
                "mask_s": seq.mask_seconds,
                "close_s": 0.0 if seq.constraint is None else seq.constraint.close_seconds,
            },
        )

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        """Fail `seq`'s whole request, once: its other samples are cancelled (freed at the next step)."""
        self.scheduler.finish(seq, "error")
        request = self._requests.pop(seq.id, None)
        if request is not None and not request.failed:
            request.failed = True
            for other in request.seqs:
                other.cancelled = other.cancelled or other.finish_reason is None
            request.send(exc)
