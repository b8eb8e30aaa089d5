"""Leaderboard and plots, rendered from result files alone (deterministic output)."""

from .leaderboard import render_leaderboard

__all__ = ["render_leaderboard"]
