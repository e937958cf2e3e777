"""Small shared helpers (atomic file writes, JSONL I/O, seeding). Look here before writing a new one."""
