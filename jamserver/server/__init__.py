"""asyncio + Starlette: routes, members' sockets, rooms, their clip loops, fan-out, the engine, streams, metrics and
the REST API."""
