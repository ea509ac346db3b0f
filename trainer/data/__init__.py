"""Dataset layer: spec strings (`idx:DIR`, `folder:DIR`, `builtin:NAME`) -> preprocessed tensors."""
from trainer.data.builtin import BUILTINS
from trainer.data.errors import DatasetError
from trainer.data.load import dataset_classes, load_dataset
from trainer.data.task_data import TaskData

__all__ = ["BUILTINS", "DatasetError", "TaskData", "dataset_classes", "load_dataset"]
