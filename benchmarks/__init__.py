"""Benchmarks: attention memory and speed against length, and whole-model training speed."""
