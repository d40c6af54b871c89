-- Orders and their lines. An order is written `pending` before any other
-- service is asked for anything, and ends `confirmed` or `failed` (with a reason).
CREATE TABLE orders (
    id          TEXT PRIMARY KEY NOT NULL,
    sub         TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'failed')),
    reason      TEXT,
    total_cents INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    payment_id  TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX orders_by_sub ON orders (sub, created_at);

CREATE TABLE order_items (
    order_id    TEXT NOT NULL REFERENCES orders (id),
    line        INTEGER NOT NULL,
    sku         TEXT NOT NULL,
    name        TEXT NOT NULL,
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, line)
);
