-- The events that end credentials early, by when they were recorded: every node reads the
-- last few seconds of them on each wake-up (src/auth/revocation.rs), past the feed's
-- horizon. The list must match the one in that query, or the index is not used.
CREATE INDEX IF NOT EXISTS events_credential_ends ON events (recorded_at)
    WHERE event_type IN ('SessionRevoked', 'ApiKeyRevoked', 'ApiKeyRotated', 'RoleGranted', 'RoleRevoked');
