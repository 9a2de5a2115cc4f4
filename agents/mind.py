"""The resident's mind: perceive → remember → plan → react → talk → act, once per step.

``Citizen`` is a ``world.Resident`` whose ``think`` runs the generative-agent loop. All residents'
``think`` coroutines run concurrently (``Town.astep``), so every ``await`` on the LLM joins the
town-wide batch. A resident's own state changes only in its own coroutine (and, for a conversation,
in the initiator's), in program order, so the same answers always give the same run.

Per step, what costs a call: importance of new memories (once per distinct text), the day's plan and
schedule (once a day), the current hour's actions (once an hour, or after a reaction), a reaction to
someone or something new, one exchange per conversation, a reflection when enough has happened.
Asleep, a resident costs nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from simulacra.world import (
    Action,
    GoTo,
    Resident,
    SetActivity,
    SetObjectState,
    Town,
    format_minutes,
    parse_time_of_day,
)
from simulacra.world.perception import Perception

from . import commitments, lines, prompts
from .conversation import Conversation
from .facts import TownEvent
from .memory import MemoryStream, Retrieved
from .planning import Slot, insert, schedule_slots, sequence_slots, slot_at
from .schemas import Questions, Reaction, TownSchemas, Utterance, YesNo, cited_answer
from .society import Society

NEWS_KINDS = ("seed", "heard", "reflection")  # what a resident may tell first (observations are not news)
PLAN_PREFIX = "My plan for"
TOPIC_POOL = 8  # memories considered for a line's topic
MY_LINES = 8  # own lines a new line may not repeat
TELLS = 0.5  # cosine of a line to its topic above which the partner counts as told
NEWS_WORDS = 5  # a shorter line tells nothing ("Carmen Grell" was remembered as news)


@dataclass(frozen=True)
class Line:
    """A chosen conversation line: what is said, whether it ends the talk, whether it told the topic."""

    says: str
    end: bool
    tells: bool


def speakable(memory: str) -> str:
    """A memory as something to say: a day plan ("My plan for Thursday 10 April: a; b.") becomes "Today I
    plan to a, then b."; other memories are said as written."""
    head, sep, rest = memory.partition(": ")
    if sep and head.startswith(PLAN_PREFIX):
        return "Today I plan to " + ", then ".join(p.strip() for p in rest.rstrip(".").split(";")) + "."
    return memory


def _in_use_state(states: Sequence[str], default: str) -> str | None:
    """The state an object is in while someone uses it (the last one that is not its resting state)."""
    others = [s for s in states if s != default]
    return others[-1] if others else None


