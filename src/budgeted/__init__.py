"""budgeted: a joblib parallel backend that never oversubscribes the CPU."""

from .budget import split_budget
from .cpus import usable_cpus
from .threadenv import current_budget

__all__ = ["current_budget", "split_budget", "usable_cpus"]
__version__ = "0.1.0"
