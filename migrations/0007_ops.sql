-- release: 0.2
-- Operations: the echo probe's system user and channel, and each node's last probe result.
--
-- The echo probe (chatd/services/echo.py) sends a message to itself through the
-- whole path every few seconds. It sends as the system user, id 0, in the
-- system channel, id 0, of which it is the only member. No client can name
-- id 0 (every id on the wire is 1 or more), the user is disabled with no
-- password (no login, left out of user search), and the lists admins see leave
-- id 0 out. Ids are given explicitly (OVERRIDING SYSTEM VALUE); the identity
-- sequences, which start at 1, are untouched.

INSERT INTO users (id, username, display_name, password_hash, is_admin, disabled)
OVERRIDING SYSTEM VALUE
VALUES (0, 'chatd:system', 'chatd system', NULL, false, true);

INSERT INTO channels (id, kind, name, created_by, member_count)
OVERRIDING SYSTEM VALUE
VALUES (0, 'group', 'chatd:echo', 0, 1);

INSERT INTO members (channel_id, user_id) VALUES (0, 0);

-- The last echo round per node, for `chatd stats` (the registry's nodes rows are
-- rewritten on every start; this table is only upserted by the probe).
CREATE TABLE node_echo (
    node        text             PRIMARY KEY,
    roundtrip_s double precision,
    error       text,
    at          timestamptz      NOT NULL DEFAULT now()
);
