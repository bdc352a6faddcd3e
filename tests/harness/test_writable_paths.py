"""A results store or artifact cache a job cannot write is refused before anything runs."""

import os

import pytest

from earlyexit.harness.runner import validate
from tests.harness.test_lineup import config


def test_a_results_store_or_cache_the_job_cannot_write_is_refused_naming_the_path(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: a file in the way still cannot be
            with pytest.raises(ValueError, match=r"cache_dir=.*a-file/cache: .*a-file is a file"):
                validate(config(f"cache_dir={blocker}/cache"))
        else:
            with pytest.raises(ValueError, match=r"results.path=.*locked/r.jsonl cannot be written"):
                validate(config(f"results.path={locked}/r.jsonl"))
        with pytest.raises(
            ValueError, match=r"results.path=.*a-file/r.jsonl: .*a-file is a file, not a folder"
        ):
            validate(config(f"results.path={blocker}/r.jsonl"))
    finally:
        locked.chmod(0o700)
