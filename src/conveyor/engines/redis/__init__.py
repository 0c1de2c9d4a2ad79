"""The Redis engine (``redis://``, ``rediss://``; Redis Cluster with ``?cluster=1``).

Install with ``pip install 'conveyor[redis]'``. See :class:`RedisEngine` and docs/redis.md.
"""
