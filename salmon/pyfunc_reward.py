"""What MLflow runs to build a logged reward model (see :mod:`salmon.mlflow_model`)."""

from mlflow.models import set_model

from salmon.mlflow_model import RewardModelPyfunc

set_model(RewardModelPyfunc())
