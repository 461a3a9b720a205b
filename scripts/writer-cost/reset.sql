-- Run before every measurement so each run starts from the same state:
-- no wake-up trigger, empty outboxes, 100k fresh orders, a fresh checkpoint.
SET client_min_messages = warning;
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP TRIGGER IF EXISTS outbox_notify_row ON outbox;
TRUNCATE outbox, outbox_plain, orders;
INSERT INTO orders SELECT g, 'new', 0, now() FROM generate_series(1, 100000) g;
VACUUM ANALYZE orders, outbox, outbox_plain;
CHECKPOINT;
