"""What MLflow runs to build a logged policy, SFT or base model (see :mod:`salmon.mlflow_model`)."""

from mlflow.models import set_model

from salmon.mlflow_model import PolicyModel

set_model(PolicyModel())
