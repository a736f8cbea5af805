"""The panel's APIRouter, on its own so that the page modules (routes.py, settings.py) add to it
without importing the package that imports them (no import cycle)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
