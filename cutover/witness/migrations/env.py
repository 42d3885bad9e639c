"""Alembic environment of the witness database (its own version table, so it can share a database with nothing
else's history). Online only. `cutover.witness.migrate.upgrade` hands in an open connection inside a transaction
that already holds the witness's write lock; run standalone (`alembic -x` style, for writing a new revision) it opens
the URL in the Config."""
from alembic import context
from sqlalchemy import create_engine

from cutover.witness.schema import VERSION_TABLE, metadata

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


run_migrations_online()
