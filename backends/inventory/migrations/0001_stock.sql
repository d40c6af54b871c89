-- Stock per SKU and reservations against it. Every unit is in exactly one of
-- available, reserved or sold; the CHECKs keep each count from going negative.
CREATE TABLE stock (
    sku       TEXT PRIMARY KEY NOT NULL,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved  INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold      INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0)
);

-- A reservation released before it was ever made is kept (with no items) so a
-- late duplicate of the reserve call cannot take stock afterwards.
CREATE TABLE reservations (
    id         TEXT PRIMARY KEY NOT NULL,
    sub        TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('reserved', 'released', 'committed')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE reservation_items (
    reservation_id TEXT NOT NULL REFERENCES reservations (id),
    sku            TEXT NOT NULL,
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);

-- The catalog's demo products, 25 of each so the demo shows stock going down.
INSERT INTO stock (sku, available) VALUES
    ('KB-ORTHO-01', 25),
    ('MUG-ENAMEL', 25),
    ('LAMP-BRASS', 25),
    ('NB-DOTGRID', 25),
    ('PEN-FOUNTAIN', 25),
    ('HP-OPENBACK', 25);
