"""Monitoring: the Prometheus metrics, the live gauges computed from the service's state,
the live drift windows, and logging."""
