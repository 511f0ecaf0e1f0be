-- Digests of the files in watched directories, by path, size and modification time: a
-- restarted scheduler names the checkpoints it has seen without reading them whole again.
CREATE TABLE file_digests (
    path      text   NOT NULL,
    size      bigint NOT NULL,
    mtime_ns  bigint NOT NULL,
    sha256    text   NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    stored_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (path, size, mtime_ns)
);
