"""What operators watch: Prometheus metrics, health and logging."""
