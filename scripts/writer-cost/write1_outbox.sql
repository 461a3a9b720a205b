-- One writer transaction: upsert one order, insert one outbox row (256-byte payload) into outbox.
-- Variants B, C, D and B+poll*; run.sh makes those of A (into outbox_plain) and L (the ordering lock first) from it.
\set oid random(1, 100000)
BEGIN;
INSERT INTO orders (id, status, amount, updated_at) VALUES (:oid, 'placed', 1, now())
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, amount = orders.amount + 1, updated_at = EXCLUDED.updated_at;
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers)
    VALUES ('order', CAST(:oid AS text), 'OrderPlaced', 'order.placed',
            convert_to(rpad('{"order_id":' || :oid || ',"status":"placed","note":"', 254, 'x') || '"}', 'UTF8'),
            '{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "source": "bench"}');
COMMIT;
