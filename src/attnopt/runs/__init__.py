"""The run folder and what is written into it: logs, metrics, gates, atomic file writes."""
