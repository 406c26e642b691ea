"""The pipeline's tasks: what the thin KFP components in ``components/`` call, one module per job.

- :mod:`salmon.tasks.common`: the stage tables, the artifacts' shape, digests, the source revision;
- :mod:`salmon.tasks.params`: the pipeline parameters' checks;
- :mod:`salmon.tasks.tracked`: the MLflow side of a stage task (what an outage costs);
- :mod:`salmon.tasks.plan`: the first task, one plan per stage;
- :mod:`salmon.tasks.run`: a stage as a task (config, tracking, digests), locally or as a job;
- :mod:`salmon.tasks.infra`: the base model and the vLLM server;
- :mod:`salmon.tasks.register`: the registry, model cards and the champion gates.
"""
