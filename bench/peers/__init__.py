"""One adapter per library, each in its own module so that a driver imports only its own.

``ADAPTERS`` maps a target name to ``module:Class``; the orchestrator reads it without
importing any library (its environment has only Conveyor's).
"""

from __future__ import annotations

import importlib

from bench.peers.base import Adapter

ADAPTERS: dict[str, str] = {
    "conveyor-redis": "bench.peers.conveyor_:ConveyorRedis",
    "conveyor-sqlite": "bench.peers.conveyor_:ConveyorSQLite",
    "celery": "bench.peers.celery_:CeleryAdapter",
    "rq": "bench.peers.rq_:RQAdapter",
    "arq": "bench.peers.arq_:ArqAdapter",
    "saq": "bench.peers.saq_:SaqAdapter",
    "dramatiq": "bench.peers.dramatiq_:DramatiqAdapter",
    "taskiq": "bench.peers.taskiq_:TaskiqAdapter",
    "huey": "bench.peers.huey_:HueyRedis",
    "streaq": "bench.peers.streaq_:StreaqAdapter",
    "bullmq": "bench.peers.bullmq_:BullMQAdapter",
    "huey-sqlite": "bench.peers.huey_:HueySQLite",
}

#: The environment (virtualenv) each target's driver runs in.
ENVS: dict[str, str] = {name: "peers" for name in ADAPTERS}
ENVS.update({"conveyor-redis": "main", "conveyor-sqlite": "main", "arq": "arq"})


def load(name: str) -> type[Adapter]:
    """Import and return the adapter class of target ``name``."""
    module, cls = ADAPTERS[name].split(":")
    adapter: type[Adapter] = getattr(importlib.import_module(module), cls)
    return adapter
