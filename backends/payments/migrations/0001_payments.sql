-- Authorised payments (each row is one charge) and the idempotency record that
-- makes a repeated request return the first answer instead of charging again.
CREATE TABLE payments (
    id           TEXT PRIMARY KEY NOT NULL,
    sub          TEXT NOT NULL,
    order_id     TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    currency     TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('authorized', 'refunded')),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX payments_by_order ON payments (order_id);

-- Keys are scoped to the caller: one client's key never answers another's request.
CREATE TABLE idempotency_keys (
    sub         TEXT NOT NULL,
    key         TEXT NOT NULL,
    request     TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (sub, key)
);
