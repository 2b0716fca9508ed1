"""Hostile clients against a real mqttd process over real sockets (issue 13, item 7)."""
