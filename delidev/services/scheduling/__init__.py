"""Scheduling for a fleet: what a worker can run (agent types, labels), the retry policy for
infrastructure failures, and why a queued job waits. Claims themselves live with the
workers (``services/workers``): this package holds the rules they apply."""
