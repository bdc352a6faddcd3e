"""This project's own lm-eval task YAMLs (registered beside lm-eval's by `local_tasks`), and the
functions they name (``utils``)."""
