"""simulacra.world: the town as a Mesa model (map, clock, movement, perception, social graph).

Independent of any language model and of the rest of ``simulacra``: the scenario loader
(``simulacra.scenario``) builds a ``Town`` from these types. See docs/WORLD.md.
"""

from .agents import (
    Action,
    GoTo,
    RelationSpec,
    Resident,
    ResidentSpec,
    Routine,
    SetActivity,
    SetObjectState,
)
from .clock import Clock, format_minutes, parse_time_of_day
from .model import Town
from .pathfinding import Pathfinder, astar, bfs_field, descend
from .perception import Perception, Seen, perceive, perceive_bruteforce
from .social import SocialGraph
from .town_map import (
    DEFAULT_LEGEND,
    PLACE_KINDS,
    MapError,
    MapObject,
    MapProblem,
    MapSpec,
    ObjectSpec,
    Place,
    PlaceSpec,
    Terrain,
    TownMap,
    UnknownPlaceError,
)

__all__ = [
    "DEFAULT_LEGEND",
    "PLACE_KINDS",
    "Action",
    "Clock",
    "GoTo",
    "MapError",
    "MapObject",
    "MapProblem",
    "MapSpec",
    "ObjectSpec",
    "Pathfinder",
    "Perception",
    "Place",
    "PlaceSpec",
    "RelationSpec",
    "Resident",
    "ResidentSpec",
    "Routine",
    "Seen",
    "SetActivity",
    "SetObjectState",
    "SocialGraph",
    "Terrain",
    "Town",
    "TownMap",
    "UnknownPlaceError",
    "astar",
    "bfs_field",
    "descend",
    "format_minutes",
    "parse_time_of_day",
    "perceive",
    "perceive_bruteforce",
]
