-- How an item was routed to Redis, so an SQL read can put it back there (read promotion):
-- NULL = not routed to Redis (SubmitOptions::durable), 0 = cached without TTL, n = TTL in ms.
ALTER TABLE sync_items ADD COLUMN redis_ttl_ms INTEGER NULL;
