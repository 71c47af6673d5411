"""One member's rules, pure: its connection (join first, roles), rate limits, and its backlog of outgoing frames."""
