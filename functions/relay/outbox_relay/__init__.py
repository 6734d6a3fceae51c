"""Transactional outbox relay: Aurora MySQL / MariaDB outbox table -> Kafka (Amazon MSK)."""

__version__ = "0.1.0"
