"""Faust agents, one module per stream job; each loop body calls pure functions from app/ and tables/."""
