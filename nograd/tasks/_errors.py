"""Exceptions of the task layer; all are ``ValueError`` subclasses."""


class TaskError(ValueError):
    """Base class of every error raised by ``nograd.tasks``; ``field`` names the option or input at fault (for a
    user dataset: ``file``, ``template``, ``verbalizer``, ``metric``, ...), None where none does."""

    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        if field is not None:
            self.field = field


class TemplateError(TaskError):
    """A prompt template is malformed."""

    field = "template"


class DatasetError(TaskError):
    """A user dataset (file, fields, labels or verbalizer) is invalid."""

    field = "file"


class UnknownTaskError(TaskError):
    """No bundled task has the requested name."""


class TaskDataError(TaskError):
    """A bundled data file is missing or does not match MANIFEST.json."""
