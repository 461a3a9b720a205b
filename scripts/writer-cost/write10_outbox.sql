-- One writer transaction: upsert one order, insert ten outbox rows (256-byte payloads, one multi-row INSERT) into outbox.
-- Variants B10, C10 and D10; run.sh makes that of A10 (into outbox_plain) from it.
\set oid random(1, 100000)
BEGIN;
INSERT INTO orders (id, status, amount, updated_at) VALUES (:oid, 'placed', 1, now())
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, amount = orders.amount + 1, updated_at = EXCLUDED.updated_at;
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, routing_key, payload, headers)
    SELECT 'order', CAST(:oid AS text), 'OrderLineAdded', 'order.line_added',
           convert_to(rpad('{"order_id":' || :oid || ',"line":' || g || ',"note":"', 254, 'x') || '"}', 'UTF8'),
           '{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "source": "bench"}'
    FROM generate_series(1, 10) AS g;
COMMIT;
