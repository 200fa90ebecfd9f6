"""``load_dataset``: the data set a config names, from the offline defaults
(``training.data``), the user's CSV and npz files (``training.user_data``) or a folder of
images (``training.images``).

The dispatch lives here, above all three readers, so that none of them imports another's
caller: the readers build on ``training.data``'s types, and ``training.data`` imports none of
them.
"""

from __future__ import annotations

from training.config import DataConfig
from training.data import BUILTIN_SOURCES, Dataset, DataError, builtin_dataset
from training.user_data import load_user_file

USER_SOURCES = ("npz", "csv", "file", "folder")


def load_dataset(config: DataConfig) -> Dataset:
    if config.source in BUILTIN_SOURCES:
        return builtin_dataset(config)
    if config.source == "folder":
        from training.images import load_image_folder  # Pillow loads only for image folders

        return load_image_folder(config)
    if config.source in USER_SOURCES:
        return load_user_file(config)
    raise DataError(f"data.source must be digits, digits32, diabetes, npz, csv or folder, got "
                    f"{config.source!r}")
