"""Runnable recipes: postroom inside python-telegram-bot, aiogram, Telethon and an HTTP gateway.

Each file runs on its own (`python examples/<name>.py`, settings from environment variables)
and exposes the function `tests/examples/` drives.
"""
