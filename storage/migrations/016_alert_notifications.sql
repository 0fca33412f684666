-- 016: every alert of every Alertmanager notification (`tradeflow alerts receive`), one row per alert
-- state. The natural key is the state Alertmanager notifies about: which receiver was notified, which
-- alert (fingerprint: a hash of its labels), firing or resolved, and since when. A resent notification
-- (repeat_interval, a retry) bumps `deliveries` and `last_received_at`, never adds a row.
CREATE TABLE alert_notifications (
    receiver          text NOT NULL,
    fingerprint       text NOT NULL,
    status            text NOT NULL CHECK (status IN ('firing', 'resolved')),
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz,
    alertname         text NOT NULL,
    severity          text,
    labels            jsonb NOT NULL,
    annotations       jsonb NOT NULL,
    generator_url     text NOT NULL,
    group_key         text NOT NULL,
    first_received_at timestamptz NOT NULL DEFAULT now(),
    last_received_at  timestamptz NOT NULL DEFAULT now(),
    deliveries        integer NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
    PRIMARY KEY (receiver, fingerprint, status, starts_at)
);
CREATE INDEX alert_notifications_received_idx ON alert_notifications (first_received_at);
CREATE INDEX alert_notifications_alertname_idx ON alert_notifications (alertname, starts_at);
COMMENT ON TABLE alert_notifications IS
    'Alertmanager notifications, one row per (receiver, alert fingerprint, status, startsAt); resends counted in deliveries.';
COMMENT ON COLUMN alert_notifications.ends_at IS 'NULL while firing (Alertmanager sends the zero time); the resolve time once resolved.';
COMMENT ON COLUMN alert_notifications.annotations IS 'the latest delivery''s annotations (they may quote a changing value)';
