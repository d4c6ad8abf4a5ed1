"""PostgreSQL: changes of a scoped write get their revisions at commit, from a deferred trigger."""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# A scoped write inserts its changes with provisional revisions (negative, from a sequence).
# At COMMIT the trigger's first firing renumbers them all, in insertion order, after the last
# revision, holding the revision row's lock until the commit is done: revisions commit in
# order, and no client round trip happens under that lock.  Provisional rows are only ever
# visible to their own transaction, so "revision < 0" finds exactly this transaction's.
NUMBER_CHANGES = """
CREATE FUNCTION sbnet_number_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    last bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sbnet_changes WHERE revision = NEW.revision) THEN
        RETURN NULL;  -- an earlier firing in this commit numbered it already
    END IF;
    SELECT count(*) INTO n FROM sbnet_changes WHERE revision < 0;
    UPDATE sbnet_revision SET value = value + n WHERE id = 1 RETURNING value INTO last;
    UPDATE sbnet_changes AS c SET revision = last - n + o.k
      FROM (SELECT revision, row_number() OVER (ORDER BY revision DESC) AS k
              FROM sbnet_changes WHERE revision < 0) AS o
     WHERE c.revision = o.revision;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has one writer at a time: every write numbers its changes itself
    op.execute("CREATE SEQUENCE sbnet_change_slots")
    op.execute(NUMBER_CHANGES)
    op.execute("CREATE CONSTRAINT TRIGGER sbnet_number_changes AFTER INSERT ON sbnet_changes "
               "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.revision < 0) "
               "EXECUTE FUNCTION sbnet_number_changes()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER sbnet_number_changes ON sbnet_changes")
    op.execute("DROP FUNCTION sbnet_number_changes()")
    op.execute("DROP SEQUENCE sbnet_change_slots")
