"""Puts ``tests/`` on the import path, so that every suite shares ``leaks``."""
