"""Subscribers of the bus: the terminal view (listen), detection tables (export) and the MQTT bridge."""
