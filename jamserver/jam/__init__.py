"""The jam's rules, pure (no I/O, time passed in): protocol, session, validation, rate limits."""
