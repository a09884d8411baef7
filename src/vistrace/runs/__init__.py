"""Run folders and the batch runners behind the CLI: trace, eval, attend, score, build, export."""
