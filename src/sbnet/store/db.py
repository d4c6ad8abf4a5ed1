"""The Store: engine setup, migrations, serialised write transactions, change feed and snapshot."""

from __future__ import annotations

import functools
import itertools
import json
import pickle
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson
from sqlalchemy import (BigInteger, String, and_, bindparam, cast, create_engine, delete, event,
                        func, insert, literal_column, null, select, text, union_all, update)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from sbnet.store import schema as t


def _dumps(body: Any) -> str:
    """A document as JSON text: by orjson (several times faster), by json what orjson does
    not take (integers beyond 64 bits, keys that are not strings); read back the same."""
    try:
        return orjson.dumps(body).decode()
    except TypeError:
        return json.dumps(body)


def _loads(text: str) -> Any:
    """A document read back (PostgreSQL's json columns), as json would read it: by orjson
    what orjson wrote (compact: no ": " outside strings, so no integer beyond 64 bits, which
    orjson would read as a float), by json what json wrote (_dumps) and anything orjson
    refuses (psycopg2 reads them with json: about 6% of the time a port create holds the GIL)."""
    if '": ' in text:
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sqlite_engine(url: str) -> Engine:
    memory = url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url
    kw: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 60}}
    if memory:
        kw["poolclass"] = StaticPool
    else:
        kw.update(pool_size=8, max_overflow=32, pool_timeout=120)
    engine = create_engine(url, **kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN itself, so writers can ask for IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front: no deadlock when a reader turns writer.
        write = conn.get_execution_options().get("sbnet_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


RETRIES = 3
RETRYABLE = ("40P01", "40001")  # PostgreSQL's deadlock_detected, serialization_failure

# PostgreSQL advisory lock keys (two-int form): (0, 0) is the whole store, shared by scoped
# writers and taken exclusively by the others; (1, hash) is one scoped key.
_STORE_EXCLUSIVE = select(func.pg_advisory_xact_lock(0, 0))
_REVISION_FOR_UPDATE = select(t.revision.c.value).where(t.revision.c.id == 1).with_for_update()
_GET = select(t.resources.c.body).where(t.resources.c.type == bindparam("typ"),
                                        t.resources.c.id == bindparam("ident"))
_PARENT_OF = select(t.resources.c.parent_id).where(t.resources.c.type == bindparam("typ"),
                                                   t.resources.c.id == bindparam("ident"))
_INSERT = insert(t.resources)
_UPDATE = (update(t.resources).where(t.resources.c.type == bindparam("typ"),
                                     t.resources.c.id == bindparam("ident"))
           .values(body=bindparam("body")).returning(t.resources.c.project_id))
_DELETE = (delete(t.resources).where(t.resources.c.type == bindparam("typ"),
                                     t.resources.c.id == bindparam("ident"))
           .returning(t.resources.c.project_id))


def _list_query(by_parent: bool, by_project: bool) -> Any:
    q = select(t.resources.c.body).where(t.resources.c.type == bindparam("typ"))
    if by_parent:
        q = q.where(t.resources.c.parent_id == bindparam("parent"))
    if by_project:
        q = q.where(t.resources.c.project_id == bindparam("project"))
    return q.order_by(t.resources.c.id)


_LISTS = {(a, b): _list_query(a, b) for a in (False, True) for b in (False, True)}
# Insert-unless-present (the primary key decides), for allocations: check and take in one go.
_CLAIMS = {(dialect, table.name): ins(table).on_conflict_do_nothing()
           for dialect, ins in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
           for table in (t.ip_allocations, t.mac_allocations)}
_REVISION_SET = update(t.revision).where(t.revision.c.id == 1).values(value=bindparam("value"))
_CHANGES = insert(t.changes)
_PROVISIONAL_CHANGES = insert(t.changes).values(revision=-func.nextval("sbnet_change_slots"))


_COUNT = select(func.count()).select_from(t.resources).where(
    t.resources.c.type == bindparam("typ"), t.resources.c.project_id == bindparam("project"))


def _key_lock(param: str) -> Any:
    return func.pg_advisory_xact_lock(1, func.hashtext(bindparam(param, type_=String)))


_KEY_LOCK = select(_key_lock("key"))


@functools.lru_cache(maxsize=64)
def _prefetch_query(shape: tuple) -> Any:
    """Tx.prefetch's statement for this shape: one SELECT per read, rows tagged with the
    read's number, lists in id order (built once per shape)."""
    r = t.resources.c
    parts = []
    for n, kind in enumerate(shape):
        tag = literal_column(str(n)).label("n")   # inline: a prepared statement's $n is untyped
        if kind[0] == "count":
            q = select(tag, cast(null(), r.id.type).label("id"), cast(null(), r.body.type)
                       .label("body"), func.count().label("count")).where(
                r.project_id == bindparam(f"r{n}"))
        else:
            q = select(tag, r.id, r.body, cast(null(), BigInteger).label("count"))
            if kind[0] == "get":
                q = q.where(r.id == bindparam(f"a{n}"))
            else:
                if kind[1]:
                    q = q.where(r.parent_id == bindparam(f"p{n}"))
                if kind[2]:
                    q = q.where(r.project_id == bindparam(f"r{n}"))
        parts.append(q.where(r.type == bindparam(f"t{n}")).select_from(t.resources))
    return union_all(*parts).order_by(literal_column("1"), literal_column("2"))


@functools.lru_cache(maxsize=16)
def _claims_query(tables: tuple[str, ...]) -> Any:
    """PostgreSQL: several allocations claimed in one statement (parameters c<i>_<column>),
    each an insert-unless-present; the row returned holds 1 for each one taken, 0 if not."""
    by_name = {tab.name: tab for tab in (t.ip_allocations, t.mac_allocations)}
    taken = []
    for i, name in enumerate(tables):
        table = by_name[name]
        ins = pg_insert(table).values({c.name: bindparam(f"c{i}_{c.name}", type_=c.type)
                                       for c in table.c})
        cte = ins.on_conflict_do_nothing().returning(literal_column("1")).cte(f"c{i}")
        taken.append(select(func.count()).select_from(cte).scalar_subquery())
    return select(*taken)


@functools.lru_cache(maxsize=64)
def _scoped_locks(n: int) -> Any:
    """The whole store shared and n keys (parameters k0...) exclusively, in one statement
    (built once per n: building and caching a statement costs more than running it)."""
    return select(func.pg_advisory_xact_lock_shared(0, 0), *(_key_lock(f"k{i}") for i in range(n)))


class _Driver:
    """A statement compiled once per dialect, to run on the transaction's DBAPI cursor:
    SQLAlchemy's execute costs about 75 us of CPU more per statement than the driver's own
    (127 against 53 us for a document read on PostgreSQL), and a port create runs a dozen.

    On PostgreSQL it is also a prepared statement (PREPARE once per connection, then EXECUTE):
    parsing and planning a port create's read-ahead cost the server about 0.5 ms a time."""

    _compiled: dict[tuple, "_Driver"] = {}
    _names = itertools.count()

    def __init__(self, stmt: Any, dialect: Any, keys: tuple[str, ...] | None) -> None:
        c = stmt.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        self.sql = str(c)
        self.fixed = dict(c.params)      # the values the statement carries (literals)
        self.order = c.positiontup if c.positional else None
        self.prepare: bytes | None = None
        if dialect.name == "postgresql":
            # psycopg2's %(name)s become $1, $2... in the order of first use.
            self.params: list[str] = []

            def number(m: re.Match) -> str:
                if m.group(1) not in self.params:
                    self.params.append(m.group(1))
                return f"${self.params.index(m.group(1)) + 1}"
            body = re.sub(r"%\(([^)]+)\)s", number, self.sql).replace("%%", "%")
            self.name = f"sbnet_{next(self._names)}"
            self.prepare = f"PREPARE {self.name} AS {body}".encode()
            self.execute = f"EXECUTE {self.name}" + (
                f"({', '.join(['%s'] * len(self.params))})" if self.params else "")

    @classmethod
    def of(cls, stmt: Any, dialect: Any, keys: tuple[str, ...] | None = None) -> "_Driver":
        key = (id(stmt), dialect.name, keys)
        drv = cls._compiled.get(key)
        if drv is None:
            drv = cls._compiled[key] = cls(stmt, dialect, keys)
        return drv

    def args(self, params: dict) -> Any:
        p = {**self.fixed, **params}
        return p if self.order is None else tuple(p[k] for k in self.order)

    def execute_args(self, params: dict) -> tuple:
        p = {**self.fixed, **params}
        return tuple(p[k] for k in self.params)


_RESOURCE_KEYS = ("type", "id", "project_id", "parent_id", "body")
_CHANGE_KEYS = ("resource", "id", "op", "project_id", "body")


class Store:
    """One database: SQLite file (WAL) by default, PostgreSQL by URL."""

    def __init__(self, url: str, migrate: bool = True, pool_size: int = 40) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = _sqlite_engine(url)
        else:
            # More kept connections than the API has handler threads (24, and anyio's for the
            # change feed's polls; less per process when several serve one database):
            # overflow ones are closed after each use, and a new one costs a server process
            # fork.  No pre-ping (a round trip on every checkout): a connection the server
            # dropped fails its first statement, and retrying() runs the transaction again
            # on a new one.  Most recently used first: the few connections a steady load
            # needs stay warm (their prepared statements, their server process's caches).
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size // 2,
                                        pool_timeout=120, pool_use_lifo=True,
                                        json_deserializer=_loads)
        # SQLite allows one writer; queueing writers here is fairer and faster than busy-waiting.
        self._local_lock = threading.RLock() if self.is_sqlite else None
        self._memory = self.is_sqlite and isinstance(self.engine.pool, StaticPool)
        if migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest alembic revision shipped in the package."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self._locked(), self.engine.begin() as conn:
            if not self.is_sqlite:
                # Servers starting together on one database must not race to create tables.
                conn.execute(text("SELECT pg_advisory_xact_lock(7366)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        # An in-memory database lives only as long as its one connection: keep it.
        if not self._memory:
            self.engine.dispose()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._local_lock is None:
            yield
            return
        with self._local_lock:
            yield

    @contextmanager
    def write(self, keys: Iterable[str] | None = None) -> Iterator["Tx"]:
        """A write transaction.

        keys None: the whole store, exclusively; writers run one at a time and tx.revision is
        known from the start.  keys given (on PostgreSQL; SQLite has one writer anyway): only
        those keys exclusively and the rest of the store shared, so writers with disjoint keys
        (e.g. port creates on different networks) run at the same time; their revisions are
        taken at the very end, under the revision row's lock held only until commit, so
        revisions still commit in order and the change feed never skips one.
        """
        scoped = keys is not None and not self.is_sqlite
        with self._locked(), self.engine.connect() as conn:
            conn = conn.execution_options(sbnet_write=True)
            if scoped:
                # Advisory locks are released at commit; sorted, so no two writers deadlock.
                held = sorted(set(keys))
                tx = Tx(conn, None, write=True, held=held)
                with tx.sent_transaction():
                    # Sent with the transaction's first statement (one round trip less).
                    tx.queue(_scoped_locks(len(held)), {f"k{i}": k for i, k in enumerate(held)})
                    yield tx
                    tx.flush(commit=True)
                return
            with conn.begin():
                if not self.is_sqlite:
                    conn.execute(_STORE_EXCLUSIVE)
                tx = Tx(conn, conn.execute(_REVISION_FOR_UPDATE).scalar_one(), write=True)
                yield tx
                tx.flush()

    @contextmanager
    def read(self) -> Iterator["Tx"]:
        """A read-only transaction (one consistent snapshot on PostgreSQL and SQLite WAL)."""
        if self._memory:
            with self._locked(), self.engine.connect() as conn, conn.begin():
                yield Tx(conn, None)
            return
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield Tx(conn, None)

    def retrying(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), run again (a few times) when PostgreSQL rolled its transaction back as
        a deadlock victim (writers taking keys on the way can meet in a cycle, rarely), or
        when its connection was found dead (the database restarted since it was pooled;
        SQLAlchemy then empties the pool, and nothing of the transaction was committed)."""
        for attempt in range(1, RETRIES + 1):
            try:
                return fn(*args)
            except DBAPIError as exc:
                if attempt == RETRIES or not (exc.connection_invalidated or getattr(
                        exc.orig, "pgcode", None) in RETRYABLE):
                    raise

    # --- agents' heartbeats, kept apart from the model (no revision, no change) ---

    def put_heartbeat(self, host: str, seen: float, started_at: str, heartbeat_at: str,
                      config: dict) -> None:
        """Record a host's agent's last heartbeat (seen: seconds since the epoch)."""
        ins = {"postgresql": pg_insert, "sqlite": sqlite_insert}[self.engine.dialect.name]
        row = {"host": host, "seen": seen, "started_at": started_at,
               "heartbeat_at": heartbeat_at, "config": config}
        stmt = ins(t.heartbeats).values(row)
        stmt = stmt.on_conflict_do_update(index_elements=[t.heartbeats.c.host], set_={
            k: stmt.excluded[k] for k in ("seen", "started_at", "heartbeat_at", "config")})
        with self._locked(), self.engine.begin() as conn:
            conn.execute(stmt)

    def heartbeats(self, host: str | None = None) -> list[dict]:
        """The recorded heartbeats (of one host, or all)."""
        q = select(t.heartbeats)
        if host is not None:
            q = q.where(t.heartbeats.c.host == host)
        with self.read() as tx:
            return [dict(r._mapping) for r in tx.conn.execute(q)]

    # --- the feed and the snapshot, for host agents and the compiler ---

    def current_revision(self) -> int:
        with self.read() as tx:
            return tx.conn.execute(select(t.revision.c.value)).scalar_one()

    def changes_since(self, revision: int, limit: int | None = None, wait: float = 0.0) -> list[dict]:
        """Changes committed after `revision`, oldest first; resume by passing the last one seen.

        With wait > 0, block up to that many seconds for a first change (a long poll); polling
        the table, rather than an in-process signal, also sees other server processes' commits.
        """
        q = select(t.changes).where(t.changes.c.revision > revision).order_by(t.changes.c.revision)
        if limit:
            q = q.limit(limit)
        deadline = time.monotonic() + wait
        while True:
            with self.read() as tx:
                rows = [dict(r._mapping) for r in tx.conn.execute(q)]
            if rows or time.monotonic() >= deadline:
                return rows
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def snapshot(self) -> dict[str, Any]:
        """The whole model as plain data: {"revision": N, "<type>": [body, ...], ...}."""
        with self.read() as tx:
            out: dict[str, Any] = {"revision": tx.conn.execute(select(t.revision.c.value)).scalar_one()}
            rows = tx.conn.execute(select(t.resources.c.type, t.resources.c.body)
                                   .order_by(t.resources.c.type, t.resources.c.id))
            for typ, body in rows:
                out.setdefault(typ, []).append(body)
            return out


class Claim:
    """An allocation asked for with Tx.claim_mac_later: sent with the transaction's next
    claim, or alone when `taken` is asked first."""

    def __init__(self, tx: "Tx", table: Any, row: dict) -> None:
        self.tx, self.table, self.row = tx, table, row
        self.outcome: bool | None = None

    @property
    def taken(self) -> bool:
        if self.outcome is None and self in self.tx._later:
            self.tx._claim(None, None)    # sends this one (and any others waiting)
        return bool(self.outcome)


class Tx:
    """Operations inside one transaction; writes record a change and bump the revision.

    revision: in an exclusive write, the store's revision so far (counting this transaction's
    changes); None in a read, and in a scoped write until flush() numbers its changes."""

    def __init__(self, conn: Connection, revision: int | None, write: bool = False,
                 held: Iterable[str] = ()) -> None:
        self.conn = conn
        self.revision = revision
        self.write = write
        self._start = revision
        self._pending: list[dict] = []
        self._held = set(held)
        # Documents read or written in this transaction, pickled (each get() hands out its
        # own copy, so a caller changing one changes nothing another holds): a request
        # reads its network several times (policy, visibility, the port's own checks).
        self._docs: dict[tuple[str, str], bytes | None] = {}
        self._cursor: Any = None
        self._decode = conn.dialect.name == "sqlite"   # JSON comes back as text there
        # PostgreSQL statements held back to be sent with the next one, as one query string
        # (one round trip): a scoped write's locks, its inserts, its changes.  The server runs
        # them in order, each seeing the ones before; an error in any fails that send.
        self._queued: list[bytes] = []
        self._queueing = write and revision is None and conn.dialect.name == "postgresql"
        # Lists and counts read ahead by prefetch(), pickled as the documents are; dropped
        # when this transaction writes their type or takes a lock (they may be stale then).
        self._lists: dict[tuple, bytes] = {}
        self._counts: dict[tuple[str, str], int] = {}
        # PostgreSQL: the prepared statements of this connection (see _Driver), and those
        # to prepare in the next round trip, ahead of everything it sends.
        self._pg = conn.dialect.name == "postgresql"
        self._prepared: set[str] | None = None
        self._preparing: list[bytes] = []
        # Allocations asked for with claim_later(), sent with the next claim.
        self._later: list[Claim] = []

    def _text(self, drv: _Driver, params: dict) -> bytes:
        """PostgreSQL: the statement as sent, an EXECUTE of its prepared form (prepared in
        the same round trip the first time on this connection)."""
        if self._prepared is None:
            self._prepared = self.conn.info.setdefault("sbnet_prepared", set())
        if drv.name not in self._prepared:
            self._prepared.add(drv.name)
            self._preparing.append(drv.prepare)
        return self._dbapi_cursor().mogrify(drv.execute, drv.execute_args(params))

    def _exec(self, stmt: Any, params: dict, keys: tuple[str, ...] | None = None) -> Any:
        """Run a hot statement on the DBAPI cursor (see _Driver), after the queued ones in
        the same round trip; errors are raised as SQLAlchemy's would be, a dropped
        connection invalidated as SQLAlchemy does."""
        drv = _Driver.of(stmt, self.conn.dialect, keys)
        if self._pg:
            self._queued.append(self._text(drv, params))
            return self._run(drv.sql, params)
        return self._run(drv.sql, params, drv.sql, drv.args(params))

    def queue(self, stmt: Any, params: dict, keys: tuple[str, ...] | None = None) -> None:
        """Send this statement with the next one (at once where statements are not queued)."""
        if not self._queueing:
            self._exec(stmt, params, keys)
            return
        self._queued.append(self._text(_Driver.of(stmt, self.conn.dialect, keys), params))

    def _send_queued(self) -> None:
        if self._queued:
            self._run("(queued statements)", {})

    @contextmanager
    def sent_transaction(self) -> Iterator[None]:
        """PostgreSQL, a scoped write: BEGIN goes with the first statement and COMMIT (by
        flush) with the last, two round trips fewer than the driver's own BEGIN and COMMIT
        (the connection runs in autocommit meanwhile); anything failing rolls it back."""
        raw = self.conn.connection.dbapi_connection
        raw.autocommit = True
        self._queued.append(b"BEGIN")
        try:
            yield
        except BaseException:
            if not raw.closed and raw.info.transaction_status != 0:   # not idle
                try:
                    with raw.cursor() as cur:
                        cur.execute("ROLLBACK")
                except self.conn.dialect.loaded_dbapi.Error as exc:
                    self.conn.invalidate(exc)
            raise
        finally:
            if not raw.closed:
                raw.autocommit = False

    def _sa(self, stmt: Any, params: Any = None) -> Any:
        """A statement run by SQLAlchemy (the cold ones), after the queued ones."""
        self._send_queued()
        return self.conn.execute(stmt, params)

    def _dbapi_cursor(self) -> Any:
        if self._cursor is None:
            self._cursor = self.conn.connection.dbapi_connection.cursor()
        return self._cursor

    def _run(self, what: str, params: dict, sql: Any = None, args: Any = None) -> Any:
        """Send sql with args, or (PostgreSQL) what is to be prepared and the queued
        statements, in one round trip."""
        preparing = self._preparing
        if sql is None:
            info = self.conn.info
            if info.get("sbnet_deallocate"):   # see below
                preparing = [b"DEALLOCATE ALL", *preparing]
            sql = b";".join([*preparing, *self._queued])
        self._queued, self._preparing = [], []
        cursor = self._dbapi_cursor()
        try:
            cursor.execute(sql, args)
        except self.conn.dialect.loaded_dbapi.Error as exc:
            gone = self.conn.dialect.is_disconnect(exc, self.conn.connection.dbapi_connection,
                                                   cursor)
            if gone:
                self.conn.invalidate(exc)
            elif preparing:
                # Which of these got prepared before the failure is not known: start again
                # from none with the connection's next round trip.
                self._prepared.clear()
                self.conn.info["sbnet_deallocate"] = True
            raise DBAPIError.instance(what, params, exc, self.conn.dialect.loaded_dbapi.Error,
                                      connection_invalidated=gone) from exc
        if preparing and preparing[0] == b"DEALLOCATE ALL":
            self.conn.info["sbnet_deallocate"] = False
        return cursor

    def _body(self, value: Any) -> Any:
        return json.loads(value) if self._decode and isinstance(value, str) else value

    def lock(self, key: str) -> None:
        """Hold `key` exclusively until commit: for what a scoped write finds it needs on the
        way (an exclusive write holds everything already, a scoped one its keys given up
        front).  Take such keys after the ones given up front, and never two of them in
        different orders."""
        if self.write and self._start is None and key not in self._held:
            self.queue(_KEY_LOCK, {"key": key})   # taken before the next statement runs
            self._held.add(key)
            self._lists.clear()
            self._counts.clear()

    # --- documents ---

    def get(self, typ: str, ident: str) -> dict | None:
        key = (typ, ident)
        if key not in self._docs:
            # fetchall: the statement runs to its end (SQLite keeps an unfinished one open)
            rows = self._exec(_GET, {"typ": typ, "ident": ident}).fetchall()
            self._docs[key] = pickle.dumps(self._body(rows[0][0]), pickle.HIGHEST_PROTOCOL) \
                if rows else None
        doc = self._docs[key]
        return None if doc is None else pickle.loads(doc)

    def _remember(self, typ: str, body: dict | None) -> None:
        if body is not None:
            self._docs[typ, body["id"]] = pickle.dumps(body, pickle.HIGHEST_PROTOCOL)

    def parent_of(self, typ: str, ident: str) -> str | None:
        return self._sa(_PARENT_OF, {"typ": typ, "ident": ident}).scalar()

    def prefetch(self, gets: Iterable[tuple[str, str]] = (),
                 lists: Iterable[tuple[str, str | None, str | None]] = (),
                 counts: Iterable[tuple[str, str]] = ()) -> None:
        """Read these documents (type, id), lists (type, parent_id, project_id) and counts
        (type, project_id) in one statement, sent with the queued ones, for the get(), list()
        and count() calls that follow: a scoped write's reads in one round trip (PostgreSQL;
        elsewhere nothing is read ahead)."""
        if not self._queueing:
            return
        gets = [g for g in dict.fromkeys(gets) if g not in self._docs]
        lists, counts = list(dict.fromkeys(lists)), list(dict.fromkeys(counts))
        shape = tuple([("get",) for _ in gets] + [("list", l[1] is not None, l[2] is not None)
                                                  for l in lists] + [("count",) for _ in counts])
        if not shape:
            return
        params: dict[str, Any] = {}
        for n, (typ, ident) in enumerate(gets):
            params.update({f"t{n}": typ, f"a{n}": ident})
        for n, (typ, parent, project) in enumerate(lists, len(gets)):
            params.update({f"t{n}": typ, f"p{n}": parent, f"r{n}": project})
        for n, (typ, project) in enumerate(counts, len(gets) + len(lists)):
            params.update({f"t{n}": typ, f"r{n}": project})
        rows = self._exec(_prefetch_query(shape), {k: v for k, v in params.items()
                                                   if v is not None}).fetchall()
        found: dict[int, list] = {}
        for n, _ident, body, count in rows:
            found.setdefault(n, []).append(count if shape[n][0] == "count" else body)
        for n, key in enumerate(gets):
            got = found.get(n)
            self._docs[key] = pickle.dumps(self._body(got[0]), pickle.HIGHEST_PROTOCOL) \
                if got else None
        for n, key in enumerate(lists, len(gets)):
            self._lists[key] = pickle.dumps([self._body(b) for b in found.get(n, [])],
                                            pickle.HIGHEST_PROTOCOL)
        for n, key in enumerate(counts, len(gets) + len(lists)):
            self._counts[key] = found[n][0]

    def _wrote(self, typ: str) -> None:
        for key in [k for k in self._lists if k[0] == typ]:
            del self._lists[key]
        for key in [k for k in self._counts if k[0] == typ]:
            del self._counts[key]

    def list(self, typ: str, parent_id: str | None = None, project_id: str | None = None) -> list[dict]:
        ahead = self._lists.get((typ, parent_id, project_id))
        if ahead is not None:
            return pickle.loads(ahead)
        q = _LISTS[parent_id is not None, project_id is not None]
        params = {"typ": typ}
        if parent_id is not None:
            params["parent"] = parent_id
        if project_id is not None:
            params["project"] = project_id
        return [self._body(r[0]) for r in self._exec(q, params).fetchall()]

    def count(self, typ: str, project_id: str) -> int:
        ahead = self._counts.get((typ, project_id))
        if ahead is not None:
            return ahead
        return self._exec(_COUNT, {"typ": typ, "project": project_id}).fetchall()[0][0]

    def insert(self, typ: str, body: dict, project_id: str, parent_id: str | None = None,
               standard: bool = True) -> dict:
        if standard:
            stamp = now_iso()
            body.update(created_at=stamp, updated_at=stamp, revision_number=1)
        self.queue(_INSERT, {"type": typ, "id": body["id"], "project_id": project_id,
                             "parent_id": parent_id, "body": _dumps(body)}, _RESOURCE_KEYS)
        self._remember(typ, body)
        self._wrote(typ)
        self._record(typ, body["id"], "create", project_id, body)
        return body

    def update(self, typ: str, body: dict, standard: bool = True) -> dict:
        if standard:
            body["revision_number"] = body.get("revision_number", 0) + 1
            body["updated_at"] = now_iso()
        res = self._sa(_UPDATE, {"typ": typ, "ident": body["id"], "body": body})
        self._remember(typ, body)
        self._wrote(typ)
        self._record(typ, body["id"], "update", res.scalar_one(), body)
        return body

    def delete(self, typ: str, body: dict) -> None:
        res = self._sa(_DELETE, {"typ": typ, "ident": body["id"]})
        self._docs[typ, body["id"]] = None
        self._wrote(typ)
        self._record(typ, body["id"], "delete", res.scalar_one(), body)

    def _record(self, typ: str, ident: str, op: str, project_id: str, body: dict | None) -> None:
        assert self.write, "write outside a write transaction"
        row = {"resource": typ, "id": ident, "op": op, "project_id": project_id, "body": body}
        if self.revision is not None:
            self.revision += 1
            row["revision"] = self.revision
        self._pending.append(row)

    def flush(self, commit: bool = False) -> None:
        """Write the recorded changes to the feed; the last step of a write transaction.
        A scoped write's get provisional revisions that a trigger renumbers at commit
        (migrations 0002, 0004), so its revisions are taken at the very end; they go in one
        round trip with its queued statements (and its COMMIT, with commit=True)."""
        if self._start is None:
            for row in self._pending:
                self.queue(_PROVISIONAL_CHANGES, {**row, "body": _dumps(row["body"])},
                           _CHANGE_KEYS)
            self._pending = []
            if commit:
                self._queued.append(b"COMMIT")
            self._send_queued()
            return
        if self._pending:
            self._sa(_REVISION_SET, {"value": self.revision})
            self._sa(_CHANGES, self._pending)
        self._pending = []

    # --- IP addresses ---

    def used_ips(self, subnet_id: str) -> set[str]:
        c = t.ip_allocations.c
        return {r[0] for r in self._sa(select(c.ip_address).where(c.subnet_id == subnet_id))}

    def ip_owner(self, subnet_id: str, ip: str) -> str | None:
        c = t.ip_allocations.c
        return self._sa(select(c.port_id).where(
            and_(c.subnet_id == subnet_id, c.ip_address == ip))).scalar()

    def subnet_ip_ports(self, subnet_id: str) -> list[str]:
        c = t.ip_allocations.c
        return [r[0] for r in self._sa(select(c.port_id).where(c.subnet_id == subnet_id))]

    def claim_ip(self, subnet_id: str, ip: str, network_id: str, port_id: str) -> bool:
        """Allocate ip to the port unless it is taken: one statement, True when it was free."""
        return self._claim(t.ip_allocations, {"subnet_id": subnet_id, "ip_address": ip,
                                              "network_id": network_id, "port_id": port_id})

    def release_port_ips(self, port_id: str) -> None:
        """Release every address claimed for this port."""
        self._sa(delete(t.ip_allocations).where(t.ip_allocations.c.port_id == port_id))

    def release_ip(self, subnet_id: str, ip: str) -> None:
        c = t.ip_allocations.c
        self._sa(delete(t.ip_allocations).where(
            and_(c.subnet_id == subnet_id, c.ip_address == ip)))

    # --- MAC addresses (unique per network, as in Neutron) ---

    def mac_owner(self, network_id: str, mac: str) -> str | None:
        c = t.mac_allocations.c
        return self._sa(select(c.port_id).where(
            and_(c.network_id == network_id, c.mac_address == mac))).scalar()

    def claim_mac(self, network_id: str, mac: str, port_id: str) -> bool:
        """Allocate mac to the port unless the network has it: True when it was free."""
        return self._claim(t.mac_allocations, {"network_id": network_id, "mac_address": mac,
                                               "port_id": port_id})

    def claim_mac_later(self, network_id: str, mac: str, port_id: str) -> "Claim":
        """claim_mac, sent with this transaction's next claim (one round trip for both on
        PostgreSQL); Claim.taken tells the outcome."""
        claim = Claim(self, t.mac_allocations, {"network_id": network_id, "mac_address": mac,
                                                "port_id": port_id})
        if self._queueing:
            self._later.append(claim)
        else:
            claim.outcome = self._claim(claim.table, claim.row)
        return claim

    def _claim(self, table: Any, row: dict) -> bool:
        if not self._later:
            return self._exec(_CLAIMS[self.conn.dialect.name, table.name], row,
                              tuple(row)).rowcount == 1
        claims, self._later = self._later, []
        if table is not None:
            claims.append(Claim(self, table, row))
        params = {f"c{i}_{k}": v for i, c in enumerate(claims) for k, v in c.row.items()}
        outcome = self._exec(_claims_query(tuple(c.table.name for c in claims)),
                             params).fetchall()[0]
        for claim, taken in zip(claims, outcome):
            claim.outcome = taken == 1
        return claims[-1].outcome

    def release_mac(self, network_id: str, mac: str) -> None:
        c = t.mac_allocations.c
        self._sa(delete(t.mac_allocations).where(
            and_(c.network_id == network_id, c.mac_address == mac)))

    # --- segmentation ids ---

    def used_segments(self, network_type: str, physnet: str) -> set[int]:
        c = t.segment_allocations.c
        return {r[0] for r in self._sa(select(c.segmentation_id).where(
            and_(c.network_type == network_type, c.physical_network == physnet)))}

    def add_segment(self, network_type: str, physnet: str, seg_id: int, network_id: str) -> None:
        self._sa(insert(t.segment_allocations).values(
            network_type=network_type, physical_network=physnet, segmentation_id=seg_id,
            network_id=network_id))

    def release_segments(self, network_id: str) -> None:
        self._sa(delete(t.segment_allocations).where(
            t.segment_allocations.c.network_id == network_id))
