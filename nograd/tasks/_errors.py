"""Exceptions of the task layer; all are ``ValueError`` subclasses."""


class TaskError(ValueError):
    """Base class of every error raised by ``nograd.tasks``."""


class TemplateError(TaskError):
    """A prompt template is malformed."""


class DatasetError(TaskError):
    """A user dataset (file, fields, labels or verbalizer) is invalid."""


class UnknownTaskError(TaskError):
    """No bundled task has the requested name."""


class TaskDataError(TaskError):
    """A bundled data file is missing or does not match MANIFEST.json."""
