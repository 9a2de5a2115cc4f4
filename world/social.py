"""Who knows whom: a directed networkx graph of residents, with notes, strength and last interaction.

Directed, because knowing is not symmetric (the paper asked each resident about each other one and
counted an edge per "yes"), so density is ``edges / (n·(n-1))``, the paper's measure (what
``networkx.density`` computes for a ``DiGraph``). Nodes are resident names. The edge count is kept
as edges are added (networkx counts by walking every node: 12 ms at 10,000 residents, every step),
so change the graph through these methods.

Edge attributes: ``strength`` in [0, 1], ``note`` (how the source sees the target, in words),
``last_interaction`` (the step of their last conversation, or None), ``interactions`` (a count) and
``since`` (the step the acquaintance began; 0 for relationships written in the scenario).
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx


def _clip(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


class SocialGraph:
    """The town's acquaintance graph, with the small API minds and metrics need."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.graph = nx.DiGraph()
        self.graph.add_nodes_from(names)
        self._edges = 0

    def _check(self, *names: str) -> None:
        for name in names:
            if name not in self.graph:
                raise KeyError(f"{name!r} is not a resident of this town")

    def knows(self, a: str, b: str) -> bool:
        """Whether ``a`` knows ``b`` (directed)."""
        return self.graph.has_edge(a, b)

    def relation(self, a: str, b: str) -> dict | None:
        """The edge attributes of ``a → b`` (a copy), or None."""
        data = self.graph.get_edge_data(a, b)
        return dict(data) if data is not None else None

    def add_relation(
        self,
        a: str,
        b: str,
        *,
        strength: float = 0.5,
        note: str = "",
        step: int = 0,
        mutual: bool = False,
    ) -> None:
        """Make ``a`` know ``b`` (and ``b`` know ``a`` when ``mutual``); existing edges keep their history."""
        self._check(a, b)
        if a == b:
            raise ValueError(f"{a!r} cannot have a relationship with themself")
        pairs = [(a, b), (b, a)] if mutual else [(a, b)]
        for u, v in pairs:
            if self.graph.has_edge(u, v):
                data = self.graph[u][v]
                data["strength"] = _clip(strength)
                if note:
                    data["note"] = note
            else:
                self.graph.add_edge(
                    u, v, strength=_clip(strength), note=note, since=step, last_interaction=None, interactions=0
                )
                self._edges += 1

    def strengthen(self, a: str, b: str, delta: float = 0.1, *, step: int = 0, mutual: bool = True) -> float:
        """Raise (or with a negative delta, lower) the strength of ``a → b``, creating the edge at 0 first.

        Returns the new strength of ``a → b``.
        """
        self._check(a, b)
        pairs = [(a, b), (b, a)] if mutual else [(a, b)]
        for u, v in pairs:
            if not self.graph.has_edge(u, v):
                self.add_relation(u, v, strength=0.0, step=step)
            self.graph[u][v]["strength"] = _clip(self.graph[u][v]["strength"] + delta)
        return self.graph[a][b]["strength"]

    def set_note(self, a: str, b: str, note: str, *, step: int = 0) -> None:
        """Replace what ``a`` thinks of ``b`` (creating the acquaintance if needed)."""
        if not self.graph.has_edge(a, b):
            self.add_relation(a, b, strength=0.1, step=step)
        self.graph[a][b]["note"] = note

    def record_interaction(self, a: str, b: str, step: int, *, strength_gain: float = 0.05) -> None:
        """A conversation between ``a`` and ``b``: both now know each other; count, stamp and strengthen."""
        self._check(a, b)
        for u, v in ((a, b), (b, a)):
            if not self.graph.has_edge(u, v):
                self.add_relation(u, v, strength=0.1, step=step)
            data = self.graph[u][v]
            data["last_interaction"] = step
            data["interactions"] += 1
            data["strength"] = _clip(data["strength"] + strength_gain)

    def acquaintances(self, a: str) -> list[tuple[str, dict]]:
        """Whom ``a`` knows, strongest first (ties by name)."""
        self._check(a)
        return sorted(((b, dict(d)) for b, d in self.graph[a].items()), key=lambda kv: (-kv[1]["strength"], kv[0]))

    def density(self) -> float:
        """Edges over n·(n-1): the share of ordered pairs (a, b) where a knows b."""
        n = self.graph.number_of_nodes()
        return self._edges / (n * (n - 1)) if n > 1 else 0.0

    def edge_count(self) -> int:
        """Number of directed acquaintances."""
        return self._edges

    def view_json(self, max_nodes: int = 200) -> dict | None:
        """Nodes and ``[a, b, strength]`` edges for the viewer; None past ``max_nodes`` (a circle of
        more residents is unreadable, and the frames would carry n² edges)."""
        if self.graph.number_of_nodes() > max_nodes:
            return None
        edges = [[u, v, round(float(d.get("strength", 0.0)), 3)] for u, v, d in self.graph.edges(data=True)]
        return {"nodes": list(self.graph.nodes), "edges": edges}

    def state_dict(self) -> dict:
        """Plain JSON: nodes and edges with attributes, in insertion order (so restores are identical)."""
        return {
            "nodes": list(self.graph.nodes),
            "edges": [[u, v, dict(d)] for u, v, d in self.graph.edges(data=True)],
        }

    def load_state_dict(self, state: dict) -> None:
        """Replace the graph with a saved one."""
        g = nx.DiGraph()
        g.add_nodes_from(state["nodes"])
        g.add_edges_from((u, v, dict(d)) for u, v, d in state["edges"])
        self.graph = g
        self._edges = g.number_of_edges()
