"""KFP pipelines: composition only (tasks, parameters, pod settings).

``pipelines.salmon`` is the SALMON graph; ``pipelines.platform`` holds every Kubernetes pod
setting in one place; ``pipelines.local`` runs the graph with ``kfp.local``; ``pipelines.cli``
implements ``salmon pipeline`` and ``salmon demo`` (the ``salmon`` package loads it by name, so
that salmon itself never imports kfp).
"""
