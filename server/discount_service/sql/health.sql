-- Whether the database answers.
--
-- Each block starts with `-- name: <name>`, then a one-line description; the store loads the blocks
-- of every sql/*.sql but schema.sql into one dict by name and is the only module that executes SQL.
-- Parameters are psycopg named placeholders (%(name)s), except where a block says otherwise.

-- name: ping
-- Proves a connection works (health checks, and the idle listener's keepalive).
SELECT 1;
