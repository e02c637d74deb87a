"""Task layer: bundled classification tasks, user datasets, templates and few-shot sampling.

Example:
    >>> from nograd.tasks import get_task
    >>> task = get_task("mr")
    >>> train, dev = task.few_shot(k=16, seed=13)
"""

from nograd.tasks._bundled import TASK_SPECS, get_task, list_tasks
from nograd.tasks._errors import DatasetError, TaskDataError, TaskError, TemplateError, UnknownTaskError
from nograd.tasks._example import Example, examples_hash
from nograd.tasks._split import AUTO_MIN_POOL, AUTO_TEST_FRACTION, AUTO_TEST_MAX, auto_test_fraction
from nograd.tasks._task import Task
from nograd.tasks._template import validate_template
from nograd.tasks._user import load_user_dataset, parse_verbalizer

__all__ = [
    "AUTO_MIN_POOL",
    "AUTO_TEST_FRACTION",
    "AUTO_TEST_MAX",
    "DatasetError",
    "Example",
    "TASK_SPECS",
    "Task",
    "TaskDataError",
    "TaskError",
    "TemplateError",
    "UnknownTaskError",
    "auto_test_fraction",
    "examples_hash",
    "get_task",
    "list_tasks",
    "load_user_dataset",
    "parse_verbalizer",
    "validate_template",
]
