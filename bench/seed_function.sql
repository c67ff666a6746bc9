CREATE OR REPLACE FUNCTION public.notify_orchestrator_secure()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
  secret text;
  token text;
  url text := TG_ARGV[0];
  headers jsonb;
  request_id bigint;
  payload jsonb;
  timeout_ms integer := 5000;
BEGIN
  -- 1. Get Secret
  SELECT decrypted_secret INTO secret
  FROM vault.decrypted_secrets
  WHERE name = 'app_jwt_secret';

  IF secret IS NULL THEN
    RAISE EXCEPTION 'app_jwt_secret not found in vault';
  END IF;

  -- 2. Sign Token (valid for 1 hour)
  token := sign(
    json_build_object(
      'role', 'service_role',
      'iss', 'supabase',
      'exp', (extract(epoch from now()) + 3600)::bigint,
      'sub', 'orchestrator'
    ),
    secret
  );

  -- 3. Build Headers
  headers := jsonb_build_object(
    'Content-Type', 'application/json',
    'Authorization', 'Bearer ' || token
  );

  -- 4. Build Payload
  payload := jsonb_build_object(
    'old_record', OLD,
    'record', NEW,
    'type', TG_OP,
    'table', TG_TABLE_NAME,
    'schema', TG_TABLE_SCHEMA
  );

  -- 5. Send Request
  SELECT http_post INTO request_id
  FROM net.http_post(
    url,
    payload,
    '{}'::jsonb, -- params
    headers,
    timeout_ms
  );

  RETURN NEW;
END;
$$;
