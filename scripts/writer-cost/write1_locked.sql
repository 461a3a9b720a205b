-- Variant L: write1_outbox.sql with the ordering lock taken first, as the
-- docs/design.md (Ordering) asks of writers that need commit order per aggregate.
\set oid random(1, 100000)
BEGIN;
SELECT outbox_lock('order', CAST(:oid AS text));
INSERT INTO orders (id, status, amount, updated_at) VALUES (:oid, 'placed', 1, now())
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, amount = orders.amount + 1, updated_at = EXCLUDED.updated_at;
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers)
    VALUES ('order', CAST(:oid AS text), 'OrderPlaced', 'order.placed',
            convert_to(rpad('{"order_id":' || :oid || ',"status":"placed","note":"', 254, 'x') || '"}', 'UTF8'),
            '{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "source": "bench"}');
COMMIT;
