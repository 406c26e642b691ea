"""One readable recipe per stage: a typed config in, artifacts and metrics out.

Each module has ``run(config) -> StageResult`` and runs alone as
``python -m salmon.stages.<stage> [--preset P] [--config FILE] [key=value ...]``.
"""
