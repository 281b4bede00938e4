-- Webhooks (services/notifier): a job's webhook URL is part of its request (`request->>'webhook'`, the key's
-- default filled in by the gateway); its delivery's last state is kept on the job for its view.
ALTER TABLE jobs ADD COLUMN webhook_status text
    CHECK (webhook_status IN ('pending', 'delivered', 'failing', 'gave_up'));
ALTER TABLE jobs ADD COLUMN webhook_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN webhook_last_status_code integer;
ALTER TABLE jobs ADD COLUMN webhook_last_error text;
ALTER TABLE jobs ADD COLUMN webhook_last_attempt_at timestamptz;

-- Each key signs its webhooks with a secret of its own (HMAC-SHA256). Stored as it is: the notifier needs the
-- secret itself to sign (SECURITY.md says so). Keys made before this migration get a random one; their owner
-- reads a new one with `clipjet keys webhook-secret ID` (which rotates it). A key may name a default webhook.
ALTER TABLE api_keys ADD COLUMN webhook_secret text NOT NULL
    DEFAULT 'whsec_' || replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
ALTER TABLE api_keys ALTER COLUMN webhook_secret DROP DEFAULT;
ALTER TABLE api_keys ADD COLUMN default_webhook text;
