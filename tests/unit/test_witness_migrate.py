"""The witness's known head revision is Alembic's: opening a current witness compares against it without Alembic."""
from sqlalchemy import create_engine

from cutover.witness.migrate import HEAD, current_revision, head_revision, upgrade_in


def test_the_known_head_is_the_head_of_the_migration_scripts():
    assert HEAD == head_revision()


def test_a_fresh_witness_is_migrated_once_to_the_head_and_then_read_as_current(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'witness.db'}")
    with engine.begin() as conn:
        assert current_revision(conn) is None
        assert upgrade_in(conn) is True
    with engine.begin() as conn:
        assert current_revision(conn) == HEAD
        assert upgrade_in(conn) is False
    engine.dispose()
