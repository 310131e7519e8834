"""The HTTP API (contract §5): Starlette + msgspec + psycopg_pool."""