class Citizen(Resident):
    """A resident with a generative-agent mind. ``attach_minds`` connects it to its society."""

    society: Society

    def setup_mind(self, society: Society, town_text: str, town_places: list[str], schemas: TownSchemas) -> None:
        spec, town = self.spec, self.town
        self.society = society
        routine = spec.routine
        work = (
            f"from {format_minutes(routine.work[0])} to {format_minutes(routine.work[1])}"
            if routine.work and spec.workplace
            else None
        )
        self.persona = prompts.Persona(
            name=spec.name,
            age=int(spec.profile.get("age", 30)),
            occupation=spec.profile.get("occupation", ""),
            traits=tuple(spec.profile.get("traits", ())),
            lifestyle=spec.profile.get("lifestyle", ""),
            home=spec.home,
            workplace=spec.workplace,
            work_hours=work,
            relations=tuple((b, d.get("note", "")) for b, d in town.social.graph[spec.name].items()),
        )
        self.system_text = prompts.system(town_text, town_places, self.persona)
        self.schemas = schemas
        self.home_place = spec.home or town.map.places[0].name
        self.plan_date: str | None = None
        self.day_plan: list[str] = []
        self.schedule: list[Slot] = []
        self.actions: list[Slot] = []
        self.last_seen: dict[str, int] = {}
        self.noticed: list[tuple[str, str]] = []  # (what, who) new this step
        self.using: str | None = None  # object in use
        self.current: Slot | None = None
        self.told: dict[str, list[int]] = {}  # partner -> seqs of the memories told them
        self.my_lines: list[str] = []  # my last conversation lines (a new line may not repeat them)
        self.event_choices: dict[str, bool] = {}  # event id -> going (decided in a plan)
        self.commitments: list[TownEvent] = []  # meetings agreed in conversation, decided on like events

    @property
    def stream(self) -> MemoryStream:
        return self.society.memories[self.name]

    def minute(self) -> int:
        return self.town.clock.minute_of_day(self.town.steps)

    def awake(self, minute: int) -> bool:
        wake, sleep = self.spec.routine.wake, self.spec.routine.sleep
        return wake <= minute < sleep if wake < sleep else (minute >= wake or minute < sleep)

    def waking_date(self) -> str:
        """The date of the current waking day (after midnight still counts as the day before)."""
        return (self.town.now - timedelta(minutes=self.spec.routine.wake)).date().isoformat()

    def remember(self, kind: str, text: str, **kw: Any) -> None:
        self.stream.add(kind, text, self.town.steps, self.town.now, **kw)

    def recall(
        self, query: str, k: int | None = None, *, touch: bool = True, kinds: tuple[str, ...] | None = None
    ) -> list[Retrieved]:
        soc = self.society
        q = soc.embed([query])[0]
        return self.stream.retrieve(
            q, self.town.now, k or soc.config.top_k, soc.config.retrieval, touch=touch, kinds=kinds
        )

    def recall_texts(self, query: str, k: int | None = None) -> list[str]:
        return [r.memory.text for r in self.recall(query, k)]

    def log(self, kind: str, **data: Any) -> None:
        self.society.event(self.index, kind, self.name, **data)

    def _time(self) -> str:
        return format_minutes(self.minute())

    def _date(self) -> str:
        return self.town.now.strftime("%A %d %B")

    async def think(self, perception: Perception) -> list[Action]:
        """One step of cognition.

        Shared state (the conversation this resident is in, which memories await a score) is read
        before the first ``await``, while every resident still sees the step's starting state; after
        that a resident only reads its own state, or, in a conversation it started, its partner's
        memories. New memories are scored for importance alongside the step's decisions (so every
        resident's first call joins the same batch), and the society applies every resident's
        scores together once the whole step has been decided (``Society.end_step``): a partner's
        scores never land in the middle of a conversation at a moment set by which call finished
        first. Together this makes a run independent of call timing.
        """
        soc = self.society
        begin_step(self.town, soc)
        minute = self.minute()
        awake = self.awake(minute)
        if awake:
            self.observe(perception)
        todo = [m for m in self.stream.memories if m.importance is None]
        conv = soc.conversations.of(self.name)
        await soc.embed_new()
        scoring = asyncio.gather(*(soc.importance(m.text) for m in todo))
        actions = await self.decide(minute, awake, conv)
        soc.score_at_step_end(self.index, self.stream, todo, await scoring)
        return actions

    async def decide(self, minute: int, awake: bool, conv: Conversation | None) -> list[Action]:
        soc = self.society
        if conv is not None:
            if conv.a == self.name:
                await self.exchange(conv)
            return self.talking(conv)
        if not awake:
            return self.sleep()
        if self.plan_date != self.waking_date():
            await self.plan_day(minute)
        if self.stream.importance_since_reflection >= soc.config.reflection_threshold:
            await self.reflect()
        if slot_at(self.actions, minute) is None:
            await self.plan_hour(minute)
        await self.react(minute)
        return self.act(minute)

    def observe(self, perception: Perception) -> None:
        """Remember who and what is new in sight; keep the new ones for a possible reaction."""
        step, cooldown = self.town.steps, self.society.config.notice_cooldown_steps
        self.noticed = []
        for seen in perception.seen:
            if seen.kind == "resident":
                new = self.last_seen.get(seen.name, -(10**9)) < step - cooldown
                self.last_seen[seen.name] = step
                if new:
                    what = f"{seen.name} is {seen.state}" if seen.state else f"{seen.name} is here"
                    self.remember("observation", what)
                    if seen.state != "sleeping":
                        self.noticed.append((what, seen.name))
            elif seen.changed:
                where, _, short = seen.name.rpartition(":")
                what = f"the {short} at {where.split(':')[0]} is {seen.state}"
                self.remember("observation", what)
                self.noticed.append((what, ""))

    async def plan_day(self, minute: int) -> None:
        soc, sch = self.society, self.schemas
        date = self._date()
        memories = self.recall_texts(f"{self.name}'s plans for {date}")
        events = self.events_to_decide()
        for ev in events:  # what was heard of each event is retrieved into the plan (the paper's mechanism)
            memories += [t for t in self.recall_texts(ev.label(), 2) if t not in memories]
        wake = format_minutes(self.spec.routine.wake)
        labels = tuple(ev.label() for ev in events)
        msgs = prompts.day_plan(self.system_text, date, memories, self._example_plan(), wake, labels)
        schema = sch.with_event(sch.DayPlan, labels) if labels else sch.DayPlan
        day = await soc.ask("day_plan", self.name, msgs, schema)
        plan = list(day.plan) if day is not None else self._example_plan()
        wake = day.wake_up if day is not None else wake
        start, sleep = format_minutes(max(minute, parse_time_of_day(wake))), format_minutes(self.spec.routine.sleep)
        msgs = prompts.schedule(self.system_text, date, plan, start, sleep, self._example_blocks(start))
        out = await soc.ask("schedule", self.name, msgs, sch.Schedule)
        blocks = [(b.start, b.activity, b.place) for b in out.blocks] if out is not None else []
        if parse_time_of_day(wake) > minute:
            blocks.append((format_minutes(minute), "getting up", self.home_place))
        self.schedule = schedule_slots(blocks, minute, self.spec.routine.sleep, self.home_place)
        if events:
            self.choose_event(events, day, "day_plan")
        self.day_plan = plan
        self.plan_date = self.waking_date()
        self.actions = []
        self.remember("plan", f"{PLAN_PREFIX} {date}: " + "; ".join(plan) + ".")
        self.log("day_plan", wake_up=wake, plan=plan, schedule=[_slot_json(s) for s in self.schedule])

    def events_to_decide(self) -> list[TownEvent]:
        """Today's events still to come that I have heard of (a memory tells of them) or agreed to in a
        conversation, and not yet decided on."""
        soc, now = self.society, self.town.now
        memories = [m.text for m in self.stream.memories]
        return [
            ev
            for ev in [*soc.events, *self.commitments]
            if ev.start.date() == now.date()
            and ev.end > now
            and ev.id not in self.event_choices
            and (ev in self.commitments or soc.facts.heard_of(self.name, ev, memories))
        ]

    def is_chosen_event(self, slot: Slot) -> bool:
        return any(
            self.event_choices.get(ev.id) and slot.activity == ev.title[:48] and slot.place == ev.place
            for ev in [*self.society.events, *self.commitments]
        )

    def commit(self, ev: TownEvent) -> None:
        """Take on a meeting agreed in conversation (once): remembered, logged, offered at the next plan."""
        if any(c.id == ev.id for c in self.commitments):
            return
        now = self.town.now
        self.commitments = [c for c in self.commitments if c.end > now - timedelta(days=1)] + [ev]
        other = ev.title.removeprefix("meeting ")
        self.remember("plan", f"I agreed to meet {other} at {ev.place} at {ev.start:%H:%M} on {ev.start:%A}.")
        self.log("commitment", event=ev.id, other=other, place=ev.place, start=ev.start.isoformat(), by=ev.host)

    def choose_event(self, events: list[TownEvent], out: Any, plan: str) -> Slot | None:
        """Apply a plan's ``event`` choice: the chosen event's hours go into the schedule; every offered event is
        decided, with the plan's reason logged (why someone went, or stayed away). The chosen event's slot."""
        if out is None:  # no answer: still undecided, offered again at the next plan
            return None
        chosen, why, going = out.event, out.why, None
        for ev in events:
            go = chosen == ev.label()
            self.event_choices[ev.id] = go
            self.log("event_choice", event=ev.id, go=go, why=why, plan=plan)
            if go:
                lo = parse_time_of_day(f"{ev.start:%H:%M}")
                going = Slot(lo, lo + int((ev.end - ev.start).total_seconds() // 60), ev.title[:48], ev.place, "🎉")
                self.schedule = insert(self.schedule, going)
                self.remember("plan", f"I will go to {ev.label()}.")
        return going

    def _example_plan(self) -> list[str]:
        """A plan in the resident's own routine, shown as the example (a small model copies examples)."""
        r, spec = self.spec.routine, self.spec
        plan = [f"have breakfast at {self.home_place}"]
        if spec.workplace and r.work:
            plan.append(f"work at {spec.workplace} until {format_minutes(r.work[1])}")
        plan += [f"visit {r.leisure[0]}" if r.leisure else "take a walk", f"have dinner at {self.home_place}"]
        return [p[:48] for p in plan]

    def _example_blocks(self, start: str) -> list[dict]:
        """The routine as schedule blocks (breakfast, work or an outing, lunch, evening, dinner)."""
        r, spec, home = self.spec.routine, self.spec, self.home_place
        out = self.town.map.places[0].name
        blocks = [(self.spec.routine.wake, "breakfast", home)]
        if spec.workplace and r.work:
            blocks += [(r.work[0], "work", spec.workplace), (12 * 60, "lunch", spec.workplace)]
            blocks += [
                (r.work[1], f"visit {r.leisure[0]}" if r.leisure else "take a walk", r.leisure[0] if r.leisure else out)
            ]
        else:
            blocks += [
                (10 * 60, f"visit {r.leisure[0]}" if r.leisure else "take a walk", r.leisure[0] if r.leisure else out)
            ]
            blocks += [(12 * 60, "lunch", home), (15 * 60, "take a walk", out)]
        blocks.append((19 * 60, "dinner", home))
        first = parse_time_of_day(start)
        return [
            {"start": format_minutes(max(t, first) // 60 * 60), "activity": a, "place": p}
            for t, a, p in blocks
            if t < r.sleep
        ]

    async def plan_hour(self, minute: int, note: str = "") -> None:
        """Break the time from now to the next hour (or the end of the schedule block) into actions."""
        slot = slot_at(self.schedule, minute) or Slot(minute, minute + 60, "at home", self.home_place)
        start = minute if minute >= slot.start else minute + 24 * 60
        if self.is_chosen_event(slot):  # going to an event needs no plan: be there until it ends
            self.actions = [Slot(start, slot.end, slot.activity, slot.place, slot.emoji)]
            self.log(
                "hour_plan",
                start=format_minutes(start),
                until=format_minutes(slot.end),
                actions=[_slot_json(self.actions[0])],
            )
            return
        until = min((start // 60 + 1) * 60, slot.end)
        memories = self.recall_texts(f"{slot.activity} at {slot.place}", 3)
        events = self.events_to_decide()
        for ev in events:
            memories += [t for t in self.recall_texts(ev.label(), 2) if t not in memories]
        labels = tuple(ev.label() for ev in events)
        emoji = "💼" if slot.place == self.spec.workplace else "🏠" if slot.place == self.home_place else "🙂"
        msgs = prompts.hour_plan(
            self.system_text,
            format_minutes(start),
            format_minutes(until),
            slot.activity,
            slot.place,
            emoji,
            memories,
            note,
            labels,
        )
        sch = self.schemas
        out = await self.society.ask(
            "hour_plan", self.name, msgs, sch.with_event(sch.HourPlan, labels) if labels else sch.HourPlan
        )
        steps = [(a.minutes, a.action, a.place, a.emoji) for a in out.actions] if out is not None else []
        self.actions = sequence_slots(steps, start, until, (slot.activity, slot.place, ""))
        going = self.choose_event(events, out, "hour_plan") if events else None
        if going is not None and going.start < until:  # it starts this hour: go now
            self.actions = insert(self.actions, going)
        self.log(
            "hour_plan",
            start=format_minutes(start),
            until=format_minutes(until),
            actions=[_slot_json(s) for s in self.actions],
        )

    async def react(self, minute: int) -> None:
        """Decide about the first new thing noticed: continue, change the plan, or start a conversation."""
        if not self.noticed:
            return
        what, who = self.noticed[0]
        soc = self.society
        busy = who and (who in soc.busy or not self.town.resident(who).active)
        doing = self.current.activity if self.current else self.activity
        memories = self.recall_texts(what, 3)
        other = "" if busy else who
        last = self.town.social.relation(self.name, who) if other else None
        step = last["last_interaction"] if last else None
        today = step is not None and self.town.clock.day(step) == self.town.clock.day(self.town.steps)
        last_talk = format_minutes(self.town.clock.minute_of_day(step)) if today else ""
        msgs = prompts.reaction(
            self.system_text, format_minutes(minute), doing, self.place, what, memories, other, last_talk
        )
        out = await soc.ask("reaction", self.name, msgs, Reaction)
        if out is None:
            return
        decision = out.decision if not (out.decision == "talk" and (busy or not who)) else "continue"
        self.log("reaction", noticed=what, decision=decision, reason=out.reason)
        if decision == "talk":
            soc.conversations.request(self.index, self.name, who, self.place)
        elif decision == "react":
            await self.plan_hour(minute, note=f"You just noticed: {what}. ({out.reason})")

    async def exchange(self, conv: Conversation) -> None:
        """One round of a conversation this resident started: each side speaks once, the other replying."""
        soc, town = self.society, self.town
        for speaker in (conv.a, conv.b):
            mind: Citizen = town.resident(speaker)  # type: ignore[assignment]
            other = conv.other(speaker)
            said = await mind.utter(conv)
            if said is None:
                soc.conversations.end(conv, town.steps, "no answer")
                break
            soc.conversations.say(conv, speaker, said.says, town.steps)
            soc.spoke(lines.normalise(said.says))
            self.log("utterance", conversation=conv.id, speaker=speaker, to=other, text=said.says)
            for p in soc.facts.hear(speaker, [other], said.says, town.steps, town.now):
                self.log("fact_learned", fact=p.fact, learner=p.learner, source=p.source, words=p.words)
            if said.end:
                soc.conversations.end(conv, town.steps, f"{speaker} said goodbye")
                break
            if len(conv.turns) >= soc.conversations.max_turns:
                soc.conversations.end(conv, town.steps, "turn limit")
                break
        if conv.ended:
            self.finish(conv)

    async def utter(self, conv: Conversation) -> Utterance | None:
        """The next line: a topic first (something I know and have not told this partner), then
        ``line_candidates`` samples of one prompt (they share its KV blocks), none repeating the
        conversation's words, reranked by ``pick_line``."""
        soc, cfg = self.society, self.society.config
        other = conv.other(self.name)
        last = conv.turns[-1][1] if conv.turns else ""
        query = self.society.embed([f"{other} {last}".strip()])[0]  # one embedding for both retrievals
        got = self.stream.retrieve(query, self.town.now, cfg.top_k, cfg.retrieval)
        topic = self.topic(conv, query)
        rel = self.town.social.relation(self.name, other)
        example, end = self.example_line(conv, topic)
        shown = [r.memory.text for r in got]
        if topic is not None and topic.memory.text not in shown:
            shown = [topic.memory.text, *shown[:-1]]
        msgs = prompts.utterance(
            self.system_text,
            self._time(),
            conv.place,
            other,
            rel["note"] if rel else "",
            shown,
            [(s, t) for s, t, _ in conv.turns],
            example,
            end,
            topic.memory.text if topic is not None else "",
        )
        avoid = [t for _, t, _ in conv.turns] + self.my_lines
        sampling: dict[str, Any] = {"n": cfg.line_candidates}
        if avoid and cfg.no_repeat_ngram:
            sampling.update(no_repeat_ngram_size=cfg.no_repeat_ngram, no_repeat_texts=avoid)
        outs = await soc.ask_samples("utterance", self.name, msgs, Utterance, **sampling)
        said = self.pick_line(outs, conv, topic, example, end)
        if said is None:
            return None
        if topic is not None and said.tells:
            self.told.setdefault(other, []).append(topic.memory.seq)
            conv.news.append((self.name, said.says))
        self.my_lines = [*self.my_lines, said.says][-MY_LINES:]
        return Utterance(says=said.says, end=said.end)

    def topic(self, conv: Conversation, query: np.ndarray) -> Retrieved | None:
        """The best-ranked memory worth telling this partner: known to me (seeded, heard or concluded; else
        my plan for the day), not told them before, not said in this conversation, not something they told me.
        Measured on town25: with plans ranked alongside news, the day's plan (recent) opened most talks."""
        other = conv.other(self.name)
        told = set(self.told.get(other, ()))
        said = lines.normalise(" ".join(t for _, t, _ in conv.turns))
        theirs = f"{other.split()[0]} told me:"
        for kinds in (NEWS_KINDS, ("plan",)):  # news first; the day's plan when there is none left
            cfg = self.society.config
            for r in self.stream.retrieve(query, self.town.now, TOPIC_POOL, cfg.retrieval, touch=False, kinds=kinds):
                m = r.memory
                if m.seq in told or m.text.startswith(theirs) or lines.normalise(m.text)[:40] in said:
                    continue
                if other in m.text:  # about them ("I live at 2 Cedar Lane with <them>"): they know it
                    continue
                return r
        return None

    def example_line(self, conv: Conversation, topic: Retrieved | None) -> tuple[str, bool]:
        """An example line made of the topic (a small model copies its example: that is how news travels).
        With nothing left to tell after the opening exchange, the example says goodbye: filler questions
        traded back and forth were most of the old runs' lines."""
        other = conv.other(self.name).split()[0]
        if len(conv.turns) >= self.society.conversations.max_turns - 2 or (topic is None and len(conv.turns) >= 2):
            return f"It was good to see you, {other}. Goodbye!", True
        opener = f"Hi {other}! " if not conv.turns else ""
        if topic is not None:
            return (opener + speakable(topic.memory.text))[:160], False
        return (opener + f"What are you up to at {conv.place.split(':')[0]} today, {other}?")[:160], False

    def pick_line(
        self, outs: Sequence[Utterance | None], conv: Conversation, topic: Retrieved | None, example: str, end: bool
    ) -> Line | None:
        """The best candidate: free of the four faults (``lines``), then on topic and new to the conversation
        (MiniLM cosines); the example itself when every candidate has a fault and it has none. Ties go to
        the lower sample index, so the choice depends on the samples only."""
        names = [r.name for r in self.town.residents]
        cands = []
        for out in outs:
            text = lines.strip_prefixes(out.says, names) if out is not None else ""
            if text:
                cands.append((text, out.end))  # type: ignore[union-attr]
        if not cands:
            return None
        conversation = [t for _, t, _ in conv.turns]
        texts = [c for c, _ in cands] + [example] + conversation + ([topic.memory.text] if topic else [])
        vec = self.society.embed(texts)
        k = len(cands)
        conv_vec, topic_vec = vec[k + 1 : k + 1 + len(conversation)], vec[-1] if topic else None

        def rank(i: int, text: str) -> tuple[int, float, float]:
            bad = len(lines.faults(text, conversation, self.society.said, names))
            on_topic = float(vec[i] @ topic_vec) if topic_vec is not None else 0.0
            novelty = 1.0 - (float((conv_vec @ vec[i]).max()) if len(conversation) else 0.0)
            return bad, on_topic + novelty, on_topic

        ranked = [rank(i, t) for i, (t, _) in enumerate(cands)]
        best = min(range(k), key=lambda i: (ranked[i][0], -ranked[i][1], i))
        text, stop = cands[best]
        bad, _, on_topic = ranked[best]
        fallback = rank(k, example) if bad else None
        if fallback is not None and not fallback[0]:
            text, stop, on_topic = example, end, fallback[2]
        return Line(text, stop, topic is not None and on_topic >= TELLS and len(lines.words(text)) >= NEWS_WORDS)

    def finish(self, conv: Conversation) -> None:
        """Both remember the conversation, and each what the other told them (news they may pass on, in
        words that carry no "Name:" prefix); the social graph records it."""
        town = self.town
        places = [p.name for p in town.map.places]
        meetings = [  # a tracked fact's own event is offered as that event, not as a meeting
            (speaker, got)
            for speaker, line, _ in conv.turns
            if not self.society.facts.mentions(line)
            and (got := commitments.proposed(line, places, town.now)) is not None
        ]
        for name in (conv.a, conv.b):
            other = conv.other(name)
            said = " ".join(f"{s.split()[0]}: {t}" for s, t, _ in conv.turns)
            mind: Citizen = town.resident(name)  # type: ignore[assignment]
            mind.remember("conversation", f"I talked with {other} at {conv.place.split(':')[0]}. {said}"[:700])
            for speaker, line in conv.news:
                if speaker != name:
                    mind.remember("heard", f"{speaker.split()[0]} told me: {lines.strip_greeting(line)}")
            for speaker, got in meetings:
                mind.commit(commitments.meeting(name, other, speaker, *got))
        town.social.record_interaction(conv.a, conv.b, town.steps)
        self.log("conversation_end", conversation=conv.id, other=conv.b, turns=len(conv.turns), reason=conv.end_reason)

    def talking(self, conv: Conversation) -> list[Action]:
        out: list[Action] = [GoTo(self.place)] if self.is_moving else []
        return [*out, SetActivity(f"talking with {conv.other(self.name)}", "💬")]

    async def reflect(self) -> None:
        """Ask what the recent memories raise, retrieve for each question, write insights with evidence."""
        soc = self.society
        recent = self.stream.recent(20, ("seed", "observation", "conversation", "reflection"))
        qs = await soc.ask(
            "questions", self.name, prompts.questions(self.system_text, [m.text for m in recent]), Questions
        )
        self.stream.importance_since_reflection = 0
        if qs is None:
            return
        found = [self.recall(q, 6) for q in qs.questions]
        answers = await asyncio.gather(
            *(
                soc.ask(
                    "insights",
                    self.name,
                    prompts.insights(self.system_text, q, [r.memory.text for r in got]),
                    self.schemas.insights(len(got)),
                )
                for q, got in zip(qs.questions, found, strict=True)
                if got
            )
        )
        written = []
        for got, ans in zip([g for g in found if g], answers, strict=True):
            for ins in ans.insights if ans is not None else []:
                evidence = tuple(sorted({got[i - 1].memory.seq for i in ins.because if 1 <= i <= len(got)}))
                self.remember("reflection", ins.insight, evidence=evidence)
                written.append({"insight": ins.insight, "evidence": list(evidence)})
        self.log("reflection", questions=list(qs.questions), insights=written)

    def act(self, minute: int) -> list[Action]:
        """The world actions of the current action: walk there, or do it there (using an object)."""
        slot = slot_at(self.actions, minute)
        if slot is None:
            return []
        out: list[Action] = []
        if slot != self.current:
            self.current = slot
            self.log("action", action=slot.activity, place=slot.place, emoji=slot.emoji)
            out += self._use_object(slot)
        if self.destination != slot.place:
            out.append(GoTo(slot.place))
        elif not self.is_moving and self.activity != slot.activity:
            out.append(SetActivity(slot.activity, slot.emoji))
        return out

    def _use_object(self, slot: Slot) -> list[Action]:
        """Objects follow actions: the stove is on while cooking at it, the bed in use while sleeping."""
        out: list[Action] = []
        m = self.town.map
        text = slot.activity.lower()
        chosen = None
        area = slot.place.split(":")[0]
        for o in m.objects:
            if o.short.lower() in text and m.places[o.area].name == area:
                chosen = o
                break
        if self.using and (chosen is None or chosen.name != self.using):
            default = m.objects[m.lookup(self.using)[1]].state
            out.append(SetObjectState(self.using, default))
            self.using = None
        if chosen is not None and chosen.name != self.using:
            state = _in_use_state(chosen.states or (), chosen.state)
            if state is not None:
                out.append(SetObjectState(chosen.name, state))
                self.using = chosen.name
        return out

    def sleep(self) -> list[Action]:
        self.current = None
        if self.destination != self.home_place:
            return [GoTo(self.home_place)]
        return [] if self.is_moving or self.activity == "sleeping" else [SetActivity("sleeping", "😴")]

    async def interview(self, question: str) -> str:
        """Answer in character from retrieved memories (does not change what the resident remembers)."""
        return (await self.interview_cited(question))[0]

    async def interview_cited(self, question: str) -> tuple[str, list[str]]:
        """The answer and the memories it cites (the schema lets it cite only the numbered ones shown)."""
        got = self.recall(question, 6, touch=False)
        msgs = prompts.interview(self.system_text, self._time(), question, [r.memory.text for r in got])
        out = await self.society.ask("interview", self.name, msgs, cited_answer(len(got)), seed_key=question)
        if out is None:
            return "(no answer)", []
        return out.answer, [got[i - 1].memory.text for i in sorted(set(out.because)) if 1 <= i <= len(got)]

    async def interview_yes_no(self, question: str) -> bool:
        """A yes/no interview question (the paper's "Do you know X?"), answered from retrieved memories."""
        got = self.recall(question, 4, touch=False)
        msgs = prompts.interview(self.system_text, self._time(), question, [r.memory.text for r in got], yes_no=True)
        out = await self.society.ask("yes_no", self.name, msgs, YesNo, seed_key=question)
        return out is not None and out.answer == "yes"

    def details(self) -> dict:
        """Persona, plan, recent memories with their retrieval scores, relationships (for the viewer)."""
        query = self.current.activity if self.current else self.activity or self.name
        got = self.recall(query, 8, touch=False) if self.stream.memories else []
        return {
            "name": self.name,
            "persona": {
                "age": self.persona.age,
                "occupation": self.persona.occupation,
                "traits": list(self.persona.traits),
                "lifestyle": self.persona.lifestyle,
            },
            "activity": self.activity,
            "emoji": self.emoji,
            "place": self.place,
            "plan": [
                f"{format_minutes(s.start)}–{format_minutes(s.end)} {s.activity} ({s.place})" for s in self.schedule
            ],
            "memories": [
                {
                    "text": r.memory.text,
                    "kind": r.memory.kind,
                    "created": r.memory.created_at.isoformat(),
                    "importance": r.memory.importance,
                    "score": round(r.score, 3),
                }
                for r in got
            ],
            "relationships": [
                {"name": b, "strength": round(d["strength"], 2), "note": d.get("note", "")}
                for b, d in self.town.social.acquaintances(self.name)
            ],
        }

    def mind_state(self) -> dict:
        return {
            "plan_date": self.plan_date,
            "day_plan": self.day_plan,
            "schedule": [asdict(s) for s in self.schedule],
            "actions": [asdict(s) for s in self.actions],
            "last_seen": self.last_seen,
            "using": self.using,
            "current": asdict(self.current) if self.current else None,
            "told": self.told,
            "my_lines": self.my_lines,
            "event_choices": self.event_choices,
            "commitments": [commitments.to_json(c) for c in self.commitments],
        }

    def load_mind_state(self, state: dict) -> None:
        self.plan_date = state["plan_date"]
        self.day_plan = list(state["day_plan"])
        self.schedule = [Slot(**s) for s in state["schedule"]]
        self.actions = [Slot(**s) for s in state["actions"]]
        self.last_seen = {k: int(v) for k, v in state["last_seen"].items()}
        self.using = state["using"]
        self.current = Slot(**state["current"]) if state["current"] else None
        self.told = {k: [int(x) for x in v] for k, v in state.get("told", {}).items()}  # older runs: none
        self.my_lines = list(state.get("my_lines", []))
        self.event_choices = {k: bool(v) for k, v in state.get("event_choices", {}).items()}
        self.commitments = [commitments.from_json(c) for c in state.get("commitments", [])]


def _slot_json(s: Slot) -> dict:
    return {
        "start": format_minutes(s.start),
        "end": format_minutes(s.end),
        "activity": s.activity,
        "place": s.place,
        "emoji": s.emoji,
    }


def begin_step(town: Town, society: Society) -> None:
    """Once per step, before any resident thinks: start the conversations asked for last step."""
    if society.step == town.steps:
        return
    society.end_step()  # the last step's scores, if its caller did not apply them (Simulation does)
    society.step, society.now = town.steps, town.now
    minute = town.clock.minute_of_day(town.steps)

    def available(name: str) -> bool:
        r = town.resident(name)
        return bool(r.active) and (not isinstance(r, Citizen) or r.awake(minute))

    for conv in society.conversations.resolve(town.steps, available):
        a: Citizen = town.resident(conv.a)  # type: ignore[assignment]
        a.log("conversation_start", conversation=conv.id, other=conv.b, place=conv.place)
    society.busy = frozenset(society.conversations.active)  # as of the step's start, for everyone


def resident_places(town: Town, home: str | None) -> list[str]:
    """The places a resident's plans may name: every place that is not someone else's home."""
    return [p.name for p in town.map.places if p.kind != "home" or (home and p.name.split(":")[0] == home)]


def attach_minds(
    town: Town,
    society: Society,
    *,
    town_text: str,
    seed_memories: dict[str, list[str]] | None = None,
) -> None:
    """Give every ``Citizen`` of ``town`` its mind: persona, prompts, schemas, first memories, known facts."""
    schemas: dict[tuple[str, ...], TownSchemas] = {}
    town_places = [p.name for p in town.map.places]
    now = town.now
    society.step, society.now = town.steps, now
    for r in town.residents:
        if not isinstance(r, Citizen):
            continue
        places = tuple(resident_places(town, r.spec.home))
        if places not in schemas:
            schemas[places] = TownSchemas(list(places))
        r.setup_mind(society, town_text, town_places, schemas[places])
        for text in r.spec.profile.get("memories", []):
            r.remember("seed", text)
        for text in (seed_memories or {}).get(r.name, []):
            r.remember("seed", text)
    society.facts.seed(town.steps, now)


def interview_all(town: Town, question: str) -> dict[str, asyncio.Future]:
    """Ask every resident the same question at once (one batch); returns name → pending answer."""
    return {r.name: asyncio.ensure_future(r.interview(question)) for r in town.residents if isinstance(r, Citizen)}


__all__ = ["Citizen", "attach_minds", "begin_step", "interview_all", "resident_places"]
