"""What differs between OpenAI-compatible servers, in one table: how the port's request fields are sent.

Why: "OpenAI-compatible" covers the two message shapes and little else. Beyond them every server
reads `top_k`, seeds, `n`, penalties and structured output its own way, and most of them ignore
a field they do not know without a word, so a request sent as if to vLLM can be answered by
llama.cpp with its own defaults (top-k 40, min-p 0.05) and no constraint the caller asked for.
`OpenAIHTTPBackend` asks one `Dialect` how to write each field; nothing else in the client knows
which server it talks to. `DIALECTS` is the table, `detect` picks a row from `GET /v1/models`
(`owned_by`) and the `Server` header; docs/ARCHITECTURE.md ("Servers nobody here wrote") has it
as a table with the reasons.

A field a server cannot take is never sent as if it could: `request_fields` returns it as
*unsupported* and the backend either leaves it out with a warning (counted in its stats) or
refuses the request with a `RequestError` naming the field and the server, as configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from simulacra.inference.port import SamplingParams, Schema, schema_json, schema_name

__all__ = ["DIALECTS", "GENERIC", "Dialect", "detect", "dialect_named", "forbid_extra_keys", "request_fields"]

Support = Literal["native", "approximate", "unsupported"]


@dataclass(frozen=True)
class Dialect:
    """How one kind of server takes the port's sampling fields and reports usage.

    `top_k`: "when_set" sends `top_k` only when > 0 (the server's default is off); "always" sends it,
    0 meaning off (the server's default is not off); "unsupported". `seed_bits`: the seed's width
    (llama.cpp's is a uint32 whose all-ones value means "random"). `n`: "native", or "first_usage"
    (the server answers n choices but its usage counts choice 0's tokens only, so the others are
    counted with `tokenize_path`). `repetition_penalty`: the field's name, or None if unsupported;
    `repetition_extra`: fields that make its window the port's (the whole prompt and output).
    `presence_frequency`: "approximate" where the server counts other tokens than the sample's own.
    `no_repeat`: whether `no_repeat_ngram_size`/`no_repeat_texts` are read. `defaults`: sent with
    every request, the server's defaults that differ from the port's. `server_timings`: the
    answer's `timings` object (llama.cpp) is read into `GenerateResult.timings`.
    """

    name: str
    top_k: Literal["when_set", "always", "unsupported"] = "when_set"
    seed_bits: int = 64
    n: Literal["native", "first_usage"] = "native"
    repetition_penalty: str | None = "repetition_penalty"
    repetition_extra: Mapping[str, Any] = field(default_factory=dict)
    presence_frequency: Support = "native"
    no_repeat: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    server_timings: bool = False
    tokenize_path: str | None = None  # at the server's root, for "first_usage"
    note: str = ""


# Every server below takes structured output as OpenAI's `response_format: {"type": "json_schema",
# "json_schema": {"name", "schema", "strict"}}` (vLLM's `guided_json` was deprecated in 0.10.2 and removed
# in 0.12; llama.cpp turns the schema into a GBNF grammar), so the schema is sent that way to all of them.
DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect("simulacra", no_repeat=True, note="`simulacra serve`: every field of the port"),
        Dialect("vllm", note="cached tokens only with `--enable-prompt-tokens-details`"),
        Dialect("sglang", note="cached tokens only with `--enable-cache-report`"),
        Dialect(
            "llama.cpp",
            top_k="always",
            seed_bits=32,
            n="first_usage",
            repetition_penalty="repeat_penalty",
            repetition_extra={"repeat_last_n": -1},
            presence_frequency="approximate",
            defaults={
                "min_p": 0.0,  # its default 0.05 would cut tokens the port's sampler keeps
                "samplers": ["penalties", "temperature", "top_k", "top_p"],  # the port's order; its own is T last
            },
            server_timings=True,
            tokenize_path="/tokenize",
            note="`n` at most `--parallel`; presence/frequency count its last 64 tokens, prompt included",
        ),
        Dialect("openai", top_k="unsupported", repetition_penalty=None, note="api.openai.com"),
        Dialect("generic", no_repeat=True, note="an unknown server: every field under vLLM's or our name, as before"),
    )
}
GENERIC = DIALECTS["generic"]

_OWNED_BY = {
    "simulacra": "simulacra",
    "vllm": "vllm",
    "sglang": "sglang",
    "llamacpp": "llama.cpp",
    "llama.cpp": "llama.cpp",
    "openai": "openai",
    "system": "openai",
    "openai-internal": "openai",
}


def dialect_named(name: str | Dialect) -> Dialect:
    """The table's row for `name` (a `Dialect` is returned as it is); ValueError listing the names."""
    if isinstance(name, Dialect):
        return name
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown server dialect {name!r}; one of {', '.join(DIALECTS)} or 'auto'") from None


async def detect(client: httpx.AsyncClient, timeout: float = 10.0) -> tuple[Dialect, str]:
    """The server's dialect and why: `GET /models`' `owned_by`, else its `Server` header, else generic.

    One request, no retries: a server that does not answer it is treated as generic (its first real
    call reports what is wrong with it).
    """
    try:
        response = await client.get("/models", timeout=timeout)
    except (httpx.HTTPError, OSError) as exc:
        return GENERIC, f"GET /models failed ({type(exc).__name__})"
    if "llama.cpp" in response.headers.get("server", "").lower():
        return DIALECTS["llama.cpp"], "Server: llama.cpp"
    owners: list[str] = []
    try:
        data = response.json()
        owners = [str(m.get("owned_by", "")) for m in data.get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        pass
    for owner in owners:
        if owner.lower() in _OWNED_BY:
            return DIALECTS[_OWNED_BY[owner.lower()]], f"owned_by {owner!r}"
    if client.base_url.host == "api.openai.com":
        return DIALECTS["openai"], "api.openai.com"
    return GENERIC, f"owned_by {owners[:1] or 'missing'}: not a server in the table"


def request_fields(d: Dialect, params: SamplingParams, schema: Schema) -> tuple[dict[str, Any], list[str]]:
    """The body fields for `params` and `schema` beyond model/prompt/max_tokens/temperature/top_p/stop,
    and the port fields this server cannot take (set, but left out of the body)."""
    body: dict[str, Any] = dict(d.defaults)
    unsupported: list[str] = []
    if d.top_k == "always" or (params.top_k and d.top_k == "when_set"):
        body["top_k"] = params.top_k
    elif params.top_k:
        unsupported.append("top_k")
    if params.seed is not None:
        seed = params.seed
        if d.seed_bits < 64:  # the low bits, which are also all torch's CPU generator reads
            seed &= (1 << d.seed_bits) - 1
            if seed == (1 << d.seed_bits) - 1:  # llama.cpp's "random seed": the one below instead
                seed -= 1
        body["seed"] = seed
    if params.n != 1:
        body["n"] = params.n
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(params, name):
            if d.presence_frequency == "unsupported":
                unsupported.append(name)
            else:
                body[name] = getattr(params, name)
    if params.repetition_penalty != 1.0:
        if d.repetition_penalty is None:
            unsupported.append("repetition_penalty")
        else:
            body[d.repetition_penalty] = params.repetition_penalty
            body.update(d.repetition_extra)
    if params.no_repeat_ngram_size:
        if d.no_repeat:
            body["no_repeat_ngram_size"] = params.no_repeat_ngram_size
            if params.no_repeat_texts:
                body["no_repeat_texts"] = list(params.no_repeat_texts)
        else:
            unsupported.append("no_repeat_ngram_size")
    if schema is not None:
        name = schema_name(schema) or "output"
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64]
        spec = schema_json(schema)
        if isinstance(schema, type):  # a pydantic model: no invented keys, as the local engine compiles it
            spec = forbid_extra_keys(spec)
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": spec, "strict": True}}
    return body, unsupported


def server_timings(d: Dialect, data: Mapping[str, Any]) -> dict[str, float]:
    """The server's own timings of one answer, in seconds (llama.cpp's `timings`), for the call record."""
    t = data.get("timings") if d.server_timings else None
    if not isinstance(t, dict):
        return {}
    out = {}
    for key, name in (("prompt_ms", "server_prompt_s"), ("predicted_ms", "server_decode_s")):
        if isinstance(t.get(key), int | float):
            out[name] = float(t[key]) / 1000.0
    return out


def cached_tokens(usage: Mapping[str, Any], data: Mapping[str, Any]) -> int:
    """Prompt tokens the server took from its cache: OpenAI's `prompt_tokens_details.cached_tokens`,
    else llama.cpp's `timings.cache_n`."""
    details = usage.get("prompt_tokens_details") or {}
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        return int(details["cached_tokens"])
    t = data.get("timings")
    return int(t.get("cache_n") or 0) if isinstance(t, dict) else 0


def forbid_extra_keys(schema: Any) -> Any:
    """A copy where each object schema with properties and no `additionalProperties` gets `false`.

    Mirrors what the engine does to pydantic schemas (pydantic ignores unknown keys anyway), and is
    what OpenAI's strict mode requires.
    """
    if isinstance(schema, dict):
        out = {k: forbid_extra_keys(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [forbid_extra_keys(v) for v in schema]
    return schema
