-- release: 0.1
-- The cluster's registry: live nodes with a heartbeat, and which users are
-- connected on which node (the groundwork of presence). A node that stops
-- heart-beating is gone: any node deletes it (and, by cascade, its
-- connections) once its heartbeat is older than the expiry.

CREATE TABLE nodes (
    name         text        PRIMARY KEY,
    url          text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    connections  integer     NOT NULL DEFAULT 0
);

CREATE TABLE node_users (
    node        text        NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    user_id     bigint      NOT NULL,
    connections integer     NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, user_id)
);
CREATE INDEX node_users_user_id_idx ON node_users (user_id);
