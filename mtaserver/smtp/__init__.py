"""The SMTP server: the sans-IO engine (engine.py), the asyncio shell (protocol.py), connection rates (anvil.py)."""
