"""The tasks of the NTM paper. `TASKS` maps a task name to its class; `make_task(name)` builds one."""
from .base import Batch, Task
from .copy import CopyTask

TASKS = {"copy": CopyTask}


def make_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = ["Batch", "Task", "TASKS", "make_task", "CopyTask"]
