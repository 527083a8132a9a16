-- CRC-32s learned while streaming, keyed by the exact source version they were computed for
-- (src + size + ETag + Last-Modified, hashed). They let a resumed download write the zip's
-- central directory without reading the files again.
CREATE TABLE IF NOT EXISTS {table}_crcs (
    identity TEXT PRIMARY KEY,
    crc32 BIGINT NOT NULL,
    learned_at BIGINT NOT NULL
);
