"""Grammar-constrained output: whatever the logits say, the masked choice parses and validates.

Most tests drive constraints with seeded random logits (a "model" with no preferences), which
walks far stranger paths than a real model; one slow test decodes with the packaged SmolLM2.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable
from typing import Any, Literal

import pytest
import torch
from pydantic import BaseModel, Field

from simulacra.inference.engine.structured import (
    Constraint,
    GrammarCompiler,
    _bias_numpy,
    _bias_torch,
    apply_masks,
    parse_output,
)
from simulacra.inference.loader import load_tokenizer
from simulacra.inference.port import RequestError
from simulacra.inference.tokenizer import Tokenizer


class Mood(enum.StrEnum):
    calm = "calm"
    busy = "busy"


class Place(BaseModel):
    name: Literal["cafe", "park", "home", "town hall"]
    minutes: int = Field(ge=5, le=60)


class Day(BaseModel):
    resident: str = Field(max_length=16)
    mood: Mood
    stops: list[Place] = Field(min_length=1, max_length=3)
    budget: int = Field(ge=-3, le=1000)
    note: str | None = Field(default=None, max_length=8)


RAW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c d"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "ok"],
    "additionalProperties": False,
}

CHOICES = ["cafe", "cafeteria", 'say "hi"', "back\\slash", "new\nline", "café ☕", "a|b", "/x/", "%s{}", ""]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer()


@pytest.fixture(scope="module")
def compiler(tok: Tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tok, tok.vocab_size)


def random_walk(
    compiler: GrammarCompiler,
    schema: Any,
    seed: int,
    max_steps: int = 400,
    check: Callable[[Constraint, torch.Tensor], None] | None = None,
) -> str:
    """Decode with seeded random logits under the constraint until EOS is sampled or the value is done."""
    tok = compiler.tokenizer
    gen = torch.Generator().manual_seed(seed)
    c = compiler.matcher(schema)
    out: list[int] = []
    for _ in range(max_steps):
        logits = torch.randn((1, compiler.vocab_size), generator=gen)
        c.fill_mask(logits[0])
        if check is not None:
            check(c, logits[0])
        t = int(logits[0].argmax())
        assert math.isfinite(float(logits[0, t])), "the mask allowed nothing"
        c.advance(t)
        if t in tok.eos_ids:
            break
        out.append(t)
        if c.is_done():
            break
    else:
        pytest.fail(f"no end after {max_steps} steps: {tok.decode(out)!r}")
    assert c.is_done()
    assert c.mask_seconds > 0
    return tok.decode(out)


def eos_rule(compiler: GrammarCompiler) -> Callable[[Constraint, torch.Tensor], None]:
    """EOS is allowed exactly when the value so far is complete; when done, only EOS is."""
    eos = sorted(compiler.eos_ids)

    def check(c: Constraint, row: torch.Tensor) -> None:
        eos_allowed = bool(torch.isfinite(row[eos]).all())
        assert eos_allowed == c.is_accepting()
        if c.is_done():
            assert set(torch.isfinite(row).nonzero().flatten().tolist()) == set(eos)
        assert not torch.isfinite(row[sorted(compiler.tokenizer.special_ids - set(eos))]).any()

    return check


@pytest.mark.parametrize("seed", range(12))
def test_pydantic_random_walks_validate(compiler: GrammarCompiler, seed: int) -> None:
    text = random_walk(compiler, Day, seed, check=eos_rule(compiler))
    day = parse_output(Day, text)
    assert isinstance(day, Day) and 1 <= len(day.stops) <= 3
    assert text.startswith('{"resident": "')  # the one fixed layout: json.dumps separators, no whitespace runs
    assert "\n" not in text.replace("\\n", "")


@pytest.mark.parametrize("seed", range(12))
def test_raw_json_schema_random_walks_parse(compiler: GrammarCompiler, seed: int) -> None:
    value = parse_output(RAW_SCHEMA, random_walk(compiler, RAW_SCHEMA, seed, check=eos_rule(compiler)))
    assert set(value) <= {"name", "age", "tags", "ok"} and {"name", "age", "ok"} <= set(value)
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 120
    assert isinstance(value["ok"], bool)
    assert set(value.get("tags", [])) <= {"a", "b", "c d"} and len(value.get("tags", [])) <= 3


def test_choices_random_walks_pick_one(compiler: GrammarCompiler) -> None:
    seen = set()
    for seed in range(40):
        text = random_walk(compiler, CHOICES, seed, check=eos_rule(compiler))
        assert parse_output(CHOICES, text) == text
        seen.add(text)
    assert len(seen) > 1


@pytest.mark.parametrize("choice", CHOICES)
def test_each_choice_is_accepted_whole_and_ends_there(compiler: GrammarCompiler, tok: Tokenizer, choice: str) -> None:
    c = compiler.matcher(CHOICES)
    for t in tok.encode(choice):
        row = torch.zeros(compiler.vocab_size)
        c.fill_mask(row)
        assert math.isfinite(float(row[t]))
        c.advance(t)
    assert c.is_accepting()
    # "cafe" may still grow into "cafeteria"; nothing else can grow
    assert c.is_done() == (choice not in ("cafe", ""))
    row = torch.zeros(compiler.vocab_size)
    c.fill_mask(row)
    assert math.isfinite(float(row[tok.eos_id]))
    c.advance(tok.eos_id)
    assert c.is_done()


def test_choices_are_the_bare_strings_not_json(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    c = compiler.matcher(["cafe", "park"])
    row = torch.zeros(compiler.vocab_size)
    c.fill_mask(row)
    allowed = torch.isfinite(row).nonzero().flatten().tolist()
    assert allowed and all(tok.decode([t]) in ("c", "ca", "caf", "cafe", "p", "pa", "par", "park") for t in allowed)


def test_rejected_token_raises(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    c = compiler.matcher(Place)
    with pytest.raises(RuntimeError, match="rejected"):
        c.advance(tok.encode("hello")[0])


def test_constraints_from_one_schema_are_independent(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    a, b = compiler.matcher(["cafe", "park"]), compiler.matcher(["cafe", "park"])
    for t in tok.encode("park"):
        a.advance(t)
    assert a.is_done() and not b.is_accepting()


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "nosuchtype"},
        {"properties": {"a": {"$ref": "#/$defs/missing"}}},
        {"type": "object", "x": {1, 2}},
        [],
        ["ok", 3],
        ["ok", ["nested"]],
        42,
        "a string",
        {"a", "b"},
    ],
    ids=["bad-type", "bad-ref", "not-json", "no-choices", "non-string", "unhashable", "int", "str", "set"],
)
def test_invalid_schemas_are_request_errors(compiler: GrammarCompiler, schema: Any) -> None:
    with pytest.raises(RequestError) as info:
        compiler.compile(schema)
    assert (info.value.param, info.value.code) == ("schema", "invalid_schema")
    assert str(info.value)


def test_pydantic_model_without_a_json_schema_is_a_request_error(compiler: GrammarCompiler) -> None:
    class Bad(BaseModel):
        f: Callable[[int], int]

    with pytest.raises(RequestError, match="Bad") as info:
        compiler.matcher(Bad)
    assert info.value.code == "invalid_schema"


def test_grammar_cache_returns_the_same_compiled_grammar(compiler: GrammarCompiler) -> None:
    assert compiler.compile(Day) is compiler.compile(Day)
    assert compiler.compile(json.loads(json.dumps(RAW_SCHEMA))) is compiler.compile(dict(RAW_SCHEMA))
    assert compiler.compile(list(CHOICES)) is compiler.compile(list(CHOICES))
    assert compiler.compile(["cafe", "park"]) is not compiler.compile(["park", "cafe", "home"])


def test_pydantic_objects_forbid_extra_keys_but_raw_schemas_keep_their_meaning(compiler: GrammarCompiler) -> None:
    grammar = json.loads(compiler.compile(Place))["grammars"][0]["json_schema"]
    assert grammar["additionalProperties"] is False
    assert grammar["x-guidance"]["whitespace_flexible"] is False
    raw = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert "additionalProperties" not in json.loads(compiler.compile(raw))["grammars"][0]["json_schema"]


def test_apply_masks_leaves_unconstrained_rows_alone(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    wide = GrammarCompiler(tok, tok.vocab_size + 64)  # model logits wider than the tokenizer
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((3, wide.vocab_size), generator=gen)
    before = logits.clone()
    a, b = wide.matcher(Place), wide.matcher(["cafe", "park"])
    seconds = apply_masks([a, None, b], logits)
    assert seconds > 0 and a.mask_seconds == b.mask_seconds == seconds
    assert torch.equal(logits[1], before[1])
    for i, c in ((0, a), (2, b)):
        assert torch.isinf(logits[i, tok.vocab_size :]).all()
        single = before[i].clone()
        c.fill_mask(single)
        assert torch.equal(logits[i], single)
        assert torch.equal(logits[i][torch.isfinite(logits[i])], before[i][torch.isfinite(logits[i])])
    assert apply_masks([None, None, None], logits) == 0.0


def test_bias_lookups_agree(compiler: GrammarCompiler) -> None:
    gen = torch.Generator().manual_seed(1)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (4, compiler.mask_words), dtype=torch.int32, generator=gen)
    bits = torch.stack([(bitmask >> k) & 1 for k in range(32)], dim=-1).reshape(4, -1)
    expected = torch.where(bits == 1, 0.0, float("-inf"))
    assert torch.equal(_bias_numpy(bitmask), expected)
    assert torch.equal(_bias_torch(bitmask, torch.device("cpu")), expected)


def test_parse_output(tok: Tokenizer) -> None:
    assert parse_output(Place, '{"name": "park", "minutes": 10}') == Place(name="park", minutes=10)
    assert parse_output(RAW_SCHEMA, '{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_output(CHOICES, "cafeteria") == "cafeteria"
    assert parse_output(None, "anything") is None
    for schema, text in ((Place, '{"name": "moon", "minutes": 10}'), (RAW_SCHEMA, '{"a": '), (CHOICES, "caf")):
        with pytest.raises(RequestError) as info:
            parse_output(schema, text)
        assert (info.value.param, info.value.code) == ("schema", "invalid_output")


# ----------------------------------------------------------------- with the packaged model


class Plan(BaseModel):
    place: Literal["cafe", "park", "home"]
    minutes: int = Field(ge=5, le=60)


PROMPTS = [
    "Klaus is hungry and wants coffee. Where does he go next, and for how long? Answer in JSON.",
    "Maria is tired after a long day. Where does she go, and for how many minutes? Reply as JSON.",
    "Tom wants to walk the dog for about half an hour. Plan his next move as JSON.",
]


@pytest.mark.slow
def test_smollm2_greedy_decoding_under_the_grammar_validates() -> None:
    from simulacra.inference.kvcache import ContiguousKV
    from simulacra.inference.loader import load_model

    lm = load_model(dtype=torch.float32)
    tok = lm.tokenizer
    compiler = GrammarCompiler(tok, lm.config.vocab_size)
    for prompt in PROMPTS:
        step = tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]), add_special_tokens=True)
        kv = ContiguousKV(lm.config.n_layers, 1)
        c = compiler.matcher(Plan)
        out: list[int] = []
        pos = 0
        with torch.inference_mode():
            for _ in range(40):
                kv.set_batch([0], [len(step)])
                logits = lm.model(
                    torch.tensor(step),
                    torch.arange(pos, pos + len(step)),
                    kv,
                    logits_rows=torch.tensor([len(step) - 1]),
                )
                pos += len(step)
                c.fill_mask(logits[0])
                t = int(logits[0].argmax())
                c.advance(t)
                if t in tok.eos_ids:
                    break
                out.append(t)
                step = [t]
        text = tok.decode(out)
        plan = parse_output(Plan, text)
        assert isinstance(plan, Plan) and 5 <= plan.minutes <= 60, text
        assert c.is_done()


# ----------------------------------------------------------------- the token budget


def budget_walk(compiler: GrammarCompiler, schema: Any, seed: int, max_tokens: int) -> tuple[str, str, int]:
    """Decode with seeded random logits as the engine does under `max_tokens`: each sampled token goes
    through `accept` with the budget left after it; a forced close is written out. Returns the text,
    the finish reason the engine would give and the number of tokens."""
    tok = compiler.tokenizer
    gen = torch.Generator().manual_seed(seed)
    c = compiler.matcher(schema)
    c.check_budget(max_tokens)
    out: list[int] = []
    while True:
        if c.forcing:
            t = c.next_forced()
        else:
            logits = torch.randn((1, compiler.vocab_size), generator=gen)
            c.fill_mask(logits[0])
            t = int(logits[0].argmax())
            assert math.isfinite(float(logits[0, t]))
            if t not in tok.eos_ids:
                t = c.accept(t, max_tokens - len(out) - 1)
        if t in tok.eos_ids:
            reason = "length" if c.forcing else "stop"
            break
        out.append(t)
        if c.closed:
            reason = "length"
            break
        if c.is_done():
            reason = "stop"
            break
        if len(out) >= max_tokens:
            reason = "length"
            break
    assert c.is_accepting(), (tok.decode(out), reason)
    return tok.decode(out), reason, len(out)


BUDGET_SCHEMAS = {"Day": Day, "raw": RAW_SCHEMA, "Place": Place, "choices": CHOICES, "object": {"type": "object"}}


@pytest.mark.parametrize("name", list(BUDGET_SCHEMAS))
def test_a_value_the_budget_cuts_short_is_closed_and_validates(compiler: GrammarCompiler, name: str) -> None:
    schema = BUDGET_SCHEMAS[name]
    low = compiler.min_tokens(schema)
    assert low is not None
    reasons = []
    for max_tokens in range(max(low, 1), low + 31, 3):
        for seed in range(3):
            text, reason, n = budget_walk(compiler, schema, seed, max_tokens)
            parse_output(schema, text)  # raises unless it validates
            assert n <= max_tokens
            reasons.append(reason)
    if name != "choices":  # a choice is over in a token or two
        assert "length" in reasons  # some were cut short, and validate all the same


def test_the_shortest_values(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    """Closes from the start: open, fill each required field minimally, close; optional fields left out."""

    def shortest(schema: Any) -> str:
        c = compiler.matcher(schema)
        assert c.close is not None and len(c.close) == compiler.min_tokens(schema)
        return tok.decode(c.close)

    assert shortest({"type": "object"}) == "{}"
    assert shortest(Place) == '{"name": "home", "minutes": 5}'  # an enum's longest first token; the minimum
    assert json.loads(shortest({"type": "array", "items": {"type": "integer", "minimum": 7}, "minItems": 3})) == [7] * 3
    assert json.loads(shortest({"type": "object", "properties": {"x": {"type": "number", "minimum": 2.5}}})) == {}
    assert shortest({"anyOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"type": "null"}]}) in (
        "{}",
        "null",
    )
    day = parse_output(Day, shortest(Day))
    assert day.note is None and len(day.stops) == 1 and day.resident == ""
    assert compiler.min_tokens(CHOICES) == 0  # "" is a choice


def test_the_close_from_the_middle_ends_the_string_and_every_container(compiler: GrammarCompiler, tok: Tokenizer):
    c = compiler.matcher(Day)
    prefix = '{"resident": "Bo", "mood": "busy", "stops": [{"name": "park", "minutes": 1'
    for t in tok.encode(prefix):
        assert c.accept(t, 200) == t  # plenty of budget: nothing refused
    rest = tok.decode(c.close)
    assert re.match(r"\d\}\], ", rest), rest  # 1 -> 1x (minutes >= 5), then the stop and the list close
    day = parse_output(Day, prefix + rest)
    assert 10 <= day.stops[0].minutes <= 19 and day.budget == 0 and day.note is None
    assert len(c.close) <= 9  # x, }], then `, "budget": ` (forced: 5 tokens here), 0, }


def test_a_token_that_leaves_too_little_budget_is_refused_and_the_close_forced(
    compiler: GrammarCompiler, tok: Tokenizer
) -> None:
    c = compiler.matcher(Place)
    low = len(c.close)
    c.check_budget(low)
    with pytest.raises(RequestError) as info:
        c.check_budget(low - 1)
    assert (info.value.param, info.value.code) == ("max_tokens", "max_tokens_too_small")
    out = []
    for t in tok.encode('{"name": "'):
        out.append(c.accept(t, 100))
    budget = len(c.close)  # exactly enough for the close from here, after the next token
    town = tok.encode("town")[0]  # "town hall" needs more than the close ("home")
    token = c.accept(town, budget - 1)
    assert token != town and c.forcing and not c.closed
    out.append(token)
    while not c.closed:
        out.append(c.next_forced())
    assert len(out) == len(tok.encode('{"name": "')) + budget
    assert parse_output(Place, tok.decode(out)) == Place(name="home", minutes=5)
    assert c.next_forced() == compiler.eos_ids[0]  # nothing left: the request ends


def test_a_schema_without_a_close_is_not_guarded(compiler: GrammarCompiler, tok: Tokenizer) -> None:
    """A pattern the greedy close cannot finish: no close, no up-front refusal, tokens just consumed."""
    email = {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"}
    assert compiler.min_tokens(email) is None
    c = compiler.matcher(email)
    c.check_budget(1)
    t = tok.encode('"')[0]
    assert c.accept(t, 0) == t and not c.forcing
