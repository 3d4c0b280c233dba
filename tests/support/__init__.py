"""Helpers the tests share: servers, workers, browsers and fault tools on real parts."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
