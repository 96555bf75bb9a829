"""The audit log: a hash-chained, append-only table and the one function that appends to it.

Revision ID: 0001
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Serializes appends across every process; distinct from libs/common/migrations.py's lock.
APPEND_LOCK_ID = 0x61756474


def upgrade() -> None:
    op.execute("""
        CREATE TABLE audit.entries (
            id bigint PRIMARY KEY CHECK (id > 0),
            at timestamptz NOT NULL,
            principal text NOT NULL,
            role text NOT NULL,
            action text NOT NULL,
            resource text NOT NULL,
            outcome text NOT NULL,
            trace_id text NOT NULL,
            via text NOT NULL,
            detail text NOT NULL,
            prev_hash bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
            hash bytea NOT NULL CHECK (octet_length(hash) = 32)
        )
    """)
    # The hashed encoding, version 1; libs/common/audit.py's _digest is its twin and the
    # module docstring its specification. Length prefixes keep fields from running together.
    # Both are STABLE like convert_to: a stricter label would stop the planner inlining them,
    # and each append would then parse their bodies anew (two thirds of its server time).
    op.execute("""
        CREATE FUNCTION audit.field(value text) RETURNS bytea
        LANGUAGE sql STABLE STRICT PARALLEL SAFE
        AS $$ SELECT int4send(length(convert_to(value, 'UTF8'))) || convert_to(value, 'UTF8') $$
    """)
    op.execute("""
        CREATE FUNCTION audit.digest(
            id bigint, at timestamptz, principal text, role text, action text, resource text,
            outcome text, trace_id text, via text, detail text, prev_hash bytea
        ) RETURNS bytea
        LANGUAGE sql STABLE STRICT PARALLEL SAFE
        AS $$
            SELECT sha256(
                convert_to('agentry.audit.v1', 'UTF8')
                || int8send(id)
                || int8send((extract(epoch FROM at) * 1000000)::bigint)
                || audit.field(principal) || audit.field(role) || audit.field(action)
                || audit.field(resource) || audit.field(outcome) || audit.field(trace_id)
                || audit.field(via) || audit.field(detail)
                || prev_hash
            )
        $$
    """)
    # Lock, read the head, insert a batch: all on the server, so the lock is never held
    # across a network round trip, and the caller's one statement is its own transaction.
    # Each statement of a volatile function takes a fresh snapshot under READ COMMITTED, so
    # the head read after the lock sees the append that held it before.
    op.execute(f"""
        CREATE FUNCTION audit.append(
            principals text[], roles text[], actions text[], resources text[],
            outcomes text[], trace_ids text[], vias text[], details text[]
        ) RETURNS bigint
        LANGUAGE plpgsql VOLATILE
        AS $$
        DECLARE
            first_id bigint;
            new_at timestamptz;
            prev bytea;
            new_hash bytea;
        BEGIN
            IF current_setting('transaction_isolation') <> 'read committed' THEN
                RAISE EXCEPTION 'audit.append needs READ COMMITTED, not %',
                    current_setting('transaction_isolation');
            END IF;
            PERFORM pg_advisory_xact_lock({APPEND_LOCK_ID});
            SELECT e.id + 1, e.hash INTO first_id, prev
              FROM audit.entries AS e ORDER BY e.id DESC LIMIT 1;
            IF NOT FOUND THEN
                first_id := 1;
                prev := decode(repeat('00', 32), 'hex');
            END IF;
            -- Taken under the lock, so times follow ids.
            new_at := clock_timestamp();
            FOR i IN 1 .. coalesce(array_length(principals, 1), 0) LOOP
                new_hash := audit.digest(
                    first_id + i - 1, new_at, principals[i], roles[i], actions[i],
                    resources[i], outcomes[i], trace_ids[i], vias[i], details[i], prev);
                INSERT INTO audit.entries
                    (id, at, principal, role, action, resource, outcome, trace_id, via,
                     detail, prev_hash, hash)
                VALUES
                    (first_id + i - 1, new_at, principals[i], roles[i], actions[i],
                     resources[i], outcomes[i], trace_ids[i], vias[i], details[i], prev,
                     new_hash);
                prev := new_hash;
            END LOOP;
            -- The batch's entries have the ids that follow it, in order.
            RETURN first_id;
        END
        $$
    """)
    # One statement-level trigger: an UPDATE or DELETE is refused even when it would touch
    # no row. TRUNCATE is left to superusers, who can disable the trigger anyway: refusing
    # them would protect nothing and would stop test and dev resets.
    op.execute("""
        CREATE FUNCTION audit.refuse_change() RETURNS trigger
        LANGUAGE plpgsql
        AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' AND current_setting('is_superuser') = 'on' THEN
                RETURN NULL;
            END IF;
            RAISE EXCEPTION 'audit.entries is append-only: % is refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER entries_append_only
        BEFORE UPDATE OR DELETE OR TRUNCATE ON audit.entries
        FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()
    """)
