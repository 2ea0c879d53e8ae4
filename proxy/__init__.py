"""Predis proxy: RESP front end that forwards to a real Redis."""
