"""The one error type for unusable dataset files."""


class DatasetError(ValueError):
    """A dataset file is missing, truncated, corrupt, foreign or fails its checksum."""
