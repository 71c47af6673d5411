"""The jam's rules, pure (no I/O, time passed in): the prompt, protocol, validation, session, member connection,
rate limits, playout clock and cut timing."""
