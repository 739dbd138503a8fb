"""The tasks of the NTM paper. `TASKS` maps a task name to its class; `make_task(name)` builds one."""
from .associative_recall import AssociativeRecallTask
from .base import Batch, Task
from .copy import CopyTask
from .ngram import NGramTask
from .priority_sort import PrioritySortTask
from .repeat_copy import RepeatCopyTask

TASKS = {task.name: task for task in (CopyTask, RepeatCopyTask, AssociativeRecallTask, NGramTask, PrioritySortTask)}


def make_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = ["Batch", "Task", "TASKS", "make_task", "CopyTask", "RepeatCopyTask", "AssociativeRecallTask",
           "NGramTask", "PrioritySortTask"]
