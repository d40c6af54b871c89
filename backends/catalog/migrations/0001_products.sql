-- Products and the demo shop's starting range.
CREATE TABLE products (
    sku         TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    currency    TEXT NOT NULL
);

INSERT INTO products (sku, name, description, price_cents, currency) VALUES
    ('KB-ORTHO-01',  'Ortholinear Keyboard', 'A 40% ortholinear mechanical keyboard with hot-swap switches and a walnut case.', 14900, 'EUR'),
    ('MUG-ENAMEL',   'Enamel Camp Mug',      'Speckled blue enamel mug, 350 ml. Survives campfires and stand-ups alike.',      1800, 'EUR'),
    ('LAMP-BRASS',   'Brass Desk Lamp',      'Adjustable brass lamp with a warm 2700 K LED and a weighted base.',               8900, 'EUR'),
    ('NB-DOTGRID',   'Dot-Grid Notebook',    'A5, 192 pages of 100 g/m² paper that takes fountain pen ink without bleeding.',   1450, 'EUR'),
    ('PEN-FOUNTAIN', 'Fountain Pen',         'Steel fine nib, converter included, in a matte black aluminium body.',            4200, 'EUR'),
    ('HP-OPENBACK',  'Open-Back Headphones', 'Studio headphones with velour pads and a detachable cable.',                      19900, 'EUR');
