"""The engine's Lua scripts: read from the package once, loaded with SCRIPT LOAD, run with
EVALSHA, and loaded again when a server answers NOSCRIPT (after a restart or a failover)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

_PACKAGE = "conveyor.engines.redis"
#: Helpers every script starts with (Redis scripts cannot import one another).
_PRELUDE = "_lib.lua"
NAMES = (
    "enqueue",
    "reserve",
    "extend",
    "settle",
    "report",
    "redrive",
    "delete",
    "trim",
    "pause",
    "get",
    "list",
    "stats",
    "next_due",
)

Client = Redis | RedisCluster


@dataclass(frozen=True)
class Script:
    """One Lua script, prelude included, and the SHA1 that EVALSHA names it by."""

    name: str
    source: str
    sha: str


@cache
def scripts() -> dict[str, Script]:
    """Every script of the engine, by name (files read once per process)."""
    folder = resources.files(_PACKAGE)
    prelude = folder.joinpath(_PRELUDE).read_text(encoding="utf-8")
    out = {}
    for name in NAMES:
        source = prelude + "\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        out[name] = Script(name, source, sha)
    return out


#: One script call: the script, its KEYS, its ARGV.
Call = tuple[Script, Sequence[str], Sequence[Any]]


class ScriptRunner:
    """Runs scripts on one client (a server or a cluster), reloading them when needed."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.scripts = scripts()

    async def load(self) -> None:
        """SCRIPT LOAD every script (on a cluster, redis-py sends it to every primary)."""
        for script in self.scripts.values():
            await self.client.script_load(script.source)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA one script; on NOSCRIPT, load the scripts and run it again."""
        try:
            return await self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # NOSCRIPT means the script did not run, so running it again is safe.
            await self.load()
            return await self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Run several scripts in one round trip (a non-transactional pipeline; on a
        cluster, one per node). Raises the first error any of them answered."""
        if len(calls) == 1:
            return [await self.run(*calls[0])]
        results = await self._pipeline(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            await self.load()
            again = await self._pipeline([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
