"""The bus: ZeroMQ publisher and subscriber, the message schema, CURVE security and the many-stations proxy."""
