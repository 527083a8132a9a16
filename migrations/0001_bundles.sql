-- Bundles and their files. {table} is TABLE_NAME (default "bundles").
-- Files live in their own table, one row each, so appends are inserts (atomic, never a rewrite
-- of the whole list) and a bundle of 10,000 files is no special case.
CREATE TABLE IF NOT EXISTS {table} (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    filename TEXT NOT NULL,
    compression TEXT NOT NULL DEFAULT 'stored',
    expiration_date BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    file_count INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS {table}_expiration ON {table} (expiration_date);

CREATE TABLE IF NOT EXISTS {table}_files (
    bundle_id TEXT NOT NULL REFERENCES {table} (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    src TEXT NOT NULL,
    dst TEXT,
    crc32 BIGINT,
    PRIMARY KEY (bundle_id, position)
);
