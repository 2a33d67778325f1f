"""Getting messages out and commands in: the MQTT connection and the durable outbox."""
