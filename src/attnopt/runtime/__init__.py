"""Where and how a run executes: device, seeding, CPU threads, ``--compile``."""
