"""The single exception type raised for every bad dataset input."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DatasetError", "check_num_classes"]


class DatasetError(ValueError):
    """A dataset root, archive, folder layout or image file cannot be used.

    The message always names the offending path and says how to fix it.
    """


def check_num_classes(
    datamodule_num_classes: int = 0,
    model_num_classes: int = 0,
    root: str | Path = "",
) -> None:
    """Raise :class:`DatasetError` if the data and the model disagree on the class count.

    Args:
        datamodule_num_classes: number of classes found in the dataset.
        model_num_classes: number of outputs of the model's classifier.
        root: dataset root, named in the message.
    """
    if int(datamodule_num_classes) != int(model_num_classes):
        raise DatasetError(
            f"dataset at {root} has {datamodule_num_classes} classes but the model is configured for "
            f"{model_num_classes}; set the model's num_classes to {datamodule_num_classes} or point root "
            f"at a dataset with {model_num_classes} classes"
        )
