-- What downloads record besides learned CRC-32s, as records of their own (before this they were
-- stored in {table}_crcs as fake CRCs; those rows are no longer read, and purge-expired forgets them).
-- Keys are hex SHA-256s, so an ETag or src of any length fits a primary key.

-- How many bytes of one zip version (its strong ETag), from its first, are known to have gone out:
-- a resume without If-Range is honoured only inside them. Only ever raised.
CREATE TABLE IF NOT EXISTS {table}_served (
    version_sha256 TEXT PRIMARY KEY,
    delivered BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL
);

-- srcs whose validators (ETag, Last-Modified) were seen to differ between requests: bundles naming
-- them are served without ranges or ETag.
CREATE TABLE IF NOT EXISTS {table}_unstable (
    src_sha256 TEXT PRIMARY KEY,
    marked_at BIGINT NOT NULL
);
