"""The service: the daemon and its per-source pipeline (reader, clips, recorder), signals, systemd, metrics, watchdog and logging."""
